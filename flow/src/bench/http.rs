//! The HTTP rows: `GET /healthz` and `POST /q-order-ingress` (one generated
//! order) under wrk, one app of each kind, requests/s and latency p50/p99.

use std::collections::HashMap;

use anyhow::Result;
use testbed::Containerd;
use testbed::free_port;

use super::apps::{FLAVORS, in_turn, start, wait_for_first_200};
use super::options::BenchOptions;
use super::table::Row;
use super::wrk::{self, Load, Measurement};
use crate::model::Flavor;
use crate::orders;
use crate::standin::{DaprStandIn, StandInOptions};

pub fn rows(containerd: &Containerd, options: &BenchOptions) -> Result<Vec<Row>> {
    // The stand-in answers the distributor's output binding (its queues are
    // not delivered: only the ingress route is measured).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let outbox = tempfile::tempdir()?;
    // A sink: it acknowledges the distributor's output and keeps nothing.
    let sink = StandInOptions { sink: true, ..StandInOptions::default() };
    let standin = runtime.block_on(DaprStandIn::start(sink, "127.0.0.1", outbox.path()))?;
    let lua = outbox.path().join("post.lua");
    let order = serde_json::to_string(&orders::generate(1, 1)[0])?;
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{order}]]\n"
        ),
    )?;
    let mut ports = HashMap::new();
    for flavor in FLAVORS {
        let port = free_port()?;
        let id = format!("bench-{}-http-{}", std::process::id(), flavor.slug());
        start(containerd, flavor, &id, port, &standin.url())?;
        wait_for_first_200(port)?;
        ports.insert(flavor, (id, port));
    }
    let load = Load { connections: options.connections, seconds: options.wrk_seconds };
    let mut samples: HashMap<(Flavor, &str), Vec<Measurement>> = HashMap::new();
    for repeat in 0..options.repeats {
        for flavor in in_turn(repeat) {
            let port = ports[&flavor].1;
            let get = wrk::measure(load, &format!("http://127.0.0.1:{port}/healthz"), None)?;
            samples.entry((flavor, "get")).or_default().push(get);
            let post = wrk::measure(load, &format!("http://127.0.0.1:{port}/q-order-ingress"), Some(&lua))?;
            samples.entry((flavor, "post")).or_default().push(post);
        }
    }
    for (id, _) in ports.values() {
        containerd.remove(id)?;
    }
    let mut rows = Vec::new();
    for (key, label) in [("get", "GET /healthz"), ("post", "POST /q-order-ingress")] {
        let pick = |flavor: Flavor, f: fn(&Measurement) -> f64| -> Vec<f64> {
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

/// How the HTTP rows were measured.
pub fn note(options: &BenchOptions) -> String {
    format!(
        "HTTP: wrk -t2 -c{} -d{}s --latency on one app of each kind, {} runs, medians; the POST body is one \
         generated order, and the Dapr stand-in (in this process) acknowledges the distributor's output and keeps \
         nothing",
        options.connections, options.wrk_seconds, options.repeats
    )
}
