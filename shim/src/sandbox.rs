//! The `Sandbox` that `containerd-shim-wasm` runs inside the container's
//! process: the orchestrator. It watches the stop signals, reads the
//! settings and the container's Wasm, decides what the Wasm is, and hands it
//! to the HTTP server (`serve.rs`) or the command runner (`run.rs`) with
//! what the container gives its guest (`guest_setup.rs`).

use anyhow::{Context, Result};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};

use crate::cache;
use crate::engine::{self, Workload};
use crate::guest_setup::GuestSetup;
use crate::output;
use crate::settings::Settings;
use crate::signals::Signals;
use crate::{run, serve};

/// Exit code of a container whose Wasm could not be started at all (not
/// Wasm, corrupt, no known export, bad setting): the shell's "cannot execute".
pub const EXIT_CANNOT_RUN: i32 = 126;

#[derive(Default, Clone)]
pub struct WasmtimeSandbox;

impl Sandbox for WasmtimeSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> Result<i32> {
        let code = match start(ctx).await {
            Ok(code) => code,
            Err(e) => {
                // stderr is the container's log: what `ctr run` prints and
                // `kubectl logs` shows; the shim log reaches containerd's.
                output::message(
                    log::Level::Error,
                    format!("wasmtime-custom: cannot run this container: {e:#}"),
                );
                EXIT_CANNOT_RUN
            }
        };
        // The process exits when this returns: give the queued output a
        // moment to reach the container's log.
        output::flush();
        Ok(code)
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
    let signals = Signals::watch()?;
    let settings = Settings::from_env(ctx.envs())?;
    let entrypoint = ctx.entrypoint();
    let origin = match &entrypoint.source {
        Source::File(path) if path.as_os_str().is_empty() => "the entrypoint (none is set)".to_string(),
        Source::File(path) => path.display().to_string(),
        Source::Oci(_) => "the image's wasm layer".to_string(),
    };
    let engine = engine::new(settings.max_memory_bytes)?;
    let setup = GuestSetup::from_context(ctx)?;
    let workload = {
        // Taken whatever the image: dropping it closes the descriptor of
        // the node's cache folder, so no guest code runs while the
        // container holds it (a wasm-layer image does not use it).
        let cache = cache::inherited();
        let bytes = entrypoint.source.as_bytes().with_context(|| format!("could not read {origin}"))?;
        match entrypoint.source {
            // A wasm layer: containerd's content store keeps it compiled.
            Source::Oci(_) => engine::load(&engine, &bytes, entrypoint.source.is_precompiled()?, &origin)?,
            Source::File(_) => cache::load_with_cache(cache, &engine, &bytes, &origin)?,
        }
        // The Wasm's bytes are not needed once compiled: a container of a
        // large component would otherwise hold them for its whole life.
    };
    engine::release_compile_memory();
    // Every workload yields at each tick: HTTP requests to keep their
    // timeout, commands and modules to stay stoppable by a signal.
    engine::start_epoch_ticker(&engine);
    match workload {
        Workload::Http(component) => serve::serve(&engine, &component, &setup, &settings, signals).await,
        Workload::Command(component) => {
            run::command(&engine, &component, &setup, &origin, &settings, signals).await
        }
        Workload::Module(module) => {
            run::module(&engine, &module, &setup, &origin, &entrypoint.func, &settings, signals).await
        }
    }
}
