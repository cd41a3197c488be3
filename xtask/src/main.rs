//! Project tasks that are not plain `cargo build`.
//!
//! `cargo xtask images [--out DIR]` builds the Wasm components (release,
//! `wasm32-wasip2`) and writes their OCI image archives for
//! `ctr image import` into DIR (default `target/images`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod guests;
mod oci;

const USAGE: &str = "usage: cargo xtask images [--out DIR]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["images"] => images(root, &root.join("target/images")),
        ["images", "--out", dir] => images(root, Path::new(dir)),
        _ => bail!("{USAGE}"),
    }
}

/// One image archive to write.
struct Image {
    file: &'static str,
    name: &'static str,
    wasm_layer: bool,
    wasm: Vec<u8>,
}

fn images(root: &Path, out: &Path) -> Result<()> {
    let wasm_dir = build_components(root)?;
    let read = |file: &str| {
        let path = wasm_dir.join(file);
        std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))
    };
    let app = read("app.wasm")?;
    let test_http = read("test_guests.wasm")?;
    let test_command = read("guest-command.wasm")?;
    let truncated = app[..app.len() / 2].to_vec();

    let plain = |file, name, wasm| Image { file, name, wasm_layer: false, wasm };
    let images = [
        plain("app.tar", "localhost/wasmtime-custom/app:latest", app.clone()),
        Image {
            file: "app-wasm.tar",
            name: "localhost/wasmtime-custom/app:wasm",
            wasm_layer: true,
            wasm: app,
        },
        plain("test-http.tar", "localhost/wasmtime-custom/test-http:latest", test_http),
        plain("test-command.tar", "localhost/wasmtime-custom/test-command:latest", test_command),
        plain("test-module.tar", "localhost/wasmtime-custom/test-module:latest", guests::core_module()?),
        plain("test-not-wasm.tar", "localhost/wasmtime-custom/test-not-wasm:latest", guests::not_wasm()),
        plain("test-truncated.tar", "localhost/wasmtime-custom/test-truncated:latest", truncated),
        plain(
            "test-no-export.tar",
            "localhost/wasmtime-custom/test-no-export:latest",
            guests::no_export_component()?,
        ),
    ];

    std::fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))?;
    for image in images {
        let archive = if image.wasm_layer {
            oci::wasm_layer_image(image.name, &image.wasm)?
        } else {
            oci::plain_image(image.name, oci_arch()?, &image.wasm)?
        };
        let path = out.join(image.file);
        std::fs::write(&path, &archive).with_context(|| format!("could not write {}", path.display()))?;
        println!("{}  {}  {} bytes  {}", path.display(), image.name, archive.len(), oci::sha256(&archive));
    }
    Ok(())
}

/// The OCI name of this machine's architecture: plain images are built for
/// the machine that builds them.
fn oci_arch() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no OCI architecture name known for {other}"),
    }
}

/// Builds `app` and `test-guests` for `wasm32-wasip2`; returns where the
/// `.wasm` files are.
fn build_components(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "app", "-p", "test-guests"])
        .status()
        .context("could not run cargo")?;
    if !status.success() {
        bail!(
            "building the Wasm components failed ({status}); is the target installed? \
             run scripts/install-prerequisites.sh"
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("wasm32-wasip2/release"))
}
