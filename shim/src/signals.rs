//! SIGTERM and SIGINT: how containerd and the kubelet ask a container to
//! stop. Watched from the container's first instruction, and used by both the
//! HTTP server (to drain) and the command runner (to stop the guest).

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT, watched from the container's start: the process is
/// PID 1 of its PID namespace, so a signal that comes before a handler
/// exists would be dropped (and the kubelet would wait out its grace period).
/// A signal that arrives while nobody waits is kept for the next [`Signals::next`].
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

/// A stop signal that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    Terminate,
    Interrupt,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
        }
    }

    /// 128 + the signal's number (15, 2 on Linux): what a shell and the
    /// kubelet report for a process that this signal ended.
    pub fn exit_code(self) -> i32 {
        match self {
            StopSignal::Terminate => 128 + 15,
            StopSignal::Interrupt => 128 + 2,
        }
    }
}

impl Signals {
    pub fn watch() -> Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("could not watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("could not watch SIGINT")?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT. Dropping this future loses no
    /// signal (it can be raced in `select!`).
    pub async fn next(&mut self) -> StopSignal {
        // `recv` gives `None` only when the runtime is shutting down, that
        // is when the process is ending anyway: taken as a stop too.
        tokio::select! {
            _ = self.terminate.recv() => StopSignal::Terminate,
            _ = self.interrupt.recv() => StopSignal::Interrupt,
        }
    }
}
