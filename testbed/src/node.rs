//! A fake node: a folder that stands in for a node's root filesystem (the
//! installer's DaemonSet mounts the real one at `/mnt/node-root`), holding
//! the node's containerd binary, the libraries it and the shim need (so both
//! run chrooted into it, as on a node), and containerd's config with CRI
//! enabled: the project's pause image as the sandbox image, network
//! namespaces under containerd's state folder, and a CNI bridge network of
//! its own (Debian's containernetworking-plugins). The containerd reading
//! that config runs for real, outside the chroot.
//!
//! `restrict_oom_score_adj` is set because root on these machines lacks
//! CAP_SYS_RESOURCE: the kubelet's -998 for a pause container cannot be
//! written here by any runtime (runc included), so containerd raises it to
//! its own score, as it does for rootless setups.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::containerd::Containerd;
use crate::paths::{Paths, Version};
use crate::tool;

/// The CRI sandbox image (built by `cargo xtask images` as `pause.tar`).
pub const PAUSE_IMAGE: &str = "localhost/wasmtime-custom/pause:latest";
/// Where Debian's containernetworking-plugins puts the CNI plugins.
const CNI_BIN: &str = "/usr/lib/cni";
/// The shim's compile cache on a node (relative to the node's root).
pub const COMPILE_CACHE: &str = "var/lib/wasmtime-custom/cache";
/// Where fake nodes of every process on this host claim their pod network.
const NETWORK_CLAIMS: &str = "/run/wasmtime-custom-testbed";

pub struct FakeNode {
    dir: TempDir,
    version: Version,
    /// The config as written here, to compare after uninstall and rollback.
    pub original_config: String,
    network: Network,
}

/// A pod network claimed by one fake node on this host: bridge `wtcbr<n>`,
/// subnet 10.213.<n>.0/24. The claim is a lock held for the node's life, so
/// concurrently running test processes never share a bridge.
struct Network {
    number: u8,
    _claim: File,
}

impl Network {
    fn claim() -> Result<Network> {
        std::fs::create_dir_all(NETWORK_CLAIMS).with_context(|| format!("create {NETWORK_CLAIMS}"))?;
        for number in 1..=250u8 {
            let path = Path::new(NETWORK_CLAIMS).join(format!("net-{number}.lock"));
            let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => return Ok(Network { number, _claim: file }),
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("lock {}", path.display()));
                }
            }
        }
        bail!("all 250 pod networks under {NETWORK_CLAIMS} are in use by other fake nodes")
    }

    fn bridge(&self) -> String {
        format!("wtcbr{}", self.number)
    }
}

impl FakeNode {
    /// A node for containerd `version` (1.7: config version 2; 2.1: config
    /// version 3), with the shim's libraries from `paths`.
    pub fn new(paths: &Paths, version: Version) -> Result<FakeNode> {
        if version == Version::V1_6 {
            bail!("a fake node runs containerd 1.7 or 2.1 (1.6 cannot pull wasm-layer images)");
        }
        let dir = tempfile::Builder::new().prefix("wtc-node-").tempdir_in("/tmp")?;
        let network = Network::claim()?;
        let mut node = FakeNode { dir, version, original_config: String::new(), network };
        let containerd = paths.containerd_bins(version)?.join("containerd");
        node.copy_in(&containerd, Path::new("/usr/bin/containerd"))?;
        for binary in [containerd, paths.shim()?] {
            for library in libraries(&binary)? {
                node.copy_in(&library, &library)?;
            }
        }
        for dir in
            ["usr/local/bin", "etc/containerd", "etc/cni/net.d", "run/containerd", "var/lib/containerd"]
        {
            std::fs::create_dir_all(node.root().join(dir))?;
        }
        std::fs::write(node.root().join("etc/cni/net.d/10-wtc.conflist"), node.cni_config())?;
        let config = node.config_text();
        std::fs::write(node.config(), &config)?;
        node.original_config = config;
        Ok(node)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The node's root folder (the installer's `--host-root`).
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

    /// containerd's state folder (network namespaces live under it).
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("run/containerd/state")
    }

    /// The pod network's gateway on the host (the bridge's address).
    pub fn gateway(&self) -> String {
        format!("10.213.{}.1", self.network.number)
    }

    /// The first three octets of the pod network, with the final dot.
    pub fn pod_subnet_prefix(&self) -> String {
        format!("10.213.{}.", self.network.number)
    }

    /// Starts the node's containerd on its config (not yet with the shim);
    /// the shim's compile cache is where it is on a real node, under the
    /// node's root (the node installer's uninstall removes it).
    pub fn start_containerd(&self, paths: &Paths) -> Result<Containerd> {
        let cache = self.root().join(COMPILE_CACHE);
        Containerd::start_with_config(
            paths,
            self.version,
            &self.config(),
            &self.socket(),
            &self.bin_dir(),
            &cache,
        )
    }

    fn copy_in(&self, from: &Path, node_path: &Path) -> Result<()> {
        let to = self.root().join(node_path.strip_prefix("/").unwrap_or(node_path));
        std::fs::create_dir_all(to.parent().context("a file has a folder")?)?;
        std::fs::copy(from, &to).with_context(|| format!("copy {} to the fake node", from.display()))?;
        Ok(())
    }

    fn cni_config(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"wtc-pods","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.213.{n}.0/24"}}]],"dataDir":"{root}/var/lib/cni/networks"}}}}]}}"#,
            bridge = self.network.bridge(),
            n = self.network.number,
            root = self.root().display(),
        )
    }

    fn config_text(&self) -> String {
        let root = self.root();
        let root = root.display();
        let (header, cri, cri_settings) = match self.version {
            Version::V2_1 => (
                "version = 3",
                "'io.containerd.cri.v1.runtime'",
                format!(
                    "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = \"{PAUSE_IMAGE}\"\n\n\
                     [plugins.'io.containerd.cri.v1.runtime']\n  netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\n\
                     [plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"{CNI_BIN}\"]\n  conf_dir = \"{root}/etc/cni/net.d\"\n"
                ),
            ),
            Version::V1_6 | Version::V1_7 => (
                "version = 2",
                "\"io.containerd.grpc.v1.cri\"",
                format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{CNI_BIN}\"\n  conf_dir = \"{root}/etc/cni/net.d\"\n"
                ),
            ),
        };
        format!(
            "# The fake node's containerd config (written by testbed).\n{header}\n\
             root = \"{root}/var/lib/containerd\"\nstate = \"{root}/run/containerd/state\"\n\n\
             [grpc]\n  address = \"{root}/run/containerd/containerd.sock\"\n\n{cri_settings}\n\
             [plugins.{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
             [plugins.{cri}.containerd.runtimes.runc.options]\n  SystemdCgroup = false\n"
        )
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        // The bridge outlives containerd; it is this node's alone.
        let _ = Command::new("ip").args(["link", "delete", &self.network.bridge()]).output();
    }
}

/// A fake node whose containerd got the wasmtime-custom runtime from the
/// node installer, as a DaemonSet would give it to a real node.
pub struct InstalledNode {
    // Dropped first: containerd stops (tasks killed) before the node goes.
    pub containerd: Containerd,
    pub node: FakeNode,
}

impl InstalledNode {
    /// A fake node for containerd `version`, its containerd started, and the
    /// shim installed by the node installer (config edited, containerd
    /// restarted, CRI health checked). The installer runs on this host
    /// directly (host root `/`) with the node's real paths: the containerd
    /// reading the config is not chrooted, so `runtime_path` must be a real path.
    pub fn start(paths: &Paths, version: Version) -> Result<InstalledNode> {
        let node = FakeNode::new(paths, version)?;
        let containerd = node.start_containerd(paths)?;
        let mut install = installer(paths, &node, &containerd, "install")?;
        install.arg("--shim").arg(paths.shim()?);
        tool::stdout(&mut install).context("the node installer failed on the fake node")?;
        Ok(InstalledNode { containerd, node })
    }

    /// The node installer's `subcommand` for this node, as `start` runs it
    /// (more arguments may follow).
    pub fn installer(&self, paths: &Paths, subcommand: &str) -> Result<Command> {
        installer(paths, &self.node, &self.containerd, subcommand)
    }
}

/// The node installer's `subcommand` on this host with `node`'s real paths,
/// restarting `containerd` with its own launcher; not labelling any node.
fn installer(paths: &Paths, node: &FakeNode, containerd: &Containerd, subcommand: &str) -> Result<Command> {
    let mut command = Command::new(paths.installer()?);
    command
        .arg(subcommand)
        .arg("--config")
        .arg(node.config())
        .arg("--containerd-bin")
        .arg(node.root().join("usr/bin/containerd"))
        .arg("--socket")
        .arg(node.socket())
        .arg("--install-dir")
        .arg(node.bin_dir())
        .args(["--restart-command", &containerd.restart_command()])
        .env_remove("NODE_NAME");
    Ok(command)
}

/// The shared libraries `binary` loads, as `ldd` resolves them (none for a
/// static binary).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = tool::output(Command::new("ldd").arg(binary))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || listing.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), tool::describe(&out));
    }
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}
