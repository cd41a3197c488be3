//! Project tasks that are not plain `cargo build`.
//!
//! - `cargo xtask images [--out DIR]` builds the Wasm components (release,
//!   `wasm32-wasip2`) and the workspace, and writes the OCI image archives
//!   for `ctr image import` into DIR (default `target/images`): the app
//!   (plain and wasm-layer), the native baseline (`app-native.tar`), the
//!   test guests, and the Linux images of the CRI tests.
//! - `cargo xtask installer-image [--out DIR]` builds the workspace (release)
//!   and writes the node installer's image (`node-installer.tar`): the
//!   installer, the shim it installs, the libraries they load, and a
//!   busybox shell for `--restart-command`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use oci_spec::image::Arch;

mod guests;
mod oci;

const USAGE: &str = "usage: cargo xtask images [--out DIR] | cargo xtask installer-image [--out DIR]";

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
    let default_out = root.join("target/images");
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["images"] => images(root, &default_out),
        ["images", "--out", dir] => images(root, Path::new(dir)),
        ["installer-image"] => installer_image(root, &default_out),
        ["installer-image", "--out", dir] => installer_image(root, Path::new(dir)),
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
    // The native baseline's binary; the whole workspace, so that features
    // resolve as in every other build and nothing is built twice.
    cargo(root, &["build", "--release", "--workspace"])?;
    let read = |file: &str| {
        let path = wasm_dir.join(file);
        std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))
    };
    let app = read("app.wasm")?;
    std::fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))?;
    // The component on its own too, for `containerd-shim-wasmtime-custom-v1 serve`.
    let component = out.join("app.wasm");
    std::fs::write(&component, &app).with_context(|| format!("could not write {}", component.display()))?;
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
    // Linux images for pods in the CRI tests: the sandbox's pause container
    // (no registry here to pull one from) and a sidecar with busybox's tools.
    let busybox = std::fs::read("/bin/busybox").context(
        "could not read /bin/busybox (package busybox-static; run scripts/install-prerequisites.sh)",
    )?;
    for (file, name, entrypoint) in [
        ("pause.tar", "localhost/wasmtime-custom/pause:latest", &["/bin/busybox", "sleep", "2147483647"][..]),
        ("busybox.tar", "localhost/wasmtime-custom/busybox:latest", &["/bin/busybox"][..]),
    ] {
        let layer = [
            oci::Entry::Dir { path: "bin/".into() },
            oci::Entry::File { path: "bin/busybox".into(), mode: 0o755, bytes: busybox.clone() },
        ];
        write_archive(&out.join(file), name, &oci::plain_image(name, oci_arch()?, &layer, entrypoint)?)?;
    }
    native_app_image(root, out)?;
    for image in images {
        let archive = if image.wasm_layer {
            oci::wasm_layer_image(image.name, &image.wasm)?
        } else {
            oci::plain_wasm_image(image.name, oci_arch()?, &image.wasm)?
        };
        write_archive(&out.join(image.file), image.name, &archive)?;
    }
    Ok(())
}

fn write_archive(path: &Path, name: &str, archive: &[u8]) -> Result<()> {
    std::fs::write(path, archive).with_context(|| format!("could not write {}", path.display()))?;
    println!("{}  {}  {} bytes  {}", path.display(), name, archive.len(), oci::sha256(archive));
    Ok(())
}

const INSTALLER: &str = "wasmtime-custom-node-installer";
const SHIM: &str = "containerd-shim-wasmtime-custom-v1";
const NATIVE_APP: &str = "order-app-native";
/// busybox applets the installer's `--restart-command` may need.
const SHELL_APPLETS: [&str; 6] = ["sh", "touch", "sleep", "rm", "cat", "test"];

/// The node installer's image, as the DaemonSet runs it.
fn installer_image(root: &Path, out: &Path) -> Result<()> {
    cargo(root, &["build", "--release", "--workspace"])?;
    let release = target_dir(root).join("release");
    let installer = release.join(INSTALLER);
    let files = vec![
        (format!("usr/local/bin/{INSTALLER}"), installer.clone()),
        (format!("usr/local/bin/{SHIM}"), release.join(SHIM)),
        ("bin/busybox".to_string(), PathBuf::from("/bin/busybox")),
    ];
    let mut layer = linux_layer(&installer, files, &["mnt/node-root", "tmp", "run"])?;
    for applet in SHELL_APPLETS {
        layer.push(oci::Entry::Symlink { path: format!("bin/{applet}"), target: "busybox".into() });
    }
    let name = "localhost/wasmtime-custom/node-installer:latest";
    let entrypoint = format!("/usr/local/bin/{INSTALLER}");
    let archive = oci::plain_image(name, oci_arch()?, &layer, &[&entrypoint])?;
    std::fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))?;
    write_archive(&out.join("node-installer.tar"), name, &archive)
}

/// The native baseline's image: `order-app-native` and the libraries it
/// loads, nothing else (as small as a distroless image of it would be).
fn native_app_image(root: &Path, out: &Path) -> Result<()> {
    let binary = target_dir(root).join("release").join(NATIVE_APP);
    let files = vec![(format!("usr/local/bin/{NATIVE_APP}"), binary.clone())];
    let layer = linux_layer(&binary, files, &["tmp"])?;
    let name = "localhost/wasmtime-custom/app-native:latest";
    let entrypoint = format!("/usr/local/bin/{NATIVE_APP}");
    let archive = oci::plain_image(name, oci_arch()?, &layer, &[&entrypoint])?;
    write_archive(&out.join("app-native.tar"), name, &archive)
}

/// A Linux image layer: `files` (path in the image, source on this machine),
/// the shared libraries `binary` loads at the paths `ldd` gives, and `dirs`,
/// with every parent folder before what it holds.
fn linux_layer(binary: &Path, mut files: Vec<(String, PathBuf)>, dirs: &[&str]) -> Result<Vec<oci::Entry>> {
    for library in libraries(binary)? {
        files.push((library.display().to_string().trim_start_matches('/').to_string(), library));
    }
    let mut folders: BTreeSet<String> = dirs.iter().map(|dir| dir.to_string()).collect();
    let mut entries = Vec::new();
    for (path, source) in &files {
        let bytes = std::fs::read(source).with_context(|| {
            format!("could not read {} (busybox comes from the busybox-static package)", source.display())
        })?;
        entries.push(oci::Entry::File { path: path.clone(), mode: 0o755, bytes });
        folders.insert(Path::new(path).parent().map(|p| p.display().to_string()).unwrap_or_default());
    }
    let all: BTreeSet<String> = folders
        .iter()
        .flat_map(|dir| Path::new(dir).ancestors().map(|a| a.display().to_string()).collect::<Vec<_>>())
        .filter(|dir| !dir.is_empty())
        .collect();
    let mut layer: Vec<oci::Entry> =
        all.into_iter().map(|path| oci::Entry::Dir { path: format!("{path}/") }).collect();
    layer.extend(entries);
    Ok(layer)
}

/// The shared libraries `binary` loads, as `ldd` resolves them.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("could not run ldd")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    // `cargo run` gave this process the variables of the xtask package
    // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Passed on, they differ from a
    // plain `cargo build` and dirty the build scripts that watch them (ring's
    // does): every build would then recompile half the workspace, twice.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command.current_dir(root).args(args).status().context("could not run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status}); run scripts/install-prerequisites.sh first", args.join(" "));
    }
    Ok(())
}

/// The OCI architecture of this machine: plain images are built for the
/// machine that builds them.
fn oci_arch() -> Result<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(Arch::Amd64),
        "aarch64" => Ok(Arch::ARM64),
        other => bail!("no OCI architecture name known for {other}"),
    }
}

/// Builds `app` and `test-guests` for `wasm32-wasip2`; returns where the
/// `.wasm` files are.
fn build_components(root: &Path) -> Result<PathBuf> {
    cargo(root, &["build", "--release", "--target", "wasm32-wasip2", "-p", "app", "-p", "test-guests"])?;
    Ok(target_dir(root).join("wasm32-wasip2/release"))
}
