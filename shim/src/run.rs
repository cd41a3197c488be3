//! Runs a WASI command component (`wasi:cli/run`) or a core WASI module once,
//! with the container's stdio, and turns its end into the container's exit
//! code.

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Module, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::bindings::Command;

use crate::outgoing::OutgoingHttp;
use crate::sandbox::{Guest, Host};
use crate::settings::Settings;

/// Exit code of a guest that trapped (or panicked): 128 + SIGABRT, as a
/// native process that aborted would give.
pub const EXIT_TRAP: i32 = 134;

/// Commands get no epoch ticker, so a deadline of one tick is never reached:
/// a batch job may run as long as it needs (Kubernetes' `activeDeadlineSeconds`
/// is the tool to bound it).
const NO_DEADLINE: u64 = 1;

pub async fn command(
    engine: &Engine,
    component: &Component,
    guest: &Guest,
    origin: &str,
    settings: &Settings,
) -> Result<i32> {
    let mut linker = Linker::<Host>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    let wasi = guest.wasi()?.inherit_stdio().build();
    let mut store = Store::new(engine, Host::new(wasi, OutgoingHttp::new(), settings.max_memory_bytes));
    store.limiter(|host| &mut host.limits);
    store.set_epoch_deadline(NO_DEADLINE);
    let command = Command::instantiate_async(&mut store, component, &linker)
        .await
        .map_err(anyhow::Error::from)
        .with_context(|| format!("could not instantiate {origin}"))?;
    Ok(match command.wasi_cli_run().call_run(&mut store).await {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 1,
        Err(e) => exit_code(e),
    })
}

/// A core module's store state: WASIp1 and the memory limit.
struct ModuleHost {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

pub async fn module(
    engine: &Engine,
    module: &Module,
    guest: &Guest,
    origin: &str,
    func: &str,
    settings: &Settings,
) -> Result<i32> {
    let mut linker = wasmtime::Linker::<ModuleHost>::new(engine);
    p1::add_to_linker_async(&mut linker, |host| &mut host.wasi).map_err(anyhow::Error::from)?;
    let wasi = guest.wasi()?.inherit_stdio().build_p1();
    let limits = StoreLimitsBuilder::new().memory_size(settings.max_memory_bytes).build();
    let mut store = Store::new(engine, ModuleHost { wasi, limits });
    store.limiter(|host| &mut host.limits);
    store.set_epoch_deadline(NO_DEADLINE);
    let instance = linker
        .instantiate_async(&mut store, module)
        .await
        .map_err(anyhow::Error::from)
        .with_context(|| format!("could not instantiate {origin}"))?;
    let entry = instance
        .get_typed_func::<(), ()>(&mut store, func)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!("{origin} exports no function {func}() to start (name another one with the entrypoint `path#function`)")
        })?;
    Ok(match entry.call_async(&mut store, ()).await {
        Ok(()) => 0,
        Err(e) => exit_code(e),
    })
}

/// `proc_exit`/`exit` arrive as an `I32Exit` error; anything else is a trap.
fn exit_code(error: wasmtime::Error) -> i32 {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return exit.0;
    }
    eprintln!("wasmtime-custom: the guest trapped: {error:?}");
    log::error!("the guest trapped: {error:#}");
    EXIT_TRAP
}
