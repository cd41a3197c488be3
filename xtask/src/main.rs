//! Project tasks that are not plain `cargo build`.
//!
//! - `cargo xtask images [--out DIR]` builds the Wasm components (release,
//!   `wasm32-wasip2`) and the workspace, and writes the OCI image archives
//!   for `ctr image import` into DIR (default `target/images`): the app
//!   (plain and wasm-layer), the native baseline (`app-native.tar`), the
//!   test guests, the large Python component (`python-http.tar`, built
//!   from `large-guest/` with componentize-py), and the Linux images of the
//!   CRI tests.
//! - `cargo xtask installer-image [--out DIR]` builds the shim and the
//!   installer for both node architectures (as `dist` does) and writes the
//!   node installer's image (`node-installer.tar`), an index of a
//!   `linux/amd64` and a `linux/arm64` image: the installer, the shim it
//!   installs, the libraries they load, and a busybox shell for
//!   `--restart-command`.
//! - `cargo xtask dist [--out DIR]` builds the shim and the installer for
//!   x86_64 and aarch64 Linux (release; aarch64 with Debian's cross linker)
//!   into DIR/amd64 and DIR/arm64 (default `target/dist`), and prints each
//!   binary's size, architecture, the libraries it loads and the newest
//!   glibc it needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use oci_spec::image::Arch;

mod elf;
mod guests;
mod large_guest;
mod oci;

const USAGE: &str = "usage: cargo xtask images [--out DIR] | cargo xtask installer-image [--out DIR] | cargo xtask dist [--out DIR]";

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
        ["dist"] => dist(root, &root.join("target/dist")),
        ["dist", "--out", dir] => dist(root, Path::new(dir)),
        _ => bail!("{USAGE}"),
    }
}

/// One image archive to write.
struct Image {
    file: &'static str,
    name: &'static str,
    kind: Kind,
    wasm: Vec<u8>,
}

enum Kind {
    /// A rootfs with the Wasm, for this machine's architecture (test images).
    Plain,
    /// The same, as an index for amd64 and arm64 nodes (the app, and the
    /// large component).
    PlainAllNodes,
    /// The Wasm as a layer of its own, architecture-free.
    WasmLayer,
}

fn images(root: &Path, out: &Path) -> Result<()> {
    // First: a missing componentize-py is then reported before the long builds.
    let python = large_guest::build(root, &target_dir(root).join("large-guest"))?;
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
    // The large component on its own too: for `serve`, and for the benchmark's compile times.
    let python_component = out.join("python-http.wasm");
    std::fs::write(&python_component, &python)
        .with_context(|| format!("could not write {}", python_component.display()))?;
    let test_http = read("test_guests.wasm")?;
    let test_command = read("guest-command.wasm")?;
    let truncated = app[..app.len() / 2].to_vec();

    let plain = |file, name, wasm| Image { file, name, kind: Kind::Plain, wasm };
    let images = [
        Image {
            file: "app.tar",
            name: "localhost/wasmtime-custom/app:latest",
            kind: Kind::PlainAllNodes,
            wasm: app.clone(),
        },
        Image {
            file: "app-wasm.tar",
            name: "localhost/wasmtime-custom/app:wasm",
            kind: Kind::WasmLayer,
            wasm: app,
        },
        Image {
            file: "python-http.tar",
            name: "localhost/wasmtime-custom/python-http:latest",
            kind: Kind::PlainAllNodes,
            wasm: python,
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
        let archive = match image.kind {
            Kind::WasmLayer => oci::wasm_layer_image(image.name, &image.wasm)?,
            Kind::PlainAllNodes => oci::plain_wasm_image_all(image.name, &image.wasm)?,
            Kind::Plain => oci::plain_wasm_image(image.name, oci_arch()?, &image.wasm)?,
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

/// The node installer's image, as the DaemonSet runs it: one image per node
/// architecture, in an index, so the same DaemonSet runs on amd64 and arm64
/// nodes.
fn installer_image(root: &Path, out: &Path) -> Result<()> {
    let builds = build_for_nodes(root)?;
    let mut platforms = Vec::new();
    for build in &builds {
        let installer = build.dir.join(INSTALLER);
        let files = vec![
            (format!("usr/local/bin/{INSTALLER}"), installer.clone()),
            (format!("usr/local/bin/{SHIM}"), build.dir.join(SHIM)),
            ("bin/busybox".to_string(), build.busybox.clone()),
        ];
        let mut layer = linux_layer(&installer, files, &["mnt/node-root", "tmp", "run"])?;
        for applet in SHELL_APPLETS {
            layer.push(oci::Entry::Symlink { path: format!("bin/{applet}"), target: "busybox".into() });
        }
        platforms.push((build.arch.clone(), layer));
    }
    let name = "localhost/wasmtime-custom/node-installer:latest";
    let entrypoint = format!("/usr/local/bin/{INSTALLER}");
    let platforms: Vec<(Arch, &[oci::Entry])> =
        platforms.iter().map(|(arch, layer)| (arch.clone(), layer.as_slice())).collect();
    let archive = oci::multi_arch_image(name, &platforms, &[&entrypoint])?;
    std::fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))?;
    write_archive(&out.join("node-installer.tar"), name, &archive)
}

/// The shim and the installer built for one node architecture.
struct NodeBuild {
    arch: Arch,
    /// Where the two binaries are.
    dir: PathBuf,
    /// A static busybox of that architecture.
    busybox: PathBuf,
}

/// Builds the shim and the installer for amd64 and arm64 nodes. This
/// machine's own architecture is the workspace's release build; the other
/// is cross-compiled (`.cargo/config.toml` names the linker).
fn build_for_nodes(root: &Path) -> Result<Vec<NodeBuild>> {
    let host = oci_arch()?;
    let mut builds = Vec::new();
    for (arch, triple) in
        [(Arch::Amd64, "x86_64-unknown-linux-gnu"), (Arch::ARM64, "aarch64-unknown-linux-gnu")]
    {
        let dir = if arch == host {
            cargo(root, &["build", "--release", "--workspace"])?;
            target_dir(root).join("release")
        } else {
            let packages = ["-p", "containerd-shim-wasmtime-custom", "-p", "node-installer"];
            cargo(root, &[&["build", "--release", "--target", triple][..], &packages[..]].concat())?;
            target_dir(root).join(triple).join("release")
        };
        // This machine's busybox-static for its own architecture; the other
        // one unpacked by scripts/install-prerequisites.sh.
        let busybox = if arch == host {
            PathBuf::from("/bin/busybox")
        } else {
            target_dir(root).join(format!("debian/busybox-{arch}/root/bin/busybox"))
        };
        builds.push(NodeBuild { arch, dir, busybox });
    }
    Ok(builds)
}

/// `cargo xtask dist`: both binaries for both node architectures, copied
/// to `out/<arch>/`, with what each needs.
fn dist(root: &Path, out: &Path) -> Result<()> {
    for build in build_for_nodes(root)? {
        let folder = out.join(build.arch.to_string());
        std::fs::create_dir_all(&folder).with_context(|| format!("could not create {}", folder.display()))?;
        for binary in [SHIM, INSTALLER] {
            let target = folder.join(binary);
            std::fs::copy(build.dir.join(binary), &target)
                .with_context(|| format!("could not copy {binary} to {}", target.display()))?;
            let needs = elf::read(&target)?;
            let size = std::fs::metadata(&target)?.len();
            let glibc =
                needs.glibc.map_or("none".to_string(), |(major, minor)| format!("GLIBC_{major}.{minor}"));
            println!(
                "{}  {}  {size} bytes  needs {} (glibc up to {glibc})",
                target.display(),
                needs.arch,
                needs.libraries.join(", ")
            );
        }
    }
    Ok(())
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
/// what `binary` loads (its interpreter and libraries, read from its ELF
/// headers, for its own architecture), and `dirs`, with every parent folder
/// before what it holds.
fn linux_layer(binary: &Path, mut files: Vec<(String, PathBuf)>, dirs: &[&str]) -> Result<Vec<oci::Entry>> {
    files.extend(elf::runtime_files(binary)?);
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

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = cargo_command(root).args(args).status().context("could not run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status}); run scripts/install-prerequisites.sh first", args.join(" "));
    }
    Ok(())
}

/// `cargo` in the workspace `root`, with none of the variables `cargo run`
/// set for xtask itself.
fn cargo_command(root: &Path) -> Command {
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
    command.current_dir(root);
    command
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
