//! The `Sandbox` that `containerd-shim-wasm` runs inside the container's
//! process: reads the container's Wasm, decides what it is, and hands it to
//! the HTTP server or the command runner. This is also the one place where a
//! guest's world (arguments, environment, files, limits) is built.

use anyhow::{Context, Result};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::outgoing::OutgoingHttp;

use crate::engine::{self, Workload};
use crate::settings::Settings;
use crate::{run, serve};

/// Exit code of a container whose Wasm could not be started at all (not
/// Wasm, corrupt, no known export, bad setting): the shell's "cannot execute".
pub const EXIT_CANNOT_RUN: i32 = 126;

#[derive(Default, Clone)]
pub struct WasmtimeSandbox;

impl Sandbox for WasmtimeSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> Result<i32> {
        match start(ctx).await {
            Ok(code) => Ok(code),
            Err(e) => {
                // stderr is the container's log: what `ctr run` prints and
                // `kubectl logs` shows; the shim log reaches containerd's.
                eprintln!("wasmtime-custom: cannot run this container: {e:#}");
                log::error!("cannot run this container: {e:#}");
                Ok(EXIT_CANNOT_RUN)
            }
        }
    }

    /// Accepts every non-Linux workload here; `run_wasi` checks it fully.
    /// A refusal at this point would reach the user only as a generic
    /// "executor can't handle spec", so the real reason is reported from the
    /// container instead, where `ctr run` and `kubectl logs` show it.
    async fn can_handle(&self, _ctx: &impl RuntimeContext) -> Result<()> {
        Ok(())
    }
}

async fn start(ctx: &impl RuntimeContext) -> Result<i32> {
    // First of all: a SIGTERM during compilation must not be lost.
    let signals = serve::Signals::watch()?;
    let settings = Settings::from_env(ctx.envs())?;
    let entrypoint = ctx.entrypoint();
    let origin = match &entrypoint.source {
        Source::File(path) if path.as_os_str().is_empty() => "the entrypoint (none is set)".to_string(),
        Source::File(path) => path.display().to_string(),
        Source::Oci(_) => "the image's wasm layer".to_string(),
    };
    let bytes = entrypoint.source.as_bytes().with_context(|| format!("could not read {origin}"))?;
    let precompiled = entrypoint.source.is_precompiled()?;
    let engine = engine::new(settings.max_memory_bytes)?;
    let guest = Guest::from_context(ctx);
    match engine::load(&engine, &bytes, precompiled, &origin)? {
        Workload::Http(component) => serve::serve(&engine, &component, &guest, &settings, signals).await,
        Workload::Command(component) => run::command(&engine, &component, &guest, &origin, &settings).await,
        Workload::Module(module) => {
            run::module(&engine, &module, &guest, &origin, &entrypoint.func, &settings).await
        }
    }
}

/// What the container gives its guest: the process arguments and environment
/// of the OCI spec, and the container's root filesystem as `/`.
#[derive(Clone)]
pub struct Guest {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Guest {
    fn from_context(ctx: &impl RuntimeContext) -> Guest {
        let env = ctx
            .envs()
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Guest { args: ctx.args().to_vec(), env }
    }

    /// A WASI context builder with this guest's arguments, environment and
    /// files; the caller decides where its output goes.
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

/// The state of one store: one HTTP request's instance, or one command run.
pub struct Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    /// Outgoing HTTP, over the container's connection pool.
    pub outgoing: OutgoingHttp,
    pub table: ResourceTable,
    pub limits: StoreLimits,
}

impl Host {
    pub fn new(wasi: WasiCtx, outgoing: OutgoingHttp, max_memory_bytes: usize) -> Host {
        Host {
            wasi,
            http: WasiHttpCtx::new(),
            outgoing,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(max_memory_bytes).build(),
        }
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outgoing }
    }
}
