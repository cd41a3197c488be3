//! The HTTP rows: `GET /healthz` and `POST /q-order-ingress` (one generated
//! order) under wrk, requests/s and latency p50/p99, for three apps: the
//! Wasm app as deployed by default, the same with observability on (the
//! metrics listener, and every span exported over OTLP to a sink), and the
//! native app. The observability rows put their cost next to the plain ones.

use std::collections::HashMap;

use anyhow::{Result, ensure};
use testbed::{Containerd, Run, free_port};

use super::apps::wait_for_first_200;
use super::options::BenchOptions;
use super::otlp_sink::OtlpSink;
use super::table::Row;
use super::wrk::{self, Load, Measurement};
use crate::model::Flavor;
use crate::orders;
use crate::standin::{DaprStandIn, StandInOptions};

/// One app under measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Wasm,
    /// The Wasm app with `WASMTIME_CUSTOM_METRICS_LISTEN` and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set.
    WasmObserved,
    Native,
}

const SUBJECTS: [Subject; 3] = [Subject::Wasm, Subject::WasmObserved, Subject::Native];

impl Subject {
    fn run<'a>(self, id: &'a str, port: u16, dapr: &str, sink: &OtlpSink) -> Result<Run<'a>> {
        Ok(match self {
            Subject::Wasm => Flavor::Wasm.run(id, port, dapr),
            Subject::WasmObserved => Flavor::Wasm
                .run(id, port, dapr)
                .env("WASMTIME_CUSTOM_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?))
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
                .env("OTEL_SERVICE_NAME", "bench"),
            Subject::Native => Flavor::Native.run(id, port, dapr),
        })
    }

    fn slug(self) -> &'static str {
        match self {
            Subject::Wasm => "wasm",
            Subject::WasmObserved => "wasm-observed",
            Subject::Native => "native",
        }
    }
}

/// The subjects, the first one changing with each repeat, so that none
/// always runs on a machine another just warmed (or heated).
fn in_turn(repeat: usize) -> [Subject; 3] {
    let mut order = SUBJECTS;
    order.rotate_left(repeat % SUBJECTS.len());
    order
}

pub fn rows(containerd: &Containerd, options: &BenchOptions) -> Result<Vec<Row>> {
    // The stand-in answers the distributor's output binding (its queues are
    // not delivered: only the ingress route is measured).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let outbox = tempfile::tempdir()?;
    // A sink: it acknowledges the distributor's output and keeps nothing.
    let sink = StandInOptions { sink: true, ..StandInOptions::default() };
    let standin = runtime.block_on(DaprStandIn::start(sink, "127.0.0.1", outbox.path()))?;
    let otlp = OtlpSink::start(&runtime)?;
    let lua = outbox.path().join("post.lua");
    let order = serde_json::to_string(&orders::generate(1, 1)[0])?;
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{order}]]\n"
        ),
    )?;
    let mut ports = HashMap::new();
    for subject in SUBJECTS {
        let port = free_port()?;
        let id = format!("bench-{}-http-{}", std::process::id(), subject.slug());
        containerd.run_detached(subject.run(&id, port, &standin.url(), &otlp)?)?;
        wait_for_first_200(port)?;
        ports.insert(subject, (id, port));
    }
    let load = Load { connections: options.connections, seconds: options.wrk_seconds };
    let mut samples: HashMap<(Subject, &str), Vec<Measurement>> = HashMap::new();
    for repeat in 0..options.repeats {
        for subject in in_turn(repeat) {
            let port = ports[&subject].1;
            let get = wrk::measure(load, &format!("http://127.0.0.1:{port}/healthz"), None)?;
            samples.entry((subject, "get")).or_default().push(get);
            let post = wrk::measure(load, &format!("http://127.0.0.1:{port}/q-order-ingress"), Some(&lua))?;
            samples.entry((subject, "post")).or_default().push(post);
        }
    }
    for (id, _) in ports.values() {
        containerd.remove(id)?;
    }
    // Proof that the observed app really exported (batches of up to 512
    // spans, sent as they fill and at exit).
    ensure!(otlp.exports() > 0, "the observed Wasm app exported no spans to the sink");
    let mut rows = Vec::new();
    for (key, label) in [("get", "GET /healthz"), ("post", "POST /q-order-ingress")] {
        let pick = |subject: Subject, f: fn(&Measurement) -> f64| -> Vec<f64> {
            samples.get(&(subject, key)).map(|runs| runs.iter().map(f).collect()).unwrap_or_default()
        };
        for (wasm, suffix) in [(Subject::Wasm, ""), (Subject::WasmObserved, ", metrics + traces on")] {
            for (what, unit, f) in FIGURES {
                rows.push(Row::new(
                    format!("{label}{suffix}, {what}"),
                    unit,
                    pick(wasm, f),
                    pick(Subject::Native, f),
                ));
            }
        }
    }
    Ok(rows)
}

/// What each HTTP row reports: name, unit, and where it is in a measurement.
type Figure = (&'static str, &'static str, fn(&Measurement) -> f64);

const FIGURES: [Figure; 3] = [
    ("requests/s", "req/s", |w| w.requests_per_second),
    ("latency p50", "ms", |w| w.p50_ms),
    ("latency p99", "ms", |w| w.p99_ms),
];

/// How the HTTP rows were measured.
pub fn note(options: &BenchOptions) -> String {
    format!(
        "HTTP: wrk -t2 -c{} -d{}s --latency on one app of each kind, {} runs, medians; the POST body is one \
         generated order, and the Dapr stand-in (in this process) acknowledges the distributor's output and keeps \
         nothing; \"metrics + traces on\": the Wasm app with its metrics listener and every request's spans \
         exported over OTLP/HTTP to a sink in this process (their Wasm column against the plain rows' is the \
         cost of observability)",
        options.connections, options.wrk_seconds, options.repeats
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_takes_its_turn_going_first() {
        let firsts: Vec<Subject> = (0..3).map(|repeat| in_turn(repeat)[0]).collect();
        assert_eq!(firsts, SUBJECTS);
        assert_eq!(in_turn(3), in_turn(0));
    }
}
