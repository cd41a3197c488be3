//! The node installer against a real containerd: a private containerd whose
//! config lives in a fake node root (see `testbed::node`), restarted by the
//! installer through `--restart-command`, checked over CRI, then used;
//! upgraded under a serving container, and uninstalled under a running
//! Wasm pod.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use node_installer::cri::{self, RuntimeClient};
use support::http;
use testbed::paths::SHIM;
use testbed::{Containerd, FakeNode, InstalledNode, Paths, RUNC, Run, Version, free_port, kubelet, poll};

mod support;

const TEST_HTTP: &str = "localhost/wasmtime-custom/test-http:latest";

/// Runs the installer on `node` with `args`, restarting with `restart`,
/// waiting up to 30 s for containerd's health.
fn run_installer(node: &FakeNode, restart: &str, args: &[&str]) -> Result<Output> {
    run_installer_with(node, restart, &Paths::from_env()?.shim()?, 30, args)
}

/// Like [`run_installer`], installing `shim` and waiting up to `health`
/// seconds for containerd's health.
fn run_installer_with(
    node: &FakeNode,
    restart: &str,
    shim: &Path,
    health: u32,
    args: &[&str],
) -> Result<Output> {
    let paths = Paths::from_env()?;
    std::process::Command::new(paths.installer()?)
        .args(args)
        .arg("--host-root")
        .arg(node.root())
        .args(["--config", "/etc/containerd/config.toml", "--containerd-bin", "/usr/bin/containerd"])
        .args(["--socket", "/run/containerd/containerd.sock", "--health-timeout", &health.to_string()])
        .arg("--shim")
        .arg(shim)
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
    // The plain image's Wasm was compiled once and kept in the node's cache.
    assert!(guest.output().contains("kept in the node's compile cache"), "{}", guest.output());
    let cache = node.root().join(testbed::node::COMPILE_CACHE);
    assert_eq!(cache_entries(&cache)?, 1, "one compiled entry in {}", cache.display());

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
    assert!(text(&removed).contains("removed the compile cache"), "{}", text(&removed));
    assert!(!node.root().join("var/lib/wasmtime-custom").exists(), "the cache and the state are gone");
    let leftovers: Vec<_> = std::fs::read_dir(node.root().join("etc/containerd"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(leftovers, ["config.toml"], "uninstall leaves nothing of its own next to the config");
    containerd.ctr_ok(&["version"])?;
    Ok(())
}

/// The compiled entries in the shim's compile cache folder.
fn cache_entries(cache: &std::path::Path) -> Result<usize> {
    let names = std::fs::read_dir(cache)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()));
    Ok(names.collect::<std::io::Result<Vec<_>>>()?.iter().filter(|n| n.ends_with(".cwasm")).count())
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
fn a_shim_built_for_another_architecture_is_refused_before_anything_changes() -> Result<()> {
    let (paths, node, containerd) = fake_node(Version::V1_7)?;
    let other = if std::env::consts::ARCH == "aarch64" { "amd64" } else { "arm64" };
    let foreign = paths.dist(other)?.join("containerd-shim-wasmtime-custom-v1");
    let run = run_installer_with(&node, &containerd.restart_command(), &foreign, 30, &["install"])?;
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let built = if other == "arm64" { "aarch64" } else { "x86_64" };
    let message = format!("is built for {built}, but this node is {}", std::env::consts::ARCH);
    assert!(text(&run).contains(&message), "{}", text(&run));
    assert_eq!(std::fs::read_to_string(node.config())?, node.original_config, "the config is untouched");
    assert!(
        !node.root().join("usr/local/bin/containerd-shim-wasmtime-custom-v1").exists(),
        "no shim was written"
    );
    Ok(())
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
    let run = run_installer_with(&node, &restart, &Paths::from_env()?.shim()?, 5, &["install"])?;
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

/// The inode of the executable process `pid` runs (the file it was started
/// from, even when that path names another file since).
fn exe_inode(pid: u32) -> Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/exe")).with_context(|| format!("stat /proc/{pid}/exe"))?.ino())
}

/// The shim process serving container `id` of `containerd`: the parent of
/// the container's task (a shim per container outside Kubernetes).
fn shim_of(containerd: &Containerd, id: &str) -> Result<u32> {
    let task = containerd.task_pid(id)?;
    let status = std::fs::read_to_string(format!("/proc/{task}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:")?.trim().parse().ok())
        .with_context(|| format!("no PPid in /proc/{task}/status"))
}

/// Sends `GET /` to 127.0.0.1:`port` again and again, a connection each,
/// from a thread of its own until [`Requests::finish`] (or drop), counting
/// the 200s and keeping every failure with what it was.
struct Requests {
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Requests {
    fn start(port: u16) -> Requests {
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answered, stop) = (answered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match http::get(port, "/") {
                        Ok(reply) if reply.status == 200 => drop(answered.fetch_add(1, Ordering::SeqCst)),
                        Ok(reply) => failures.push(format!("status {}: {}", reply.status, reply.body)),
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                }
                failures
            })
        };
        Requests { answered, stop, thread: Some(thread) }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Stops; the number of 200s and the failures.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(failures)) => failures,
            _ => vec!["the request thread panicked".into()],
        };
        (self.answered(), failures)
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An upgrade as the DaemonSet's new image does it: the installer run again
/// with a different shim. The binary is renamed over the old one, so the
/// container started before keeps its shim (the old inode, now unlinked)
/// and serves every request throughout; containerd is not restarted (the
/// config did not change); the next container runs the new file.
#[test]
fn an_upgrade_swaps_the_shim_under_a_serving_container_and_the_next_one_runs_the_new_binary() -> Result<()> {
    let (paths, node, containerd) = fake_node(Version::V1_7)?;
    let restart = containerd.restart_command();
    let installed = node.bin_dir().join(SHIM);
    let first = run_installer(&node, &restart, &["install"])?;
    assert!(first.status.success(), "{}", text(&first));
    let old_inode = std::fs::metadata(&installed)?.ino();

    containerd.import("test-http.tar", &[])?;
    let old_port = free_port()?;
    let mut old = containerd.run(Run::new(TEST_HTTP, "upgrade-old").listen(old_port))?;
    old.wait_listening(old_port)?;
    let old_shim = shim_of(&containerd, "upgrade-old")?;
    assert_eq!(exe_inode(old_shim)?, old_inode, "the container's shim runs the installed file");

    // The new version: the shim with bytes appended after its ELF image. The
    // loader maps only what the program headers name, so it runs as before;
    // its sha256 differs, which is what the installer compares.
    let new_dir = tempfile::tempdir()?;
    let new_shim = new_dir.path().join(SHIM);
    let mut new_bytes = std::fs::read(paths.shim()?)?;
    new_bytes.extend_from_slice(b"\nwasmtime-custom upgrade test: a newer build\n");
    std::fs::write(&new_shim, &new_bytes)?;
    std::fs::set_permissions(&new_shim, std::fs::Permissions::from_mode(0o755))?;
    let version = std::process::Command::new(&new_shim).arg("-v").output()?;
    assert!(version.status.success(), "the new shim runs: {}", text(&version));
    assert!(String::from_utf8_lossy(&version.stdout).contains("Version:"), "{}", text(&version));

    let containerd_pid = containerd.pid()?;
    let requests = Requests::start(old_port);
    poll::until("requests to the old container", Duration::from_secs(10), || {
        (requests.answered() > 0).then_some(())
    })?;
    let upgrade = run_installer_with(&node, &restart, &new_shim, 30, &["install"])?;
    // A few more once the new file is in place.
    let after_upgrade = requests.answered() + 20;
    poll::until("requests after the upgrade", Duration::from_secs(10), || {
        (requests.answered() >= after_upgrade).then_some(())
    })?;
    let (answered, failures) = requests.finish();
    assert!(upgrade.status.success(), "{}", text(&upgrade));
    let out = text(&upgrade);
    assert!(out.contains("shim installed: "), "{out}");
    assert!(out.contains("containerd not restarted"), "{out}");
    assert_eq!(containerd.pid()?, containerd_pid, "a new shim alone restarts nothing");
    assert!(
        failures.is_empty(),
        "{} of {answered} requests failed during the upgrade: {failures:#?}",
        failures.len()
    );
    println!("upgrade: {answered} requests to the old container, none failed");

    // Replaced by a rename: a new inode with the new bytes, nothing left beside it.
    let new_inode = std::fs::metadata(&installed)?.ino();
    assert_ne!(new_inode, old_inode, "the file was replaced, not written in place");
    assert!(std::fs::read(&installed)? == new_bytes, "the node has the new shim's bytes");
    let files: Vec<String> = std::fs::read_dir(node.bin_dir())?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(files, [SHIM], "no temp file is left next to the shim");

    // The old container keeps its shim: the old inode, unlinked, still serving.
    let old_exe = std::fs::read_link(format!("/proc/{old_shim}/exe"))?;
    assert!(old_exe.to_string_lossy().ends_with(" (deleted)"), "{}", old_exe.display());
    assert_eq!(exe_inode(old_shim)?, old_inode);
    assert_eq!(http::get(old_port, "/")?.status, 200);

    // The next container runs the new file.
    let new_port = free_port()?;
    let mut new = containerd.run(Run::new(TEST_HTTP, "upgrade-new").listen(new_port))?;
    new.wait_listening(new_port)?;
    let new_shim_pid = shim_of(&containerd, "upgrade-new")?;
    assert_eq!(exe_inode(new_shim_pid)?, new_inode, "the next container's shim runs the new file");
    assert_eq!(http::get(new_port, "/")?.status, 200);

    for container in [&mut old, &mut new] {
        container.signal("SIGTERM")?;
        assert_eq!(container.wait(Duration::from_secs(30))?, 0, "{}", container.output());
    }
    Ok(())
}

/// Runs pod `namespace/name` on the wasmtime-custom handler, as the kubelet
/// would over CRI, with one test-http container `http` serving on port
/// 8080 of the pod's IP; the pod's id and IP once it serves.
async fn run_wasm_pod(
    client: &mut RuntimeClient,
    namespace: &str,
    name: &str,
    logs: &Path,
) -> Result<(String, String)> {
    let (pod, sandbox) = kubelet::run_pod(client, namespace, name, logs).await?;
    let config = kubelet::container_config(
        "http",
        kubelet::image(TEST_HTTP),
        &[("WASMTIME_CUSTOM_LISTEN", "0.0.0.0:8080".into())],
        &[],
    );
    kubelet::start_container(client, &pod, &sandbox, config).await?;
    let ip = kubelet::pod_ip(client, &pod).await?;
    poll::until_async(&format!("the pod to serve on {ip}:8080"), Duration::from_secs(30), async || {
        Ok(tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.ok().map(drop))
    })
    .await?;
    Ok((pod, ip))
}

/// `uninstall ARGS` on the installed node, as `InstalledNode` installed it
/// (the installer on this host, with the node's real paths).
fn run_uninstall(installed: &InstalledNode, args: &[&str]) -> Result<Output> {
    installed
        .installer(&Paths::from_env()?, "uninstall")?
        .args(args)
        .args(["--health-timeout", "30"])
        .output()
        .context("run the installer")
}

/// A node the node installer installed, with pod `shop/orders-api` running
/// on the runtime (its container `http` serving on port 8080 of the pod's IP).
struct NodeWithPod {
    installed: InstalledNode,
    pod: String,
    ip: String,
    _logs: tempfile::TempDir,
}

impl NodeWithPod {
    async fn start() -> Result<NodeWithPod> {
        let installed = InstalledNode::start(&Paths::from_env()?, Version::V1_7)?;
        for archive in ["pause.tar", "test-http.tar"] {
            installed.containerd.import_into("k8s.io", archive, &[])?;
        }
        let socket = installed.node.socket();
        cri::wait_healthy(&socket, Some("wasmtime-custom"), Duration::from_secs(30)).await?;
        let logs = tempfile::tempdir()?;
        let (pod, ip) =
            run_wasm_pod(&mut cri::connect(&socket).await?, "shop", "orders-api", logs.path()).await?;
        let node = NodeWithPod { installed, pod, ip, _logs: logs };
        node.serves()?;
        Ok(node)
    }

    /// The pod answers `GET /` with 200.
    fn serves(&self) -> Result<()> {
        let reply = http::call("GET", &format!("http://{}:8080/", self.ip), "", &[])?;
        if reply.status != 200 {
            bail!("the pod answered {}: {}", reply.status, reply.body);
        }
        Ok(())
    }

    fn shim(&self) -> std::path::PathBuf {
        self.installed.node.bin_dir().join(SHIM)
    }

    /// `err` with the end of containerd's log.
    fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        err.context(format!("containerd 1.7's log ends with:\n{}", self.installed.containerd.log_tail(200)))
    }
}

/// Uninstall under a running Wasm pod names the pod by namespace/name and
/// refuses, changing nothing; once the pod is deleted, it removes the
/// runtime and the shim.
#[tokio::test(flavor = "current_thread")]
async fn uninstall_names_the_running_wasm_pod_refuses_and_finishes_once_it_is_deleted_on_containerd_1_7()
-> Result<()> {
    let node = NodeWithPod::start().await?;
    refuse_then_finish(&node).await.map_err(|e| node.explain(e))
}

async fn refuse_then_finish(node: &NodeWithPod) -> Result<()> {
    let (config, containerd) = (node.installed.node.config(), &node.installed.containerd);
    let registered = std::fs::read_to_string(&config)?;
    let containerd_pid = containerd.pid()?;

    // A dry run names it, changes nothing, and says uninstall would stop.
    let dry = run_uninstall(&node.installed, &["--dry-run"])?;
    let out = text(&dry);
    assert!(dry.status.success(), "{out}");
    assert!(out.contains("shop/orders-api (containers: http)"), "{out}");
    assert!(out.contains("uninstall would stop here unless given --force"), "{out}");

    // Refused: the pod is named, nothing changes, the pod serves on.
    let refused = run_uninstall(&node.installed, &[])?;
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{out}");
    assert!(
        out.contains(
            "wasmtime-custom is still in use on this node: Wasm pods shop/orders-api (containers: http); \
             shim processes (pids "
        ),
        "{out}"
    );
    assert!(out.contains("Nothing was changed") && out.contains("pass --force"), "{out}");
    assert_eq!(std::fs::read_to_string(&config)?, registered, "the config is as it was");
    assert!(node.shim().exists(), "the shim is still there");
    assert_eq!(containerd.pid()?, containerd_pid, "containerd was not restarted");
    node.serves()?;
    println!("uninstall under a running pod:\n{out}");

    // The pod is deleted (the kubelet's calls); uninstall then finishes.
    let socket = node.installed.node.socket();
    kubelet::delete_pod(&mut cri::connect(&socket).await?, &node.pod).await?;
    let done = poll::until_ok("uninstall to find nothing running", Duration::from_secs(30), || {
        let run = run_uninstall(&node.installed, &[])?;
        Ok(run.status.success().then_some(run))
    })?;
    let out = text(&done);
    assert!(out.contains("nothing runs on wasmtime-custom here"), "{out}");
    assert_eq!(std::fs::read_to_string(&config)?, node.installed.node.original_config);
    assert!(!node.shim().exists(), "{out}");
    let health = cri::wait_healthy(&socket, None, Duration::from_secs(30)).await?;
    assert!(!health.handlers.iter().any(|h| h == "wasmtime-custom"), "{:?}", health.handlers);
    Ok(())
}

/// `uninstall --force` under a running Wasm pod names it, removes the
/// runtime and restarts containerd; the pod serves on, and the shim binary
/// stays while its shim runs.
#[tokio::test(flavor = "current_thread")]
async fn uninstall_force_removes_the_runtime_under_a_running_wasm_pod_and_keeps_its_shim_on_containerd_1_7()
-> Result<()> {
    let node = NodeWithPod::start().await?;
    force(&node).await.map_err(|e| node.explain(e))
}

async fn force(node: &NodeWithPod) -> Result<()> {
    let containerd_pid = node.installed.containerd.pid()?;
    let forced = run_uninstall(&node.installed, &["--force"])?;
    let out = text(&forced);
    assert!(forced.status.success(), "{out}");
    assert!(
        out.contains("shop/orders-api (containers: http)") && out.contains("going ahead (--force)"),
        "{out}"
    );
    assert!(out.contains(&format!("keeping {}: running shims use it", node.shim().display())), "{out}");
    assert_eq!(std::fs::read_to_string(node.installed.node.config())?, node.installed.node.original_config);
    assert_ne!(node.installed.containerd.pid()?, containerd_pid, "containerd was restarted");
    let health = cri::wait_healthy(&node.installed.node.socket(), None, Duration::from_secs(30)).await?;
    assert!(!health.handlers.iter().any(|h| h == "wasmtime-custom"), "{:?}", health.handlers);
    assert!(node.shim().exists(), "the shim stays while a pod runs it");
    node.serves()?;
    println!("uninstall --force under a running pod:\n{out}");
    kubelet::delete_pod(&mut cri::connect(&node.installed.node.socket()).await?, &node.pod).await?;
    remove_forgotten_shims(node)
}

/// containerd forgets a Wasm container when it restarts (it asks the shim
/// for the task's pids, which the shim does not answer, and takes the shim
/// for a leaked one; README, "Known limits"), so deleting the pod leaves
/// the container's shim running and its rootfs mounted. Removed here as an
/// operator would: the shim killed by pid, the mounts under the node undone.
fn remove_forgotten_shims(node: &NodeWithPod) -> Result<()> {
    let host = node_installer::node_root::NodeRoot::new("/");
    // Its container processes run the shim binary too, and outlive it:
    // killed in turn as they show up.
    poll::until_ok("the forgotten shims to exit", Duration::from_secs(10), || {
        let running = node_installer::binary::processes_running(&host, &node.shim());
        for pid in &running {
            // One may have exited since it was listed.
            let _ = testbed::tool::run("kill", &["-KILL", &pid.to_string()]);
        }
        Ok(running.is_empty().then_some(()))
    })?;
    let under = format!("{}/", node.installed.node.root().display());
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&under))
        .collect();
    points.sort_unstable_by(|a, b| b.cmp(a));
    for point in points {
        testbed::tool::run("umount", &["-l", point])?;
    }
    Ok(())
}
