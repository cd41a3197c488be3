//! Test harness for the end-to-end tests: a private containerd started with
//! `scripts/containerd.sh`, containers run with its `ctr` as a user would,
//! a small HTTP client, and a stand-in for Dapr's HTTP API.
//!
//! Nothing here skips: if containerd, the shim or the images are missing,
//! the test fails and says what to run.

pub mod containerd;
pub mod http;
pub mod manifests;
pub mod node;
pub mod standin;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    // Binding port 0 asks the kernel for a free one; it stays free after the
    // listener is dropped unless another process races for it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address of a bound listener").port()
}
