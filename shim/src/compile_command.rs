//! `containerd-shim-wasmtime-custom-v1 compile FILE.wasm OUT.cwasm`:
//! compiles a module or component ahead of time with the engine
//! configuration containers use, as `wasmtime compile` would, and says how
//! long it took. The benchmark times it as the baseline of a first start;
//! it also shows a component's compile cost without containerd.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::engine;
use crate::settings::Settings;

const USAGE: &str = "usage: containerd-shim-wasmtime-custom-v1 compile FILE.wasm OUT.cwasm";

/// Runs `compile` with the arguments after it; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let result = match args {
        [input, output] if !input.starts_with('-') => compile(Path::new(input), Path::new(output)),
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wasmtime-custom compile: {e:#}");
            crate::sandbox::EXIT_CANNOT_RUN
        }
    }
}

fn compile(input: &Path, output: &Path) -> Result<()> {
    let origin = input.display().to_string();
    let bytes = std::fs::read(input).with_context(|| format!("could not read {origin}"))?;
    let engine = engine::new(Settings::default().max_memory_bytes)?;
    let started = Instant::now();
    let artifact = engine::precompile(&engine, &bytes, &origin)?;
    let took = started.elapsed();
    if output.exists() && output.is_dir() {
        bail!("{} is a folder; name the file to write", output.display());
    }
    std::fs::write(output, &artifact).with_context(|| format!("could not write {}", output.display()))?;
    println!(
        "compiled {origin} ({} bytes) to {} ({} bytes) in {:.3} s",
        bytes.len(),
        output.display(),
        artifact.len(),
        took.as_secs_f64()
    );
    Ok(())
}
