//! The benchmark: the Wasm app on the wasmtime-custom shim against the same
//! order logic as a native server under runc, every row measured side by
//! side in one run on this machine. It prints figures and asserts nothing.
//!
//! Rows, in this order: HTTP throughput and latency with `wrk` (`http`;
//! running and reading wrk: `wrk`; the Wasm app also with metrics and
//! span export on, to an OTLP sink: `otlp_sink`), cold starts (`cold_start`),
//! the large component (a Python one: first start against its compile
//! time, second start and req/s against the app's; `large`), density,
//! the PSS of N running instances (`density`), N pods through CRI (scale-out
//! and PSS per pod: `pods`), sizes (`sizes`), and the
//! full order flow (`full_flow`). Medians over repeats; ratios are Wasm /
//! native (`table`). What every row needs to start apps is in `apps`; this
//! module runs the rows in order and writes the table.

mod apps;
mod cold_start;
mod density;
mod full_flow;
mod http;
mod large;
mod options;
mod otlp_sink;
mod pods;
mod sizes;
mod table;
mod wrk;

use anyhow::Result;
use testbed::Paths;

pub use self::options::BenchOptions;
use self::table::Table;
use crate::model::FlowOptions;

/// Measures every row, prints the table and writes it under `options.out`.
pub fn run(paths: &Paths, options: &BenchOptions, flow: FlowOptions) -> Result<()> {
    let mut rows = Vec::new();
    let containerd = apps::containerd_with_images(paths)?;
    eprintln!("bench: HTTP with wrk");
    rows.extend(http::rows(&containerd, options)?);
    eprintln!("bench: cold starts");
    rows.extend(cold_start::rows(&containerd, options)?);
    eprintln!("bench: the large component");
    rows.extend(large::rows(paths, options)?);
    eprintln!("bench: density");
    rows.extend(density::rows(&containerd, options)?);
    drop(containerd);
    eprintln!("bench: pods through CRI, {} at once", options.instances);
    rows.extend(pods::rows(paths, options)?);
    rows.extend(sizes::rows(paths)?);
    eprintln!("bench: the full flow, {} orders, {} runs each", flow.orders, options.repeats);
    rows.push(full_flow::row(paths, options, &flow)?);

    let notes = vec![
        http::note(options),
        cold_start::note(options),
        large::note(options),
        density::note(options),
        pods::note(options),
        sizes::note(),
        full_flow::note(&flow),
    ];
    Table::new(rows, notes).publish(&options.out)
}
