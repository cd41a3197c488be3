//! The cold-start rows: `ctr run -d` to the first 200 on `/healthz`, first
//! on a fresh containerd (the Wasm compiles) and again on the same one (the
//! plain image's Wasm comes from the node's compile cache).

use anyhow::Result;
use testbed::Containerd;
use testbed::free_port;

use super::apps::{containerd_with_images, time_to_first_200};
use super::options::BenchOptions;
use super::table::Row;
use crate::model::Flavor;

/// `ctr run -d` of `flavor` to the first 200 on /healthz, in milliseconds.
fn cold_start(containerd: &Containerd, flavor: Flavor, id: &str) -> Result<f64> {
    let port = free_port()?;
    time_to_first_200(containerd, flavor.run(id, port, "http://127.0.0.1:1"), id, port)
}

pub fn rows(containerd: &Containerd, options: &BenchOptions) -> Result<Vec<Row>> {
    let run = std::process::id();
    let mut native = Vec::new();
    let mut cached = Vec::new();
    // One start compiles the component into the cache; the rest reuse it.
    cold_start(containerd, Flavor::Wasm, &format!("bench-{run}-warm"))?;
    for i in 0..options.starts {
        native.push(cold_start(containerd, Flavor::Native, &format!("bench-{run}-native-{i}"))?);
        cached.push(cold_start(containerd, Flavor::Wasm, &format!("bench-{run}-cached-{i}"))?);
    }
    let (mut first, mut native_first) = (Vec::new(), Vec::new());
    for i in 0..options.starts {
        // A containerd of its own (and with it an empty compile cache):
        // nothing of either image has run on it.
        let fresh = containerd_with_images(containerd.paths())?;
        first.push(cold_start(&fresh, Flavor::Wasm, &format!("bench-{run}-first-{i}"))?);
        native_first.push(cold_start(&fresh, Flavor::Native, &format!("bench-{run}-native-first-{i}"))?);
    }
    Ok(vec![
        Row::new("cold start, first on a fresh containerd", "ms", first, native_first),
        Row::new("cold start, again (Wasm: the node's compile cache)", "ms", cached, native),
    ])
}

/// How the cold-start rows were measured.
pub fn note(options: &BenchOptions) -> String {
    format!(
        "cold start: ctr run -d to the first 200 on /healthz, {} starts each, medians; first: a fresh \
         containerd each time (the Wasm compiles; both images just imported); again: the same containerd \
         after a first start",
        options.starts
    )
}
