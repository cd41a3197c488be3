//! The node installer against a real containerd: a private containerd whose
//! config lives in a fake node root (see `testbed::node`), restarted by the
//! installer through `--restart-command`, checked over CRI, then used.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use support::http;
use testbed::{Containerd, FakeNode, Paths, RUNC, Run, Version, free_port};

mod support;

const TEST_HTTP: &str = "localhost/wasmtime-custom/test-http:latest";

/// Runs the installer on `node` with `args`, restarting with `restart`,
/// waiting up to 30 s for containerd's health.
fn run_installer(node: &FakeNode, restart: &str, args: &[&str]) -> Result<Output> {
    run_installer_with_timeout(node, restart, args, 30)
}

fn run_installer_with_timeout(node: &FakeNode, restart: &str, args: &[&str], health: u32) -> Result<Output> {
    let paths = Paths::from_env()?;
    let shim = paths.shim()?;
    std::process::Command::new(paths.installer()?)
        .args(args)
        .arg("--host-root")
        .arg(node.root())
        .args(["--config", "/etc/containerd/config.toml", "--containerd-bin", "/usr/bin/containerd"])
        .args(["--socket", "/run/containerd/containerd.sock", "--health-timeout", &health.to_string()])
        .arg("--shim")
        .arg(&shim)
        .args(["--restart-command", restart])
        .env_remove("NODE_NAME")
        .output()
        .context("run the installer")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A fake node for containerd `version` and its containerd, running without the shim.
fn fake_node(version: Version) -> Result<(Paths, FakeNode, Containerd)> {
    let paths = Paths::from_env()?;
    let node = FakeNode::new(&paths, version)?;
    let containerd = node.start_containerd(&paths)?;
    Ok((paths, node, containerd))
}

fn installs_restarts_serves_and_uninstalls(version: Version) -> Result<()> {
    let (_paths, node, containerd) = fake_node(version)?;
    let restart = containerd.restart_command();
    let pid_before = containerd.pid()?;

    // First run: binary in place, config edited, containerd restarted and healthy.
    let first = run_installer(&node, &restart, &["install"])?;
    assert!(first.status.success(), "containerd {version}: {}", text(&first));
    let out = text(&first);
    assert!(out.contains("restarting containerd") && out.contains("containerd is healthy"), "{out}");
    assert_ne!(containerd.pid()?, pid_before, "containerd must have been restarted");
    let installed = std::fs::read_to_string(node.config())?;
    assert!(installed.starts_with(&node.original_config), "the original bytes stay as they were");
    assert!(node.bin_dir().join("containerd-shim-wasmtime-custom-v1").exists());

    // ctr finds the runtime by name on containerd's PATH and serves.
    containerd.import("test-http.tar", &[])?;
    let port = free_port()?;
    // Ids unique across the tests: the shim keeps its container state under
    // /run/containerd/wasmtime-custom/<namespace>/<id>, whichever containerd asks.
    let id = format!("after-install-{version}");
    let mut guest = containerd.run(Run::new(TEST_HTTP, &id).listen(port))?;
    guest.wait_listening(port)?;
    assert_eq!(http::get(port, "/")?.status, 200);
    guest.signal("SIGTERM")?;
    assert_eq!(guest.wait(Duration::from_secs(30))?, 0);

    // Second run: nothing changes, nothing restarts.
    let pid_installed = containerd.pid()?;
    let second = run_installer(&node, &restart, &["install"])?;
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("containerd not restarted"), "{}", text(&second));
    assert_eq!(containerd.pid()?, pid_installed, "an unchanged config must not restart containerd");
    assert_eq!(std::fs::read_to_string(node.config())?, installed);

    // status says it is all there.
    let status = run_installer(&node, &restart, &["status"])?;
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("containerd: healthy, knows wasmtime-custom"), "{}", text(&status));

    // A dry run of uninstall shows the diff and changes nothing.
    let dry = run_installer(&node, &restart, &["uninstall", "--dry-run"])?;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("-[plugins."), "{}", text(&dry));
    assert_eq!(std::fs::read_to_string(node.config())?, installed);

    // Uninstall: the original bytes, no shim, containerd healthy.
    let removed = run_installer(&node, &restart, &["uninstall"])?;
    assert!(removed.status.success(), "{}", text(&removed));
    assert_eq!(std::fs::read_to_string(node.config())?, node.original_config);
    assert!(!node.bin_dir().join("containerd-shim-wasmtime-custom-v1").exists());
    let leftovers: Vec<_> = std::fs::read_dir(node.root().join("etc/containerd"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(leftovers, ["config.toml"], "uninstall leaves nothing of its own next to the config");
    containerd.ctr_ok(&["version"])?;
    Ok(())
}

#[test]
fn installer_on_containerd_1_7_installs_restarts_serves_and_uninstalls() -> Result<()> {
    installs_restarts_serves_and_uninstalls(Version::V1_7)
}

#[test]
fn installer_on_containerd_2_1_installs_restarts_serves_and_uninstalls() -> Result<()> {
    installs_restarts_serves_and_uninstalls(Version::V2_1)
}

#[test]
fn a_failed_restart_rolls_the_config_back_byte_for_byte() -> Result<()> {
    let (_paths, node, containerd) = fake_node(Version::V1_7)?;
    // The first restart fails; the one after the rollback works.
    let marker = containerd.dir().join("restart-failed-once");
    let restart = format!(
        "if [ -e {m} ]; then {r}; else touch {m}; echo injected failure >&2; exit 1; fi",
        m = marker.display(),
        r = containerd.restart_command()
    );
    let run = run_installer(&node, &restart, &["install"])?;
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains("restored byte for byte"), "{}", text(&run));
    assert!(text(&run).contains("injected failure"), "the cause is reported: {}", text(&run));
    assert_eq!(std::fs::read_to_string(node.config())?, node.original_config);
    containerd.ctr_ok(&["version"])?;
    Ok(())
}

#[test]
fn containerd_up_without_the_runtime_is_rolled_back_too() -> Result<()> {
    let (_paths, node, containerd) = fake_node(Version::V1_7)?;
    // The restart brings containerd back, but on a config without the
    // runtime (as if the edit had not taken): CRI does not list the handler.
    let original = containerd.dir().join("original.toml");
    std::fs::write(&original, &node.original_config)?;
    let restart = format!(
        "cp {o} {c} && {r}",
        o = original.display(),
        c = node.config().display(),
        r = containerd.restart_command()
    );
    let run = run_installer_with_timeout(&node, &restart, &["install"], 5)?;
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains("does not know the runtime handler wasmtime-custom"), "{}", text(&run));
    assert!(text(&run).contains("restored byte for byte"), "{}", text(&run));
    assert_eq!(std::fs::read_to_string(node.config())?, node.original_config);
    containerd.ctr_ok(&["version"])?;
    Ok(())
}

#[test]
fn a_corrupt_or_symlinked_config_is_left_untouched() -> Result<()> {
    let paths = Paths::from_env()?;
    let node = FakeNode::new(&paths, Version::V1_7)?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node-installer/tests/fixtures/corrupt.toml");
    let corrupt = std::fs::read_to_string(fixture)?;
    std::fs::write(node.config(), &corrupt)?;
    let run = run_installer(&node, "true", &["install"])?;
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains("containerd does not accept its current config"), "{}", text(&run));
    assert_eq!(std::fs::read_to_string(node.config())?, corrupt);

    // A symlinked config is refused rather than replaced (the link's target
    // would be read through the installer's own filesystem).
    let real = node.root().join("etc/containerd/real.toml");
    std::fs::write(&real, &node.original_config)?;
    std::fs::remove_file(node.config())?;
    std::os::unix::fs::symlink("/etc/containerd/real.toml", node.config())?;
    let run = run_installer(&node, "true", &["install"])?;
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains("is a symbolic link (to /etc/containerd/real.toml)"), "{}", text(&run));
    assert_eq!(std::fs::read_to_string(&real)?, node.original_config);
    Ok(())
}

#[test]
fn the_installer_image_installs_as_the_daemonset_would() -> Result<()> {
    let (_paths, node, node_containerd) = fake_node(Version::V1_7)?;
    let pid_before = node_containerd.pid()?;
    // The installer's container runs in a containerd of its own: a `ctr run`
    // client in the foreground would lose its connection when the installer
    // restarts the containerd it runs under (the kubelet reconnects; ctr
    // does not).
    let runner = Containerd::start(Version::V1_6)?;
    runner.import("node-installer.tar", &[])?;

    // STAND-IN for systemd (this machine has no systemd to restart
    // containerd): the installer's restart command asks through a file in
    // the node root, and this thread restarts the node's containerd.
    let request = node.root().join("run/restart-request");
    let restart_command = node_containerd.restart_command();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let agent = {
        let (request, stop) = (request.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if request.exists() {
                    let status = std::process::Command::new("sh").args(["-c", &restart_command]).status();
                    assert!(status.is_ok_and(|s| s.success()), "the stand-in could not restart containerd");
                    std::fs::remove_file(&request).expect("remove the restart request");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let restart = "touch /mnt/node-root/run/restart-request && \
                   while test -e /mnt/node-root/run/restart-request; do sleep 0.1; done";
    let mut installer = runner.run(
        Run::new("localhost/wasmtime-custom/node-installer:latest", "node-installer")
            .runtime(RUNC)
            .privileged()
            .bind(&node.root(), "/mnt/node-root")
            // ctr replaces the entrypoint with the arguments (Kubernetes'
            // `args` would be appended to it): name the installer first.
            .args(&[
                "/usr/local/bin/wasmtime-custom-node-installer",
                "install",
                "--host-root",
                "/mnt/node-root",
            ])
            .args(&["--config", "/etc/containerd/config.toml"])
            .args(&["--containerd-bin", "/usr/bin/containerd", "--socket", "/run/containerd/containerd.sock"])
            .args(&["--restart-command", restart]),
    )?;
    let code = installer.wait(Duration::from_secs(120));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    agent.join().expect("the restart stand-in thread");
    assert_eq!(code?, 0, "{}", installer.output());
    assert!(installer.output().contains("containerd is healthy"), "{}", installer.output());
    assert_ne!(node_containerd.pid()?, pid_before, "the node's containerd was restarted");
    assert!(node.bin_dir().join("containerd-shim-wasmtime-custom-v1").exists());
    assert!(std::fs::read_to_string(node.config())?.contains("runtimes.wasmtime-custom]"));
    Ok(())
}
