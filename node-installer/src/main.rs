//! `wasmtime-custom-node-installer [install|uninstall|status] [options]`:
//! run directly on a node, or as the DaemonSet's init container with the
//! node's root mounted (`--host-root /mnt/node-root`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use node_installer::install::{self, Options, SHIM_NAME, WhileInUse};
use node_installer::layout::Overrides;
use node_installer::node::KubeNode;
use node_installer::node_root::NodeRoot;

#[derive(Parser, Debug)]
#[command(version, about = "Installs the wasmtime-custom containerd shim on a node")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The node's root filesystem as this program sees it.
    #[arg(long, env = "HOST_ROOT", default_value = "/", global = true)]
    host_root: PathBuf,
    /// containerd's config file (a path on the node); default: detected
    /// (k3s, RKE2, k0s, MicroK8s, then /etc/containerd/config.toml).
    #[arg(long, env = "CONTAINERD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The node's containerd binary, for `config dump` (default: detected).
    #[arg(long, global = true)]
    containerd_bin: Option<PathBuf>,
    /// containerd's socket on the node (default: the layout's).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The shim to install (default: containerd-shim-wasmtime-custom-v1 next
    /// to this program).
    #[arg(long, env = "SHIM_SOURCE", global = true)]
    shim: Option<PathBuf>,
    /// Folder on the node the shim goes to; on containerd's PATH, so that
    /// `ctr run --runtime io.containerd.wasmtime-custom.v1` finds it too.
    #[arg(long, default_value = "/usr/local/bin", global = true)]
    install_dir: PathBuf,
    /// Runtime handler name: what a RuntimeClass's `handler` says.
    #[arg(long, default_value = "wasmtime-custom", global = true)]
    runtime_name: String,
    /// systemd unit to restart (default: the layout's, e.g. containerd, k3s).
    #[arg(long, global = true)]
    restart_unit: Option<String>,
    /// Restart containerd with this shell command instead of systemd.
    #[arg(long, env = "RESTART_COMMAND", global = true)]
    restart_command: Option<String>,
    /// Seconds to wait for containerd to be healthy after a restart.
    #[arg(long, default_value_t = 60, global = true)]
    health_timeout: u64,
    /// Kubernetes node to label when the runtime is ready (the DaemonSet
    /// sets it from the downward API); none: no labelling.
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    /// Print the config diff and the plan; change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Command {
    /// Install the shim and register the runtime (the default).
    Install,
    /// Unlabel the node, then remove exactly what install added; stops
    /// (exit 2, naming them) while Wasm pods or other shims still run here.
    Uninstall {
        /// Remove the runtime even while Wasm pods run on it: nothing stops
        /// them, but nothing of theirs can start again on this node (the
        /// shim binary stays until no process runs it).
        #[arg(long)]
        force: bool,
    },
    /// Show what is installed and whether containerd knows the runtime.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("wasmtime-custom-node-installer: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    let shim = match cli.shim {
        Some(shim) => shim,
        None => std::env::current_exe()
            .context("could not find this program's own path")?
            .with_file_name(SHIM_NAME),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // The client is made before anything runs: a missing Kubernetes
        // configuration fails the run before the node changes.
        let kube_node = match cli.node_name {
            Some(name) => Some(KubeNode::connect(name).await?),
            None => None,
        };
        let options = Options {
            node_root: NodeRoot::new(cli.host_root),
            overrides: Overrides {
                config: cli.config,
                containerd: cli.containerd_bin,
                socket: cli.socket,
                unit: cli.restart_unit,
            },
            shim,
            install_dir: cli.install_dir,
            runtime_name: cli.runtime_name,
            restart_command: cli.restart_command,
            health_timeout: Duration::from_secs(cli.health_timeout),
            kube_node,
            dry_run: cli.dry_run,
        };
        match cli.command.unwrap_or(Command::Install) {
            Command::Install => install::install(&options).await.map(|()| true),
            Command::Uninstall { force } => {
                let while_in_use = if force { WhileInUse::Proceed } else { WhileInUse::Refuse };
                install::uninstall(&options, while_in_use).await.map(|()| true)
            }
            Command::Status => install::status(&options).await,
        }
    })
}
