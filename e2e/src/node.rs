//! A fake node for the installer's and the CRI tests: a folder that stands
//! in for a node's root filesystem (the DaemonSet mounts the real one at
//! `/mnt/node-root`), holding the node's containerd binary, the libraries
//! it and the shim need (so both run chrooted into it, as on a node), and
//! containerd's config with CRI enabled: the project's pause image as the
//! sandbox image, network namespaces under containerd's state folder, and a
//! CNI bridge network of its own (Debian's containernetworking-plugins). The
//! containerd reading that config runs for real, outside the chroot.
//!
//! `restrict_oom_score_adj` is set because root on these machines lacks
//! CAP_SYS_RESOURCE: the kubelet's -998 for a pause container cannot be
//! written here by any runtime (runc included), so containerd raises it to
//! its own score, as it does for rootless setups.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::containerd::{Containerd, workspace_root};

pub struct FakeNode {
    dir: TempDir,
    /// The config as the test wrote it, to compare after uninstall and rollback.
    pub original_config: String,
    /// This node's pod network: bridge `wtcbr<n>`, subnet 10.213.<n>.0/24.
    network: u8,
}

/// The CRI sandbox image (built by `cargo xtask images`, imported by the tests).
pub const PAUSE_IMAGE: &str = "localhost/wasmtime-custom/pause:latest";
/// Where Debian's containernetworking-plugins puts the CNI plugins.
const CNI_BIN: &str = "/usr/lib/cni";

/// Pod networks of the nodes of this test process, one each.
static NEXT_NETWORK: AtomicU8 = AtomicU8::new(1);

impl FakeNode {
    /// A node running containerd `version` ("1.7": config version 2;
    /// "2.1": config version 3).
    pub fn new(version: &str) -> Result<FakeNode> {
        let dir = tempfile::Builder::new().prefix("wtc-node-").tempdir_in("/tmp")?;
        let network = NEXT_NETWORK.fetch_add(1, Ordering::SeqCst);
        let mut node = FakeNode { dir, original_config: String::new(), network };
        let containerd = crate::containerd::bin_dir(version)?.join("containerd");
        node.copy_in(&containerd, Path::new("/usr/bin/containerd"))?;
        let shim = workspace_root().join("target/release/containerd-shim-wasmtime-custom-v1");
        for binary in [&containerd, &shim] {
            for library in libraries(binary)? {
                node.copy_in(&library, &library)?;
            }
        }
        for dir in
            ["usr/local/bin", "etc/containerd", "etc/cni/net.d", "run/containerd", "var/lib/containerd"]
        {
            std::fs::create_dir_all(node.root().join(dir))?;
        }
        std::fs::write(node.root().join("etc/cni/net.d/10-wtc.conflist"), node.cni_config())?;
        let config = node.config_text(version);
        std::fs::write(node.root().join("etc/containerd/config.toml"), &config)?;
        node.original_config = config;
        Ok(node)
    }

    /// The node's root folder (`--host-root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's config in the test's view.
    pub fn config(&self) -> PathBuf {
        self.root().join("etc/containerd/config.toml")
    }

    /// containerd's socket in the test's view; `/run/containerd/containerd.sock` on the node.
    pub fn socket(&self) -> PathBuf {
        self.root().join("run/containerd/containerd.sock")
    }

    /// Where the installer puts the shim, in the test's view (on the node:
    /// `/usr/local/bin`, which is on containerd's PATH).
    pub fn bin_dir(&self) -> PathBuf {
        self.root().join("usr/local/bin")
    }

    fn copy_in(&self, from: &Path, node_path: &Path) -> Result<()> {
        let to = self.root().join(node_path.strip_prefix("/").unwrap_or(node_path));
        std::fs::create_dir_all(to.parent().context("a file has a folder")?)?;
        std::fs::copy(from, &to).with_context(|| format!("copy {} to the fake node", from.display()))?;
        Ok(())
    }

    /// The pod network's gateway on the host (the bridge's address).
    pub fn gateway(&self) -> String {
        format!("10.213.{}.1", self.network)
    }

    fn bridge(&self) -> String {
        format!("wtcbr{}", self.network)
    }

    fn cni_config(&self) -> String {
        let root = self.root();
        format!(
            r#"{{"cniVersion":"1.0.0","name":"wtc-pods","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.213.{n}.0/24"}}]],"dataDir":"{root}/var/lib/cni/networks"}}}}]}}"#,
            bridge = self.bridge(),
            n = self.network,
            root = root.display(),
        )
    }

    fn config_text(&self, version: &str) -> String {
        let root = self.root();
        let root = root.display();
        let (header, cri, cri_settings) = match version {
            "2.1" => (
                "version = 3",
                "'io.containerd.cri.v1.runtime'",
                format!(
                    "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = \"{PAUSE_IMAGE}\"\n\n\
                     [plugins.'io.containerd.cri.v1.runtime']\n  netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\n\
                     [plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"{CNI_BIN}\"]\n  conf_dir = \"{root}/etc/cni/net.d\"\n"
                ),
            ),
            _ => (
                "version = 2",
                "\"io.containerd.grpc.v1.cri\"",
                format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{CNI_BIN}\"\n  conf_dir = \"{root}/etc/cni/net.d\"\n"
                ),
            ),
        };
        format!(
            "# The fake node's containerd config (written by the test).\n{header}\n\
             root = \"{root}/var/lib/containerd\"\nstate = \"{root}/run/containerd/state\"\n\n\
             [grpc]\n  address = \"{root}/run/containerd/containerd.sock\"\n\n{cri_settings}\n\
             [plugins.{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
             [plugins.{cri}.containerd.runtimes.runc.options]\n  SystemdCgroup = false\n"
        )
    }
}

/// A fake node whose containerd got the wasmtime-custom runtime from the
/// node installer. The installer runs on this host directly (host root `/`)
/// with the node's real paths: the containerd reading the config is not
/// chrooted, so `runtime_path` must be a real path.
pub fn installed(version: &'static str) -> Result<(FakeNode, Containerd)> {
    let node = FakeNode::new(version)?;
    let containerd = Containerd::start_with_config(version, &node.config(), &node.socket(), &node.bin_dir())?;
    let installer = workspace_root().join("target/release/wasmtime-custom-node-installer");
    let output = Command::new(&installer)
        .arg("install")
        .arg("--config")
        .arg(node.config())
        .arg("--containerd-bin")
        .arg(node.root().join("usr/bin/containerd"))
        .arg("--socket")
        .arg(node.socket())
        .arg("--install-dir")
        .arg(node.bin_dir())
        .args(["--restart-command", &containerd.restart_command()])
        .arg("--shim")
        .arg(workspace_root().join("target/release/containerd-shim-wasmtime-custom-v1"))
        .env_remove("NODE_NAME")
        .output()
        .with_context(|| {
            format!("run {} (built by `cargo build --release --workspace`)", installer.display())
        })?;
    if !output.status.success() {
        bail!(
            "the installer failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((node, containerd))
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        // The bridge outlives containerd; it is this node's alone.
        let _ = Command::new("ip").args(["link", "delete", &self.bridge()]).output();
    }
}

/// The shared libraries `binary` loads, as `ldd` resolves them.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("run ldd")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}
