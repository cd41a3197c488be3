//! The large component's rows: a Python `wasi:http/proxy` handler that
//! componentize-py built with CPython and its standard library
//! (`large-guest/`, about 18 MB of Wasm), as a plain image (the Wasm in a
//! rootfs, `python-http.tar`). Its first start on a fresh containerd
//! against the shim's own compile time of it (`compile`); its second start
//! and its requests/s against the app's Wasm flavor, measured the same way
//! in the same run.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use testbed::{Containerd, Paths, Run, free_port, tool};

use super::apps::{containerd_with_images, in_turn, time_to_first_200, wait_for_first_200};
use super::options::BenchOptions;
use super::table::Row;
use super::wrk::{self, Load};
use crate::model::Flavor;

/// The large component on its own, as `compile` reads it.
const PYTHON_WASM: &str = "python-http.wasm";
/// The large component's plain image, and its archive.
const PYTHON_IMAGE: &str = "localhost/wasmtime-custom/python-http:latest";
const PYTHON_ARCHIVE: &str = "python-http.tar";

/// A component started with `ctr run -d` on the wasmtime-custom runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Component {
    /// The large component.
    Python,
    /// The app's Wasm flavor, a small component: the reference.
    Rust,
}

impl Component {
    fn slug(self) -> &'static str {
        match self {
            Component::Python => "python",
            Component::Rust => "rust",
        }
    }

    /// On the host's network, serving on 127.0.0.1:`port`.
    fn run(self, id: &str, port: u16) -> Run<'_> {
        match self {
            Component::Python => Run::new(PYTHON_IMAGE, id).listen(port),
            // The app's `/healthz` never calls Dapr: the address only has to parse.
            Component::Rust => Flavor::Wasm.run(id, port, "http://127.0.0.1:1"),
        }
    }
}

/// Both components of the rows, the large one first.
const COMPONENTS: [Component; 2] = [Component::Python, Component::Rust];

pub fn rows(paths: &Paths, options: &BenchOptions) -> Result<Vec<Row>> {
    let shim = paths.shim()?;
    let wasm = paths.image(PYTHON_WASM)?;
    let bytes = std::fs::metadata(&wasm).with_context(|| format!("size of {}", wasm.display()))?.len();
    let scratch = tempfile::tempdir().context("create a folder for compile's output")?;
    let cwasm = scratch.path().join("python-http.cwasm");
    let run = std::process::id();
    let (mut first, mut compiled, mut second, mut rust_second) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..options.starts {
        // A containerd of its own: an empty compile cache, and nothing of
        // either image has run on it.
        let fresh = containerd_with_large_image(paths)?;
        let id = |what: &str| format!("bench-{run}-large-{what}-{i}");
        let python_first = || start(&fresh, Component::Python, &id("first"));
        // Taking turns, so that neither always runs right after the other.
        if i.is_multiple_of(2) {
            compiled.push(compile(&shim, &wasm, &cwasm)?);
            first.push(python_first()?);
        } else {
            first.push(python_first()?);
            compiled.push(compile(&shim, &wasm, &cwasm)?);
        }
        second.push(start(&fresh, Component::Python, &id("second"))?);
        start(&fresh, Component::Rust, &id("rust-first"))?;
        rust_second.push(start(&fresh, Component::Rust, &id("rust-second"))?);
    }

    let containerd = containerd_with_large_image(paths)?;
    let mut ports = HashMap::new();
    for component in COMPONENTS {
        let port = free_port()?;
        let id = format!("bench-{run}-large-http-{}", component.slug());
        containerd.run_detached(component.run(&id, port))?;
        wait_for_first_200(port)?;
        ports.insert(component, (id, port));
    }
    let load = Load { connections: options.connections, seconds: options.wrk_seconds };
    let mut throughput: HashMap<Component, Vec<f64>> = HashMap::new();
    for repeat in 0..options.repeats {
        for component in in_turn(repeat, COMPONENTS) {
            let url = format!("http://127.0.0.1:{}/healthz", ports[&component].1);
            let measured = wrk::measure(load, &url, None)?;
            throughput.entry(component).or_default().push(measured.requests_per_second);
        }
    }
    for (id, _) in ports.values() {
        containerd.remove(id)?;
    }

    Ok(vec![
        Row::new(first_start_row(bytes), "ms", first, compiled),
        Row::new("large component: second start vs the Rust app's", "ms", second, rust_second),
        Row::new(
            "large component: GET /healthz req/s vs the Rust app's",
            "req/s",
            throughput.remove(&Component::Python).unwrap_or_default(),
            throughput.remove(&Component::Rust).unwrap_or_default(),
        ),
    ])
}

/// The first row's name, with the component's size in MB.
fn first_start_row(bytes: u64) -> String {
    format!("large component ({:.1} MB): first start vs compile", bytes as f64 / 1e6)
}

/// A private containerd with the app's images and the large component's.
fn containerd_with_large_image(paths: &Paths) -> Result<Containerd> {
    let containerd = containerd_with_images(paths)?;
    containerd.import(PYTHON_ARCHIVE, &[])?;
    Ok(containerd)
}

/// `ctr run -d` of `component` to the first 200 on /healthz, in
/// milliseconds.
fn start(containerd: &Containerd, component: Component, id: &str) -> Result<f64> {
    let port = free_port()?;
    time_to_first_200(containerd, component.run(id, port), id, port)
}

/// `containerd-shim-wasmtime-custom-v1 compile wasm out`, from spawn to
/// exit, in milliseconds: the shim's engine compiling the component, with
/// nothing of containerd around it.
fn compile(shim: &Path, wasm: &Path, out: &Path) -> Result<f64> {
    let started = Instant::now();
    tool::stdout(Command::new(shim).arg("compile").arg(wasm).arg(out))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    // Each sample writes a new file, as the first one did.
    std::fs::remove_file(out).with_context(|| format!("remove {}", out.display()))?;
    Ok(elapsed)
}

/// How the large component's rows were measured.
pub fn note(options: &BenchOptions) -> String {
    format!(
        "large component: large-guest/app.py built by componentize-py (CPython in Wasm), a plain image \
         (python-http.tar), ctr run -d on the host network; first start: {starts} fresh containerds (image just \
         imported, empty compile cache), ctr run -d to the first 200 on /healthz, against \
         `containerd-shim-wasmtime-custom-v1 compile python-http.wasm` from spawn to exit, taking turns, \
         medians; second start: a new container of the same image on the same containerd after the first, \
         against the app's Wasm flavor started the same way; req/s: wrk -t2 -c{connections} -d{seconds}s on \
         /healthz, {repeats} runs, medians, against the app's Wasm flavor on the same containerd, taking turns",
        starts = options.starts,
        connections = options.connections,
        seconds = options.wrk_seconds,
        repeats = options.repeats,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_row_names_the_size_in_megabytes() {
        assert_eq!(first_start_row(18_419_671), "large component (18.4 MB): first start vs compile");
    }
}
