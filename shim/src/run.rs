//! Runs a WASI command component (`wasi:cli/run`) or a core WASI module once,
//! with the container's stdio, and turns its end into the container's exit
//! code: the guest's own code, 134 for a trap, or 128 + the signal when
//! SIGTERM or SIGINT stops it first.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Module, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::bindings::Command;

use crate::guest_calls::GuestCalls;
use crate::guest_setup::GuestSetup;
use crate::outgoing::OutgoingHttp;
use crate::settings::Settings;
use crate::signals::Signals;
use crate::store_state::StoreState;

/// Exit code of a guest that trapped (or panicked): 128 + SIGABRT, as a
/// native process that aborted would give.
pub const EXIT_TRAP: i32 = 134;

pub async fn command(
    engine: &Engine,
    component: &Component,
    setup: &GuestSetup,
    origin: &str,
    settings: &Settings,
    signals: Signals,
) -> Result<i32> {
    let run = async {
        let mut linker = Linker::<StoreState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        let wasi = setup.context(|output| {
            output.inherit_stdio();
        });
        // A command's outgoing requests keep the allow-list; they are not on
        // behalf of an incoming request, so they carry no trace context.
        let calls = GuestCalls::new(OutgoingHttp::new(), Arc::new(settings.outbound.clone()), None, None);
        let state = StoreState::new(wasi, calls, settings.max_memory_bytes);
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        yield_at_every_tick(&mut store);
        let command = Command::instantiate_async(&mut store, component, &linker)
            .await
            .map_err(anyhow::Error::from)
            .with_context(|| format!("could not instantiate {origin}"))?;
        Ok(match command.wasi_cli_run().call_run(&mut store).await {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(e) => exit_code(e),
        })
    };
    until_stopped(run, signals).await
}

/// A core module's store state: WASIp1 and the memory limit.
struct ModuleStoreState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

pub async fn module(
    engine: &Engine,
    module: &Module,
    setup: &GuestSetup,
    origin: &str,
    func: &str,
    settings: &Settings,
    signals: Signals,
) -> Result<i32> {
    let run = async {
        let mut linker = wasmtime::Linker::<ModuleStoreState>::new(engine);
        p1::add_to_linker_async(&mut linker, |state| &mut state.wasi).map_err(anyhow::Error::from)?;
        let wasi = setup.p1_context()?;
        let limits = StoreLimitsBuilder::new().memory_size(settings.max_memory_bytes).build();
        let mut store = Store::new(engine, ModuleStoreState { wasi, limits });
        store.limiter(|state| &mut state.limits);
        yield_at_every_tick(&mut store);
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
    };
    until_stopped(run, signals).await
}

/// At every epoch tick the guest yields its thread and goes on: a command
/// or module may compute as long as it needs (a batch job; Kubernetes'
/// `activeDeadlineSeconds` is the tool to bound it), so time never traps
/// it, but a guest that never calls the host still gives [`until_stopped`]
/// a chance to see a signal.
fn yield_at_every_tick<T: 'static>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
}

/// Runs `guest` (its instantiation and its call) to its end, unless SIGTERM
/// or SIGINT comes first: then the guest's future, with its store and
/// instance, is dropped and the exit code is 128 + the signal, as for a
/// native process without a handler.
async fn until_stopped(guest: impl Future<Output = Result<i32>>, mut signals: Signals) -> Result<i32> {
    let ended = tokio::select! {
        // A signal that is already there wins over a guest that could go on.
        biased;
        signal = signals.next() => Err(signal),
        code = guest => Ok(code),
    };
    // The guest's stdout goes through this process's buffered stdout: write
    // out what is left (a last line without a newline) before the process
    // exits, and before the line below.
    if let Err(e) = std::io::stdout().flush() {
        log::warn!("could not write the guest's last output: {e}");
    }
    match ended {
        Ok(code) => code,
        Err(signal) => {
            let code = signal.exit_code();
            eprintln!("wasmtime-custom: {} stopped the guest (exit code {code})", signal.name());
            log::info!("{} stopped the guest (exit code {code})", signal.name());
            Ok(code)
        }
    }
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine;

    /// A core module that creates the file `ready` (so the test knows it
    /// runs), then does `then`.
    fn module_wat(ready: &Path, then: &str) -> String {
        // The guest sees the host's `/` (the container's root) as fd 3.
        let path = ready.to_str().expect("temp paths are UTF-8").trim_start_matches('/');
        format!(
            r#"(module
                 (import "wasi_snapshot_preview1" "path_open"
                   (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
                 (import "wasi_snapshot_preview1" "poll_oneoff"
                   (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 1024) "{path}")
                 (func (export "_start")
                   ;; path_open(fd 3, "{path}", O_CREAT, rights fd_write)
                   (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const {len})
                         (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 0))
                     (then unreachable))
                   {then}))"#,
            len = path.len(),
        )
    }

    /// Computes forever, never calling the host.
    const SPIN: &str = "(loop $forever (br $forever))";

    /// Waits 10 minutes on the monotonic clock (one `poll_oneoff`
    /// subscription at address 0: tag 0 = clock, clock id 1 at 16, timeout
    /// in ns at 24), then returns.
    const SLEEP: &str = "(i32.store (i32.const 16) (i32.const 1))
                   (i64.store (i32.const 24) (i64.const 600000000000))
                   (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))";

    struct Ready(PathBuf);

    impl Drop for Ready {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Runs `wat` until it marked itself running and kept running over
    /// several epoch ticks, sends this process `signal` (as `kill -s` names
    /// it), and returns the module's exit code and how long it took to stop.
    async fn stop_module(engine: &Engine, name: &str, then: &str, signal: &str) -> (i32, Duration) {
        let ready = Ready(std::env::temp_dir().join(format!("wtc-run-{}-{name}", std::process::id())));
        let wasm = Module::new(engine, wat::parse_str(module_wat(&ready.0, then)).unwrap()).unwrap();
        let setup = GuestSetup::new(vec![name.into()], Vec::new(), None).unwrap();
        let signals = Signals::watch().unwrap();
        let settings = Settings::default();
        let run = module(engine, &wasm, &setup, "the test module", "_start", &settings, signals);
        tokio::pin!(run);
        let running = async {
            let started = format!("{name} to start");
            testbed::poll::until_async(&started, Duration::from_secs(10), async || {
                Ok(ready.0.exists().then_some(()))
            })
            .await
            .unwrap();
            // Five ticks and more: a deadline that trapped would have by now.
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        tokio::select! {
            code = &mut run => panic!("{name}: the module ended by itself: {code:?}"),
            () = running => {}
        }
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal}");
        let sent = Instant::now();
        let code = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("{name}: still running 10 s after SIG{signal}"))
            .unwrap();
        (code, sent.elapsed())
    }

    // Multi-threaded as in the container process, where the guest runs in
    // `block_on` and the runtime's workers watch the signals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_module_that_computes_or_waits_is_stopped_by_sigterm_or_sigint_with_128_plus_the_signal() {
        let engine = engine::new(16 << 20).unwrap();
        engine::start_epoch_ticker(&engine);
        // One test sends both signals: every `Signals` of this process sees them.
        let (code, took) = stop_module(&engine, "spin", SPIN, "TERM").await;
        assert_eq!(code, 143, "spinning module, SIGTERM");
        assert!(took < Duration::from_secs(2), "spinning module stopped after {took:?}");
        let (code, took) = stop_module(&engine, "sleep", SLEEP, "INT").await;
        assert_eq!(code, 130, "sleeping module, SIGINT");
        assert!(took < Duration::from_secs(2), "sleeping module stopped after {took:?}");
    }
}
