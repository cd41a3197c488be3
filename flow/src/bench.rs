//! The benchmark: the Wasm app on the wasmtime-custom shim against the same
//! order logic as a native server under runc, every row measured side by
//! side in one run on this machine. It prints figures and asserts nothing.
//!
//! Rows: HTTP throughput and latency with `wrk`, cold starts (`ctr run -d`
//! to the first 200), density (PSS of N running instances), sizes, and the
//! full order flow. Medians over repeats; ratios are Wasm / native.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::containerd::{Containerd, images_dir, workspace_root};
use e2e::{free_port, http};
use serde::Serialize;

use crate::job::{self, Flavor, Node, Options};
use crate::standin::{self, StandIn};

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Cold starts per row.
    #[arg(long, default_value_t = 10)]
    pub starts: usize,
    /// Runs of each wrk measurement and of the full flow; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 5)]
    pub wrk_seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Running instances of each kind for the density row.
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// Where `bench.txt` and `bench.json` are written.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub wasm: f64,
    pub native: f64,
    /// Wasm / native.
    pub ratio: f64,
    /// Every sample behind the medians.
    pub wasm_samples: Vec<f64>,
    pub native_samples: Vec<f64>,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str, wasm: Vec<f64>, native: Vec<f64>) -> Row {
        let (w, n) = (median(&wasm), median(&native));
        Row {
            name: name.into(),
            unit,
            wasm: w,
            native: n,
            ratio: if n != 0.0 { w / n } else { f64::NAN },
            wasm_samples: wasm,
            native_samples: native,
        }
    }
}

#[derive(Debug, Serialize)]
struct Results {
    command: String,
    machine: String,
    rows: Vec<Row>,
    notes: Vec<String>,
}

pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

const FLAVORS: [Flavor; 2] = [Flavor::Wasm, Flavor::Native];

/// Both flavors, the first one changing with each repeat, so that neither
/// always runs on a machine the other just warmed (or heated).
fn in_turn(repeat: usize) -> [Flavor; 2] {
    if repeat.is_multiple_of(2) { FLAVORS } else { [Flavor::Native, Flavor::Wasm] }
}

pub fn run(settings: &Settings, flow: Options) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let containerd = Containerd::start("1.7")?;
    containerd.import("app-wasm.tar", &["--all-platforms"])?;
    containerd.import("app-native.tar", &[])?;

    eprintln!("bench: HTTP with wrk");
    rows.extend(http_rows(&containerd, settings)?);
    eprintln!("bench: cold starts");
    rows.extend(cold_start_rows(&containerd, settings)?);
    eprintln!("bench: density");
    rows.extend(density_rows(&containerd, settings)?);
    drop(containerd);
    rows.extend(size_rows()?);

    eprintln!("bench: the full flow, {} orders, {} runs each", flow.orders, settings.repeats);
    let node = Node::start()?;
    let mut samples: HashMap<Flavor, Vec<f64>> = HashMap::new();
    for repeat in 0..settings.repeats {
        for flavor in in_turn(repeat) {
            let report = job::run_on(&node, flavor, Options { progress: false, ..flow.clone() })?;
            if !report.ok() {
                bail!(
                    "the {} flow run failed, so its figure means nothing:\n{}",
                    flavor.slug(),
                    report.render()
                );
            }
            eprintln!("  {}: {:.0} orders/s", flavor.slug(), report.orders_per_second);
            samples.entry(flavor).or_default().push(report.orders_per_second);
        }
    }
    rows.push(Row::new(
        format!("full flow, {} orders", flow.orders),
        "orders/s",
        samples.remove(&Flavor::Wasm).unwrap_or_default(),
        samples.remove(&Flavor::Native).unwrap_or_default(),
    ));
    notes.push(format!(
        "HTTP: wrk -t2 -c{} -d{}s --latency on one app of each kind, {} runs, medians; the POST body is one \
         generated order, and the Dapr stand-in (in this process) acknowledges the distributor's output and keeps \
         nothing",
        settings.connections, settings.wrk_seconds, settings.repeats
    ));
    notes.push(format!(
        "cold start: ctr run -d to the first 200 on /healthz, {} starts each, medians; first: a fresh \
         containerd each time (the Wasm compiles; both images just imported); again: the same containerd \
         after a first start",
        settings.starts
    ));
    notes.push(format!(
        "density: total PSS (/proc/<pid>/smaps_rollup) of every process of {0} running instances (shim \
         processes and the container's), divided by {0}; idle after one request, then after a 1 s wrk burst \
         (-c{1}) on each",
        settings.instances, settings.connections
    ));
    notes.push(
        "size: app-wasm.tar vs app-native.tar; containerd-shim-wasmtime-custom-v1 vs containerd-shim-runc-v2 \
         plus runc"
            .to_string(),
    );
    notes.push(format!(
        "full flow: stand-in concurrency {} per queue, the same orders (same seed) for both; both keep \
         their connections to the stand-in open (the shim's outgoing pool, the native server's client)",
        flow.standin.concurrency
    ));

    let results = Results { command, machine: machine(), rows, notes };
    let table = render(&results);
    print!("{table}");
    std::fs::create_dir_all(&settings.out).with_context(|| format!("create {}", settings.out.display()))?;
    let (text, json) = (settings.out.join("bench.txt"), settings.out.join("bench.json"));
    std::fs::write(&text, &table).with_context(|| format!("write {}", text.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("write {}", json.display()))?;
    println!("written to {}/bench.txt and bench.json", settings.out.display());
    Ok(())
}

fn render(results: &Results) -> String {
    let mut out = format!("machine: {}\ncommand: {}\n\n", results.machine, results.command);
    out.push_str(&format!("{:<50} {:>12} {:>12} {:>12}  unit\n", "row", "wasm", "native", "wasm/native"));
    for row in &results.rows {
        out.push_str(&format!(
            "{:<50} {:>12} {:>12} {:>12.2}  {}\n",
            row.name,
            figure(row.wasm),
            figure(row.native),
            row.ratio,
            row.unit
        ));
    }
    for note in &results.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

fn figure(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// Starts one app of `flavor` detached, answering on `port`.
fn start(containerd: &Containerd, flavor: Flavor, id: &str, port: u16, dapr: &str) -> Result<()> {
    containerd.run_detached(flavor.run(id, port, dapr))
}

fn http_rows(containerd: &Containerd, settings: &Settings) -> Result<Vec<Row>> {
    // The stand-in answers the distributor's output binding (its queues are
    // not delivered: only the ingress route is measured).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let outbox = tempfile::tempdir()?;
    // A sink: it acknowledges the distributor's output and keeps nothing.
    let sink = standin::Settings { sink: true, ..standin::Settings::default() };
    let standin = runtime.block_on(StandIn::start(sink, "127.0.0.1", outbox.path()))?;
    let lua = outbox.path().join("post.lua");
    let order = serde_json::to_string(&crate::orders::generate(1, 1)[0])?;
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{order}]]\n"
        ),
    )?;
    let mut ports = HashMap::new();
    for flavor in FLAVORS {
        let port = free_port();
        let id = format!("bench-{}-http-{}", std::process::id(), flavor.slug());
        start(containerd, flavor, &id, port, &standin.url())?;
        wait_for_first_200(port)?;
        ports.insert(flavor, (id, port));
    }
    let mut samples: HashMap<(Flavor, &str), Vec<Wrk>> = HashMap::new();
    for repeat in 0..settings.repeats {
        for flavor in in_turn(repeat) {
            let port = ports[&flavor].1;
            let get = wrk(settings, &format!("http://127.0.0.1:{port}/healthz"), None)?;
            samples.entry((flavor, "get")).or_default().push(get);
            let post = wrk(settings, &format!("http://127.0.0.1:{port}/q-order-ingress"), Some(&lua))?;
            samples.entry((flavor, "post")).or_default().push(post);
        }
    }
    for (id, _) in ports.values() {
        containerd.remove(id)?;
    }
    let mut rows = Vec::new();
    for (key, label) in [("get", "GET /healthz"), ("post", "POST /q-order-ingress")] {
        let pick = |flavor: Flavor, f: fn(&Wrk) -> f64| -> Vec<f64> {
            samples.get(&(flavor, key)).map(|runs| runs.iter().map(f).collect()).unwrap_or_default()
        };
        rows.push(Row::new(
            format!("{label}, requests/s"),
            "req/s",
            pick(Flavor::Wasm, |w| w.requests_per_second),
            pick(Flavor::Native, |w| w.requests_per_second),
        ));
        rows.push(Row::new(
            format!("{label}, latency p50"),
            "ms",
            pick(Flavor::Wasm, |w| w.p50_ms),
            pick(Flavor::Native, |w| w.p50_ms),
        ));
        rows.push(Row::new(
            format!("{label}, latency p99"),
            "ms",
            pick(Flavor::Wasm, |w| w.p99_ms),
            pick(Flavor::Native, |w| w.p99_ms),
        ));
    }
    Ok(rows)
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(settings: &Settings, url: &str, script: Option<&Path>) -> Result<Wrk> {
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        &format!("-c{}", settings.connections),
        &format!("-d{}s", settings.wrk_seconds),
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output =
        command.arg(url).output().context("run wrk (scripts/install-prerequisites.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("wrk failed on {url}: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output for {url}:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Wrk> {
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
    Some(Wrk { requests_per_second, p50_ms: percentile("50%")?, p99_ms: percentile("99%")? })
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

/// `ctr run -d` to the first 200 on /healthz, in milliseconds.
fn cold_start(containerd: &Containerd, flavor: Flavor, id: &str) -> Result<f64> {
    let port = free_port();
    let started = Instant::now();
    start(containerd, flavor, id, port, "http://127.0.0.1:1")?;
    wait_for_first_200(port)?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    containerd.remove(id)?;
    Ok(elapsed)
}

/// Polls `GET /healthz` every 2 ms (fine enough to time a cold start) until
/// it answers 200, for at most 30 s.
fn wait_for_first_200(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http::get(port, "/healthz").is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("no 200 on port {port} within 30 s")
}

fn cold_start_rows(containerd: &Containerd, settings: &Settings) -> Result<Vec<Row>> {
    let run = std::process::id();
    let mut native = Vec::new();
    let mut cached = Vec::new();
    // One start compiles and caches the component; the rest reuse it.
    cold_start(containerd, Flavor::Wasm, &format!("bench-{run}-warm"))?;
    for i in 0..settings.starts {
        native.push(cold_start(containerd, Flavor::Native, &format!("bench-{run}-native-{i}"))?);
        cached.push(cold_start(containerd, Flavor::Wasm, &format!("bench-{run}-cached-{i}"))?);
    }
    let (mut first, mut native_first) = (Vec::new(), Vec::new());
    for i in 0..settings.starts {
        // A containerd of its own: no precompiled artifact exists yet, and
        // nothing of either image has run on it.
        let fresh = Containerd::start("1.7")?;
        fresh.import("app-wasm.tar", &["--all-platforms"])?;
        fresh.import("app-native.tar", &[])?;
        first.push(cold_start(&fresh, Flavor::Wasm, &format!("bench-{run}-first-{i}"))?);
        native_first.push(cold_start(&fresh, Flavor::Native, &format!("bench-{run}-native-first-{i}"))?);
    }
    Ok(vec![
        Row::new("cold start, first on a fresh containerd", "ms", first, native_first),
        Row::new("cold start, again (Wasm: cached artifact)", "ms", cached, native),
    ])
}

fn density_rows(containerd: &Containerd, settings: &Settings) -> Result<Vec<Row>> {
    let (mut idle, mut loaded) = (HashMap::new(), HashMap::new());
    for flavor in FLAVORS {
        let mut instances = Vec::new();
        for i in 0..settings.instances {
            let (id, port) =
                (format!("bench-{}-dense-{}-{i}", std::process::id(), flavor.slug()), free_port());
            start(containerd, flavor, &id, port, "http://127.0.0.1:1")?;
            wait_for_first_200(port)?;
            instances.push((id, port));
        }
        let pss = |label: &str| -> Result<f64> {
            let mut pids = BTreeSet::new();
            for (id, _) in &instances {
                pids.extend(processes_of(containerd, id)?);
            }
            let total_mib = pids.iter().filter_map(|pid| pss_kib(*pid)).sum::<u64>() as f64 / 1024.0;
            eprintln!(
                "  {} {label}: {} processes for {} instances, total PSS {total_mib:.1} MiB",
                flavor.slug(),
                pids.len(),
                settings.instances
            );
            Ok(total_mib / settings.instances as f64)
        };
        idle.insert(flavor, pss("idle")?);
        // A burst of concurrent requests on every instance: memory a runtime
        // keeps after load (warm instance slots, buffers) shows up here.
        for (_, port) in &instances {
            let burst = Settings { wrk_seconds: 1, ..settings.clone() };
            wrk(&burst, &format!("http://127.0.0.1:{port}/healthz"), None)?;
        }
        loaded.insert(flavor, pss("after a burst")?);
        for (id, _) in &instances {
            containerd.remove(id)?;
        }
    }
    let row = |label: &str, figures: &HashMap<Flavor, f64>| {
        Row::new(
            format!("density, PSS per instance, {} {label}", settings.instances),
            "MiB",
            vec![figures[&Flavor::Wasm]],
            vec![figures[&Flavor::Native]],
        )
    };
    Ok(vec![row("idle", &idle), row("after a wrk burst", &loaded)])
}

/// The shim's processes for container `id` (a shim is started with
/// `-id <id>`) and the container's task with its descendants.
fn processes_of(containerd: &Containerd, id: &str) -> Result<BTreeSet<u32>> {
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").context("list /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
        if args.windows(2).any(|pair| pair[0] == b"-id" && pair[1] == id.as_bytes()) {
            pids.insert(pid);
        }
    }
    let mut todo = vec![containerd.task_pid(id)?];
    let mut task_tree = BTreeSet::new();
    while let Some(pid) = todo.pop() {
        if task_tree.insert(pid) {
            todo.extend(children(pid));
        }
    }
    pids.extend(task_tree);
    Ok(pids)
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|line| line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn size_rows() -> Result<Vec<Row>> {
    let size = |path: &Path| -> Result<f64> {
        Ok(std::fs::metadata(path).with_context(|| format!("size of {}", path.display()))?.len() as f64)
    };
    let images = images_dir();
    let shim = workspace_root().join("target/release/containerd-shim-wasmtime-custom-v1");
    let runc_shim = e2e::containerd::bin_dir("1.7")?.join("containerd-shim-runc-v2");
    let runc = which("runc")?;
    Ok(vec![
        Row::new(
            "size, image archive",
            "bytes",
            vec![size(&images.join("app-wasm.tar"))?],
            vec![size(&images.join("app-native.tar"))?],
        ),
        Row::new(
            "size, runtime binaries on the node",
            "bytes",
            vec![size(&shim)?],
            vec![size(&runc_shim)? + size(&runc)?],
        ),
    ])
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} is not on PATH"))
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
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.requests_per_second, 9438.0);
        assert_eq!(w.p50_ms, 3.1);
        assert!((w.p99_ms - 0.812).abs() < 1e-9);
    }

    #[test]
    fn wrk_runs_with_errors_are_refused() {
        let failing = WRK.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse_wrk(&failing).is_none());
    }

    #[test]
    fn wrk_runs_with_socket_errors_are_refused() {
        let failing = WRK
            .replace("Requests/sec", "  Socket errors: connect 0, read 0, write 0, timeout 3\nRequests/sec");
        assert!(parse_wrk(&failing).is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
