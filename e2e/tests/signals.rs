//! Commands stop on SIGTERM and SIGINT as a native process without a handler
//! does: at once, with exit code 128 + the signal, whether the guest waits
//! in the host or computes without ever calling it. Under a private
//! containerd 1.6, signalled with `ctr tasks kill` (which has no grace
//! period: a guest that ignored the signal would run on and fail the test).
//! Needs the release shim and `cargo xtask images`.
//!
//! Core modules take the same path in the shim (`run.rs`); its unit tests
//! stop a computing and a waiting module with real signals. There is no
//! waiting core module image to run here.

use std::time::{Duration, Instant};

use anyhow::Result;
use testbed::{Containerd, Run, Version};

const COMMAND: &str = "localhost/wasmtime-custom/test-command:latest";

/// Far below Kubernetes' default grace period (30 s) and the shim's (25 s):
/// a stop that took this long was not acted on.
const PROMPTLY: Duration = Duration::from_secs(5);

struct Stopped {
    code: i32,
    took: Duration,
    output: String,
}

/// Runs the test command with `args` on containerd 1.6, waits for it to
/// print `first_line`, sends `signal` with `ctr tasks kill` and waits for
/// the end.
fn stop_command(id: &str, args: &[&str], first_line: &str, signal: &str) -> Result<Stopped> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-command.tar", &[])?;
    let mut run = containerd.run(Run::new(COMMAND, id).arg("/app.wasm").args(args))?;
    run.wait_for_line(first_line, Duration::from_secs(30))?;
    let sent = Instant::now();
    run.signal(signal)?;
    let code = run.wait(Duration::from_secs(60))?;
    Ok(Stopped { code, took: sent.elapsed(), output: run.output() })
}

#[test]
fn a_sleeping_command_stops_on_sigterm_with_143() -> Result<()> {
    let stopped = stop_command("sleeper", &["sleep", "600000"], "sleeping 600000 ms", "SIGTERM")?;
    let output = &stopped.output;
    assert_eq!(stopped.code, 143, "{output}");
    assert!(stopped.took < PROMPTLY, "stopped after {:?}: {output}", stopped.took);
    assert!(output.contains("wasmtime-custom: SIGTERM stopped the guest (exit code 143)"), "{output}");
    assert!(!output.contains("slept"), "{output}");
    Ok(())
}

#[test]
fn a_command_computing_without_calling_the_host_stops_on_sigterm_with_143() -> Result<()> {
    let stopped = stop_command("spinner", &["spin"], "spinning", "SIGTERM")?;
    let output = &stopped.output;
    assert_eq!(stopped.code, 143, "{output}");
    assert!(stopped.took < PROMPTLY, "stopped after {:?}: {output}", stopped.took);
    assert!(output.contains("wasmtime-custom: SIGTERM stopped the guest (exit code 143)"), "{output}");
    Ok(())
}

#[test]
fn sigint_stops_a_command_with_130() -> Result<()> {
    let stopped = stop_command("interrupted", &["sleep", "600000"], "sleeping 600000 ms", "SIGINT")?;
    let output = &stopped.output;
    assert_eq!(stopped.code, 130, "{output}");
    assert!(stopped.took < PROMPTLY, "stopped after {:?}: {output}", stopped.took);
    assert!(output.contains("wasmtime-custom: SIGINT stopped the guest (exit code 130)"), "{output}");
    Ok(())
}

#[test]
fn a_command_that_is_not_signalled_ends_with_its_own_code_and_last_line() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-command.tar", &[])?;
    let mut run =
        containerd.run(Run::new(COMMAND, "short-sleep").arg("/app.wasm").args(&["sleep", "300"]))?;
    assert_eq!(run.wait(Duration::from_secs(30))?, 0, "{}", run.output());
    let output = run.output();
    assert!(output.contains("sleeping 300 ms") && output.contains("slept 300 ms"), "{output}");
    assert!(!output.contains("stopped the guest"), "{output}");
    Ok(())
}
