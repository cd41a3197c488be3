//! What the container gives its guest, as the host describes it: the process
//! arguments and environment of the OCI spec, and the container's root
//! filesystem as `/`. Built once per container; every store (one per HTTP
//! request, one per command run) gets its WASI context from it.

use std::path::Path;

use anyhow::{Context, Result};
use containerd_shim_wasm::sandbox::context::RuntimeContext;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// The guest's arguments, environment and files, as the container sets them.
#[derive(Clone)]
pub struct GuestSetup {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The container's root folder as the guest's `/`, opened once: every
    /// store shares this one descriptor, so a request costs no `open` and
    /// holds no descriptor of its own for it.
    root: WasiFilesystemCtx,
}

impl GuestSetup {
    pub fn from_context(ctx: &impl RuntimeContext) -> Result<GuestSetup> {
        let env = ctx
            .envs()
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GuestSetup::new(ctx.args().to_vec(), env, Some(Path::new("/")))
    }

    /// Opens `root` (in a container: its root folder) as the guest's `/`;
    /// with none, the guest has no files.
    pub fn new(args: Vec<String>, env: Vec<(String, String)>, root: Option<&Path>) -> Result<GuestSetup> {
        let mut builder = WasiCtx::builder();
        if let Some(root) = root {
            with_root(&mut builder, root)?;
        }
        let root = builder.build().filesystem().clone();
        Ok(GuestSetup { args, env, root })
    }

    /// A WASI context with these arguments, environment and files; `output`
    /// says where the guest's output goes.
    pub fn context(&self, output: impl FnOnce(&mut WasiCtxBuilder)) -> WasiCtx {
        let mut builder = WasiCtx::builder();
        builder.args(&self.args).envs(&self.env);
        output(&mut builder);
        let mut context = builder.build();
        *context.filesystem() = self.root.clone();
        context
    }

    /// A WASIp1 context (core modules), with the container's stdio. It opens
    /// the root folder again: a module runs once per container.
    pub fn p1_context(&self) -> Result<WasiP1Ctx> {
        let mut builder = WasiCtx::builder();
        builder.args(&self.args).envs(&self.env).inherit_stdio();
        with_root(&mut builder, Path::new("/"))?;
        Ok(builder.build_p1())
    }
}

fn with_root(builder: &mut WasiCtxBuilder, root: &Path) -> Result<()> {
    builder
        .preopened_dir(root, "/", FsPerms::ReadWrite)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("could not give the guest {} as its root filesystem", root.display()))?;
    Ok(())
}
