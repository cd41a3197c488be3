//! The binaries for both node architectures (`cargo xtask dist`): what they
//! need from a node, checked in their ELF headers, and the arm64 ones run
//! on this x86_64 machine under qemu-user, as far as emulation allows.
//!
//! Emulation cannot create containers (qemu-user implements neither
//! `clone3` nor new namespaces for the guest), so the arm64 shim proves
//! itself with `serve`: the same engine and server as in a container,
//! answering the order contract.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use goblin::elf::Elf;
use goblin::elf::header::{EM_AARCH64, EM_X86_64};
use support::dapr_recorder::{Call, DaprRecorder};
use support::http;
use testbed::{Paths, free_port};

mod support;

const SHIM: &str = "containerd-shim-wasmtime-custom-v1";
const INSTALLER: &str = "wasmtime-custom-node-installer";
/// The oldest glibc of the AKS node images: Ubuntu 22.04 (2.35); Ubuntu
/// 24.04 has 2.39 and Azure Linux 3 2.38.
const GLIBC_FLOOR: (u32, u32) = (2, 35);
/// What a binary may load from the node: glibc's own libraries (its
/// loader included), the compiler's runtime, and libseccomp
/// (libcontainer's seccomp filters).
const NODE_LIBRARIES: [&str; 6] = [
    "libc.so.6",
    "libm.so.6",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libgcc_s.so.1",
    "libseccomp.so.2",
];

const EXPRESS: &str = r#"{"orderId":42,"orderGuid":"0b6c","firstName":"Ada","delivery":"express","items":[{"orderItemId":1,"sku":"4f1c2a9e-77b1","quantity":2}]}"#;
const EXPRESS_OUT: &str = r#"{"orderId":42,"orderGuid":"0b6c","firstName":"Ada","delivery":"Express","items":[{"orderItemId":1,"sku":"4f1c2a9e-77b1","quantity":2}]}"#;

/// The newest `GLIBC_x.y` a binary asks for, and its machine and libraries.
fn elf_needs(path: &std::path::Path) -> Result<(u16, Vec<String>, (u32, u32))> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("{} is not ELF", path.display()))?;
    let mut newest = (0, 0);
    let verneed = elf.verneed.as_ref().context("no version needs: not a glibc binary?")?;
    for need in verneed.iter() {
        for aux in need.iter() {
            let name = elf.dynstrtab.get_at(aux.vna_name).unwrap_or_default();
            if let Some((major, minor)) = name.strip_prefix("GLIBC_").and_then(|v| v.split_once('.')) {
                let minor = minor.split('.').next().unwrap_or_default();
                newest = newest.max((major.parse()?, minor.parse()?));
            }
        }
    }
    Ok((elf.header.e_machine, elf.libraries.iter().map(|l| l.to_string()).collect(), newest))
}

#[test]
fn both_architectures_run_on_the_oldest_aks_node_glibc_and_need_only_its_libraries() -> Result<()> {
    let paths = Paths::from_env()?;
    for (arch, machine) in [("amd64", EM_X86_64), ("arm64", EM_AARCH64)] {
        for binary in [SHIM, INSTALLER] {
            let path = paths.dist(arch)?.join(binary);
            let (found, libraries, glibc) = elf_needs(&path)?;
            assert_eq!(found, machine, "{} is not built for {arch}", path.display());
            assert!(
                glibc <= GLIBC_FLOOR,
                "{} needs GLIBC_{}.{}, newer than Ubuntu 22.04's {}.{}",
                path.display(),
                glibc.0,
                glibc.1,
                GLIBC_FLOOR.0,
                GLIBC_FLOOR.1
            );
            for library in &libraries {
                assert!(NODE_LIBRARIES.contains(&library.as_str()), "{} loads {library}", path.display());
            }
            eprintln!(
                "{arch} {binary}: GLIBC_{}.{} at most, loads {}",
                glibc.0,
                glibc.1,
                libraries.join(", ")
            );
        }
    }
    Ok(())
}

/// Runs an arm64 program under qemu-user.
fn arm64(paths: &Paths, binary: &str) -> Result<Command> {
    let mut command = Command::new(paths.qemu_aarch64()?);
    command.arg(paths.dist("arm64")?.join(binary));
    Ok(command)
}

/// The blobs of an OCI image archive, by digest.
fn blobs(archive: &std::path::Path) -> Result<std::collections::HashMap<String, Vec<u8>>> {
    let mut blobs = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        let name = path.strip_prefix("blobs/sha256/").map_or(path.clone(), |hex| format!("sha256:{hex}"));
        blobs.insert(name, bytes);
    }
    Ok(blobs)
}

#[test]
fn the_installer_image_carries_a_self_sufficient_arm64_image_that_runs_under_emulation() -> Result<()> {
    let paths = Paths::from_env()?;
    let blobs = blobs(&paths.image("node-installer.tar")?)?;
    let json = |digest: &serde_json::Value| -> Result<serde_json::Value> {
        let digest = digest.as_str().context("a digest")?;
        Ok(serde_json::from_slice(blobs.get(digest).with_context(|| format!("no blob {digest}"))?)?)
    };
    let layout: serde_json::Value = serde_json::from_slice(&blobs["index.json"])?;
    let index = json(&layout["manifests"][0]["digest"])?;
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .context("an image index")?
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let arm64 = json(&index["manifests"][1]["digest"])?;
    let layer = arm64["layers"][0]["digest"].as_str().context("a layer")?;
    // The arm64 image's rootfs alone, as an arm64 node would unpack it.
    let rootfs = tempfile::tempdir()?;
    tar::Archive::new(blobs[layer].as_slice()).unpack(rootfs.path())?;
    for file in [format!("usr/local/bin/{INSTALLER}"), format!("usr/local/bin/{SHIM}"), "bin/busybox".into()]
    {
        let bytes = std::fs::read(rootfs.path().join(&file))?;
        let machine = Elf::parse(&bytes)?.header.e_machine;
        assert_eq!(machine, EM_AARCH64, "{file} in the arm64 image");
    }
    // Everything the arm64 installer loads is in the image, for arm64. (The
    // shim it carries runs on the node, with the node's libraries: the
    // installer checks that it does.)
    for library in [
        "lib/ld-linux-aarch64.so.1",
        "lib/aarch64-linux-gnu/libc.so.6",
        "lib/aarch64-linux-gnu/libm.so.6",
        "lib/aarch64-linux-gnu/libgcc_s.so.1",
    ] {
        let bytes =
            std::fs::read(rootfs.path().join(library)).with_context(|| format!("{library} in the image"))?;
        assert_eq!(Elf::parse(&bytes)?.header.e_machine, EM_AARCH64, "{library}");
    }
    // qemu's -L makes the image's folders the program's / (the loader and
    // libraries above are found there first).
    let output = Command::new(paths.qemu_aarch64()?)
        .arg("-L")
        .arg(rootfs.path())
        .arg(rootfs.path().join("usr/local/bin").join(INSTALLER))
        .arg("--version")
        .output()?;
    assert!(output.status.success(), "the installer from the arm64 image: {output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
    let shell = Command::new(paths.qemu_aarch64()?)
        .arg("-L")
        .arg(rootfs.path())
        .arg(rootfs.path().join("bin/busybox"))
        .args(["sh", "-c", "echo restart-command-shell"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&shell.stdout).trim(), "restart-command-shell", "{shell:?}");
    Ok(())
}

#[test]
fn the_arm64_binaries_answer_their_version_under_emulation() -> Result<()> {
    let paths = Paths::from_env()?;
    for (binary, flag) in [(SHIM, "--version"), (SHIM, "-v"), (INSTALLER, "--version")] {
        let output = arm64(&paths, binary)?.arg(flag).output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{binary} {flag}: {output:?}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{binary} {flag}: {text}");
    }
    Ok(())
}

#[test]
fn the_arm64_shim_serves_the_order_contract_under_emulation() -> Result<()> {
    let paths = Paths::from_env()?;
    let dapr = DaprRecorder::start()?;
    let port = free_port()?;
    let mut shim = arm64(&paths, SHIM)?
        .arg("serve")
        .arg(paths.image("app.wasm")?)
        .env_clear()
        .env("WASMTIME_CUSTOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("DAPR_URL", dapr.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // Compiling the component under emulation takes a while.
    let listening = testbed::poll::until_ok("the arm64 shim to listen", Duration::from_secs(180), || {
        if let Some(status) = shim.try_wait()? {
            let mut stderr = String::new();
            std::io::Read::read_to_string(shim.stderr.as_mut().context("stderr")?, &mut stderr)?;
            anyhow::bail!("the arm64 shim exited ({status}) before listening:\n{stderr}");
        }
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop))
    });
    if let Err(e) = listening {
        let _ = shim.kill();
        return Err(e);
    }
    let health = http::get(port, "/healthz")?;
    ensure!(health.status == 200 && health.body == "Healthy", "{health:?}");
    let sent = http::post(port, "/q-order-ingress", EXPRESS)?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let expected = format!(r#"{{"data":{EXPRESS_OUT},"operation":"create"}}"#);
    assert_eq!(dapr.take_calls(), [Call::post("/v1.0/bindings/q-order-express-out", expected)]);
    let refused = http::post(port, "/q-order-ingress", "{not json")?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    Command::new("kill").arg("-TERM").arg(shim.id().to_string()).status()?;
    let status =
        testbed::poll::until_ok("the arm64 shim to exit", Duration::from_secs(60), || Ok(shim.try_wait()?))?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
