//! The large component: `large-guest/app.py`, a `wasi:http/proxy` handler
//! in Python, which componentize-py turns into a component of about 18 MB
//! (CPython and its standard library, initialised at build time). The
//! benchmark starts and serves it to show the shim with a language runtime
//! compiled to Wasm.
//!
//! componentize-py's output differs from one build to the next (it
//! snapshots the interpreter's heap after start-up, hash seeds and all), so
//! a build is reused for as long as its inputs stay the same: the same
//! `app.py`, componentize-py and WIT give the same bytes, and so the same
//! image digest.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The componentize-py release the component is built with, as
/// `scripts/install-prerequisites.sh` installs it.
const COMPONENTIZE_PY: &str = "0.25.1";

/// The crate whose WIT the shim serves: the guest is built against the same
/// `wasi:http` version.
const WASI_HTTP_CRATE: &str = "wasmtime-wasi-http";

/// The `.wasm` of `large-guest/app.py`, built in `build_dir` (or reused
/// from there when nothing it is made from has changed).
pub fn build(root: &Path, build_dir: &Path) -> Result<Vec<u8>> {
    let version = componentize_py_version()?;
    let wit = wit_folder(root)?;
    let world_file = wit.join("world.wit");
    let world = proxy_world(
        &std::fs::read_to_string(&world_file)
            .with_context(|| format!("could not read {}", world_file.display()))?,
    )
    .with_context(|| format!("{} includes no wasi:http/proxy world", world_file.display()))?;
    let app = root.join("large-guest/app.py");
    let source = std::fs::read(&app).with_context(|| format!("could not read {}", app.display()))?;

    let inputs = format!(
        "{:x}",
        Sha256::new()
            .chain_update(version.as_bytes())
            .chain_update([0])
            .chain_update(wit.display().to_string().as_bytes())
            .chain_update([0])
            .chain_update(world.as_bytes())
            .chain_update([0])
            .chain_update(&source)
            .finalize()
    );
    let (wasm, stamp) = (build_dir.join("python-http.wasm"), build_dir.join("inputs.sha256"));
    if std::fs::read_to_string(&stamp).is_ok_and(|previous| previous == inputs)
        && let Ok(bytes) = std::fs::read(&wasm)
    {
        return Ok(bytes);
    }

    // The app is copied out of the source tree: the CPython that runs it at
    // build time writes its `__pycache__` beside it.
    let sources = build_dir.join("src");
    std::fs::create_dir_all(&sources).with_context(|| format!("could not create {}", sources.display()))?;
    let copy = sources.join("app.py");
    std::fs::write(&copy, &source).with_context(|| format!("could not write {}", copy.display()))?;
    // A stale stamp must not outlive a failed build.
    let _ = std::fs::remove_file(&stamp);
    eprintln!("building {} with {version} (about 15 s)", app.display());
    let status = Command::new("componentize-py")
        .arg("--quiet")
        .arg("--wit-path")
        .arg(&wit)
        .args(["--world", &world, "componentize", "--python-path"])
        .arg(&sources)
        .arg("app")
        .arg("--output")
        .arg(&wasm)
        .status()
        .context("could not run componentize-py")?;
    if !status.success() {
        bail!("componentize-py failed ({status}) on {}", app.display());
    }
    std::fs::write(&stamp, &inputs).with_context(|| format!("could not write {}", stamp.display()))?;
    std::fs::read(&wasm).with_context(|| format!("could not read {}", wasm.display()))
}

/// `componentize-py --version`, checked against [`COMPONENTIZE_PY`].
fn componentize_py_version() -> Result<String> {
    let install = "run scripts/install-prerequisites.sh to install it";
    let output = Command::new("componentize-py")
        .arg("--version")
        .output()
        .with_context(|| format!("componentize-py is missing: {install}"))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || version != format!("componentize-py {COMPONENTIZE_PY}") {
        bail!("found {version:?} where componentize-py {COMPONENTIZE_PY} is needed: {install}");
    }
    Ok(version)
}

/// The `wit` folder of the workspace's [`WASI_HTTP_CRATE`], found with
/// `cargo metadata` wherever cargo keeps its sources.
fn wit_folder(root: &Path) -> Result<PathBuf> {
    let output = crate::cargo_command(root)
        .args(["metadata", "--format-version", "1"])
        .output()
        .context("could not run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed something other than JSON")?;
    manifest_folder(&metadata, WASI_HTTP_CRATE).map(|folder| folder.join("wit"))
}

/// The folder of the one package named `name` in `cargo metadata`'s output.
fn manifest_folder(metadata: &Value, name: &str) -> Result<PathBuf> {
    let manifests: Vec<&str> = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter(|package| package["name"] == name)
        .filter_map(|package| package["manifest_path"].as_str())
        .collect();
    match manifests.as_slice() {
        [manifest] => Path::new(manifest)
            .parent()
            .map(Path::to_path_buf)
            .with_context(|| format!("{name}'s manifest {manifest} has no folder")),
        [] => bail!("the workspace does not depend on {name}"),
        several => bail!("the workspace has {} versions of {name}: {}", several.len(), several.join(", ")),
    }
}

/// The `wasi:http/proxy@<version>` world that `world.wit` includes.
fn proxy_world(world_wit: &str) -> Option<String> {
    world_wit.lines().find_map(|line| {
        let world = line.trim().strip_prefix("include ")?.strip_suffix(';')?.trim();
        world.starts_with("wasi:http/proxy@").then(|| world.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_world_is_read_from_the_crates_world() {
        let wit = "// We actually don't use this.\npackage wasmtime:wasi-http;\n\nworld bindings {\n  \
                   include wasi:http/proxy@0.2.12;\n}\n";
        assert_eq!(proxy_world(wit).as_deref(), Some("wasi:http/proxy@0.2.12"));
        assert_eq!(proxy_world("world bindings {\n  include wasi:cli/command@0.2.0;\n}\n"), None);
    }

    #[test]
    fn the_crate_is_found_once_in_cargo_metadata() {
        let metadata = serde_json::json!({"packages": [
            {"name": "wasmtime", "manifest_path": "/r/wasmtime-48.0.8/Cargo.toml"},
            {"name": "wasmtime-wasi-http", "manifest_path": "/r/wasmtime-wasi-http-48.0.8/Cargo.toml"},
        ]});
        assert_eq!(
            manifest_folder(&metadata, "wasmtime-wasi-http").unwrap(),
            Path::new("/r/wasmtime-wasi-http-48.0.8")
        );
        let missing = manifest_folder(&metadata, "wasmtime-wasi").unwrap_err().to_string();
        assert_eq!(missing, "the workspace does not depend on wasmtime-wasi");
        let twice = serde_json::json!({"packages": [
            {"name": "a", "manifest_path": "/r/a-1/Cargo.toml"},
            {"name": "a", "manifest_path": "/r/a-2/Cargo.toml"},
        ]});
        assert!(manifest_folder(&twice, "a").unwrap_err().to_string().contains("2 versions of a"));
    }
}
