//! What the container gives its guest, as the host describes it: the process
//! arguments and environment of the OCI spec, and the container's root
//! filesystem as `/`. Built once per container; every store (one per HTTP
//! request, one per command run) gets its WASI context from it.

use anyhow::{Context, Result};
use containerd_shim_wasm::sandbox::context::RuntimeContext;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// The guest's arguments, environment and files, as the container sets them.
#[derive(Clone)]
pub struct GuestSetup {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl GuestSetup {
    pub fn from_context(ctx: &impl RuntimeContext) -> GuestSetup {
        let env = ctx
            .envs()
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GuestSetup { args: ctx.args().to_vec(), env }
    }

    /// A WASI context builder with these arguments, environment and files;
    /// the caller decides where the guest's output goes.
    pub fn wasi(&self) -> Result<WasiCtxBuilder> {
        let mut builder = WasiCtx::builder();
        builder.args(&self.args).envs(&self.env);
        builder
            .preopened_dir("/", "/", FsPerms::ReadWrite)
            .map_err(anyhow::Error::from)
            .context("could not give the guest the container's root filesystem")?;
        Ok(builder)
    }
}
