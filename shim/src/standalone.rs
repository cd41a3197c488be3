//! `containerd-shim-wasmtime-custom-v1 serve FILE.wasm [--dir DIR]`: serves
//! a `wasi:http/proxy` component directly, without containerd, the way the
//! shim serves it in a container (same engine, settings, limits, metrics,
//! traces and drain). For people developing a component, and for checking
//! the binary on a machine that cannot run containers (an emulated arm64
//! user space, for one).
//!
//! The settings and the guest's environment come from this process's
//! environment (a container's come from its spec); the guest sees `DIR` as
//! its `/` when given, else no files at all.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::engine::{self, Workload};
use crate::guest_setup::GuestSetup;
use crate::output;
use crate::serve;
use crate::settings::Settings;
use crate::signals::Signals;

const USAGE: &str = "usage: containerd-shim-wasmtime-custom-v1 serve FILE.wasm [--dir DIR]";

/// Runs `serve` with the arguments after it; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let code = match parse(args).and_then(|(file, dir)| run(&file, dir.as_deref())) {
        Ok(code) => code,
        Err(e) => {
            output::message(log::Level::Error, format!("wasmtime-custom serve: {e:#}"));
            crate::sandbox::EXIT_CANNOT_RUN
        }
    };
    output::flush();
    code
}

fn parse(args: &[String]) -> Result<(PathBuf, Option<PathBuf>)> {
    match args {
        [file] if !file.starts_with('-') => Ok((file.into(), None)),
        [file, flag, dir] if flag == "--dir" && !file.starts_with('-') => Ok((file.into(), Some(dir.into()))),
        _ => bail!("{USAGE}"),
    }
}

fn run(file: &Path, dir: Option<&Path>) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let signals = Signals::watch()?;
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        let settings = Settings::from_env(&env)?;
        let origin = file.display().to_string();
        let bytes = std::fs::read(file).with_context(|| format!("could not read {origin}"))?;
        let engine = engine::new(settings.max_memory_bytes)?;
        let guest_env = std::env::vars().collect();
        let setup = GuestSetup::new(vec![origin.clone()], guest_env, dir)?;
        let Workload::Http(component) = engine::load(&engine, &bytes, false, &origin)? else {
            bail!("{origin} is not a wasi:http/proxy component; `serve` serves HTTP components only");
        };
        engine::start_epoch_ticker(&engine);
        serve::serve(&engine, &component, &setup, &settings, signals).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn the_file_and_an_optional_folder_are_read() {
        assert_eq!(parse(&args(&["app.wasm"])).unwrap(), ("app.wasm".into(), None));
        assert_eq!(
            parse(&args(&["app.wasm", "--dir", "/srv"])).unwrap(),
            ("app.wasm".into(), Some("/srv".into()))
        );
        for bad in [&[][..], &["--dir", "x"], &["a.wasm", "--dir"], &["a.wasm", "b.wasm"]] {
            assert!(format!("{:#}", parse(&args(bad)).unwrap_err()).contains("usage:"), "{bad:?}");
        }
    }
}
