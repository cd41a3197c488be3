//! The full-flow row: the whole order flow, Wasm and native taking turns on
//! one node, orders per second. A run that loses an order stops the
//! benchmark: its figure would mean nothing.

use std::collections::HashMap;

use anyhow::{Result, bail};
use testbed::Paths;

use super::apps::{FLAVORS, in_turn};
use super::options::BenchOptions;
use super::table::Row;
use crate::job::{self, Node};
use crate::model::{Flavor, FlowOptions};

pub fn row(paths: &Paths, options: &BenchOptions, flow: &FlowOptions) -> Result<Row> {
    let node = Node::start(paths)?;
    let mut samples: HashMap<Flavor, Vec<f64>> = HashMap::new();
    for repeat in 0..options.repeats {
        for flavor in in_turn(repeat, FLAVORS) {
            let report = job::run_on(&node, flavor, FlowOptions { progress: false, ..flow.clone() })?;
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
    Ok(Row::new(
        format!("full flow, {} orders", flow.orders),
        "orders/s",
        samples.remove(&Flavor::Wasm).unwrap_or_default(),
        samples.remove(&Flavor::Native).unwrap_or_default(),
    ))
}

/// How the full-flow row was measured.
pub fn note(flow: &FlowOptions) -> String {
    format!(
        "full flow: stand-in concurrency {} per queue, the same orders (same seed) for both; both keep \
         their connections to the stand-in open (the shim's outgoing pool, the native server's client)",
        flow.standin.concurrency
    )
}
