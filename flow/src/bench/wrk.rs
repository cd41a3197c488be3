//! Running `wrk` and reading its report. A run with socket errors or
//! non-2xx answers is refused: wrk leaves failed and timed-out requests out
//! of its figures, so a failing or stalling app would look fast.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// How hard and how long wrk loads a URL.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: u32,
    pub seconds: u64,
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `wrk -t2 -c<connections> -d<seconds>s --latency [-s script] url`.
pub fn measure(load: Load, url: &str, script: Option<&Path>) -> Result<Measurement> {
    let mut command = Command::new("wrk");
    command.args(["-t2", &format!("-c{}", load.connections), &format!("-d{}s", load.seconds), "--latency"]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output =
        command.arg(url).output().context("run wrk (scripts/install-prerequisites.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("wrk failed on {url}: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse(&text).with_context(|| format!("unexpected wrk output for {url}:\n{text}"))
}

/// wrk's report, `None` if it shows errors or lacks a figure.
fn parse(text: &str) -> Option<Measurement> {
    // Timed-out requests are left out of wrk's latencies: a run with socket
    // errors would make a stalling app look fast.
    if text.lines().any(|line| line.trim_start().starts_with("Socket errors:")) {
        return None;
    }
    if let Some(line) = text.lines().find(|line| line.contains("Non-2xx or 3xx responses")) {
        // Errors are not throughput: a failing app must not look fast.
        let count: u64 = line.split(':').nth(1)?.trim().parse().ok()?;
        if count > 0 {
            return None;
        }
    }
    let requests_per_second =
        text.lines().find_map(|line| line.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let percentile = |label: &str| {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(label)).then(|| words.next().and_then(duration_ms)).flatten()
        })
    };
    Some(Measurement { requests_per_second, p50_ms: percentile("50%")?, p99_ms: percentile("99%")? })
}

/// wrk's durations: `412.00us`, `1.23ms`, `2.01s`.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:1/healthz
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.42ms    1.10ms  20.00ms   80.00%
  Latency Distribution
     50%    3.10ms
     75%    3.90ms
     90%    4.80ms
     99%  812.00us
  47190 requests in 5.00s, 4.00MB read
Requests/sec:   9438.00
Transfer/sec:    819.00KB
";

    #[test]
    fn wrk_output_is_parsed() {
        let w = parse(WRK).unwrap();
        assert_eq!(w.requests_per_second, 9438.0);
        assert_eq!(w.p50_ms, 3.1);
        assert!((w.p99_ms - 0.812).abs() < 1e-9);
    }

    #[test]
    fn wrk_runs_with_errors_are_refused() {
        let failing = WRK.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse(&failing).is_none());
    }

    #[test]
    fn wrk_runs_with_socket_errors_are_refused() {
        let failing = WRK
            .replace("Requests/sec", "  Socket errors: connect 0, read 0, write 0, timeout 3\nRequests/sec");
        assert!(parse(&failing).is_none());
    }

    #[test]
    fn wrk_durations_in_seconds_and_unknown_units() {
        assert_eq!(duration_ms("2s"), Some(2000.0));
        assert_eq!(duration_ms("5m"), None);
    }
}
