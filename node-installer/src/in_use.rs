//! What still runs on the runtime on this node, asked before `uninstall`
//! changes anything: the pods containerd runs with the runtime handler (over
//! CRI, as the kubelet knows them), and the processes running the shim
//! binary, which also covers containers started outside Kubernetes (`ctr
//! run`) and shims of an older version. Two independent signals: a pod
//! whose CRI entry lacks its handler still shows up as a shim process.
//!
//! Removing the runtime under them stops none of them (containerd's restart
//! leaves shims and their containers running), but leaves them without a
//! runtime: nothing of theirs can start again on this node, and the shim
//! binary, which containerd needs to clean up after a shim, must stay.
//! Hence `uninstall` refuses unless told `--force`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::binary;
use crate::cri::{self, Pod};
use crate::node_root::NodeRoot;

/// How long containerd may take to list its pods.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InUse {
    /// Ready pods on the runtime handler.
    pub pods: Vec<Pod>,
    /// Shim processes (one per pod, or per container outside Kubernetes),
    /// ascending.
    pub shim_pids: Vec<u32>,
}

impl InUse {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.shim_pids.is_empty()
    }
}

/// `Wasm pods ns/a (containers: x), ns/b (containers: y); shim processes (pids 1, 2)`.
impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.pods.is_empty() {
            let pods: Vec<String> = self.pods.iter().map(Pod::to_string).collect();
            parts.push(format!("Wasm pods {}", pods.join(", ")));
        }
        if !self.shim_pids.is_empty() {
            parts.push(format!("shim processes (pids {})", binary::pid_list(&self.shim_pids)));
        }
        f.write_str(&parts.join("; "))
    }
}

/// The pods containerd (on `socket`, a path in the installer's view) runs
/// with runtime handler `handler`, and the processes running the node's
/// `shim` binary.
pub async fn find(node_root: &NodeRoot, socket: &Path, handler: &str, shim: &Path) -> Result<InUse> {
    let listing = async {
        let mut client = cri::connect(socket).await?;
        cri::pods_on(&mut client, handler).await
    };
    let pods = tokio::time::timeout(LIST_TIMEOUT, listing)
        .await
        .with_context(|| format!("containerd did not list its pods within {}s", LIST_TIMEOUT.as_secs()))??;
    Ok(InUse { pods, shim_pids: binary::processes_running(node_root, shim) })
}
