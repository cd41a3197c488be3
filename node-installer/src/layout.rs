//! Which containerd the node runs and where its config is: an explicit
//! `--config` first, then the known layouts in a fixed order. The choice and
//! its reason are printed, never guessed silently.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::node_root::NodeRoot;

/// How the file that registers the runtime relates to containerd's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigKind {
    /// containerd reads this file itself.
    Plain,
    /// A Go template (k3s, RKE2) that the distribution renders into `rendered`
    /// at its start; `rendered` is containerd's real config.
    Template { rendered: PathBuf },
    /// A file of its own in a drop-in folder (k0s), merged by the distribution.
    DropIn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The Kubernetes/containerd distribution the node runs, for messages:
    /// "containerd" (plain containerd), "k3s", "RKE2", "k0s", "MicroK8s".
    pub distribution: &'static str,
    /// The file the installer edits (node path).
    pub config: PathBuf,
    pub kind: ConfigKind,
    /// Why this layout was chosen.
    pub reason: String,
    /// The node's containerd binary (node path), for `config dump`.
    pub containerd: PathBuf,
    /// containerd's gRPC socket (node path).
    pub socket: PathBuf,
    /// The systemd unit to restart, if the node uses one.
    pub unit: Option<String>,
}

/// `CONFIG (distribution: NAME; why this layout)`, for the log.
impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (distribution: {}; {})", self.config.display(), self.distribution, self.reason)
    }
}

/// What the user pinned on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub containerd: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub unit: Option<String>,
}

/// A distribution's usual places.
struct Known {
    distribution: &'static str,
    /// Present only on nodes of this distribution.
    marker: &'static str,
    containerd: &'static [&'static str],
    socket: &'static str,
    units: &'static [&'static str],
}

const K3S: Known = Known {
    distribution: "k3s",
    marker: "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
    containerd: &["/var/lib/rancher/k3s/data/current/bin/containerd"],
    socket: "/run/k3s/containerd/containerd.sock",
    units: &["k3s", "k3s-agent"],
};
const RKE2: Known = Known {
    distribution: "RKE2",
    marker: "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
    containerd: &["/var/lib/rancher/rke2/bin/containerd"],
    socket: "/run/k3s/containerd/containerd.sock",
    units: &["rke2-server", "rke2-agent"],
};
const K0S: Known = Known {
    distribution: "k0s",
    marker: "/etc/k0s/containerd.d",
    containerd: &["/var/lib/k0s/bin/containerd"],
    socket: "/run/k0s/containerd.sock",
    units: &["k0sworker", "k0scontroller"],
};
const MICROK8S: Known = Known {
    distribution: "MicroK8s",
    marker: "/var/snap/microk8s/current/args/containerd-template.toml",
    containerd: &["/snap/microk8s/current/bin/containerd"],
    socket: "/var/snap/microk8s/common/run/containerd.sock",
    units: &["snap.microk8s.daemon-containerd"],
};
/// Plain containerd, AKS (Ubuntu and Azure Linux), kubeadm nodes.
const CONTAINERD: Known = Known {
    distribution: "containerd",
    marker: "/etc/containerd/config.toml",
    containerd: &["/usr/bin/containerd", "/usr/local/bin/containerd"],
    socket: "/run/containerd/containerd.sock",
    units: &["containerd"],
};

/// The file name of the installer's own drop-in for k0s.
const DROP_IN: &str = "wasmtime-custom.toml";

pub fn detect(node_root: &NodeRoot, overrides: &Overrides) -> Result<Layout> {
    let mut layout = match &overrides.config {
        Some(config) => explicit(node_root, config),
        None => detected(node_root)?,
    };
    if let Some(containerd) = &overrides.containerd {
        layout.containerd = containerd.clone();
    }
    if let Some(socket) = &overrides.socket {
        layout.socket = socket.clone();
    }
    if let Some(unit) = &overrides.unit {
        layout.unit = Some(unit.clone());
    }
    if !node_root.path(&layout.containerd).exists() {
        bail!(
            "containerd's binary {} is not on the node (under {}); pass --containerd-bin",
            layout.containerd.display(),
            node_root.root().display()
        );
    }
    Ok(layout)
}

fn explicit(node_root: &NodeRoot, config: &Path) -> Layout {
    let kind = match config.to_str().and_then(|c| c.strip_suffix(".tmpl")) {
        Some(rendered) => ConfigKind::Template { rendered: rendered.into() },
        None => ConfigKind::Plain,
    };
    Layout {
        distribution: "containerd",
        config: config.to_path_buf(),
        kind,
        reason: "given with --config".into(),
        containerd: first(node_root, CONTAINERD.containerd),
        socket: CONTAINERD.socket.into(),
        unit: unit(node_root, CONTAINERD.units),
    }
}

fn detected(node_root: &NodeRoot) -> Result<Layout> {
    for known in [K3S, RKE2] {
        if node_root.path(Path::new(known.marker)).exists() {
            let rendered = PathBuf::from(known.marker);
            let template = template_for(node_root, &rendered);
            return Ok(layout(
                node_root,
                &known,
                template.clone(),
                ConfigKind::Template { rendered },
                format!(
                    "{} generates {} at each start; additions belong in its template {}",
                    known.distribution,
                    known.marker,
                    template.display()
                ),
            ));
        }
    }
    if node_root.path(Path::new(K0S.marker)).is_dir() {
        let config = Path::new(K0S.marker).join(DROP_IN);
        let reason = format!("k0s merges the drop-in files of {} into its containerd config", K0S.marker);
        return Ok(layout(node_root, &K0S, config, ConfigKind::DropIn, reason));
    }
    for known in [MICROK8S, CONTAINERD] {
        if node_root.path(Path::new(known.marker)).is_file() {
            let reason = format!("{} exists", known.marker);
            return Ok(layout(node_root, &known, known.marker.into(), ConfigKind::Plain, reason));
        }
    }
    if node_root.first_existing(CONTAINERD.containerd).is_some() {
        let reason =
            format!("no config file: containerd runs on its defaults, so {} is created", CONTAINERD.marker);
        return Ok(layout(node_root, &CONTAINERD, CONTAINERD.marker.into(), ConfigKind::Plain, reason));
    }
    bail!(
        "no containerd found under {} (looked for k3s, RKE2, k0s, MicroK8s and /etc/containerd/config.toml); \
         pass --config and --containerd-bin",
        node_root.root().display()
    )
}

/// k3s and RKE2 read `config-v3.toml.tmpl` for containerd 2 and
/// `config.toml.tmpl` before; an existing one wins.
fn template_for(node_root: &NodeRoot, rendered: &Path) -> PathBuf {
    let dir = rendered.parent().unwrap_or(Path::new("/"));
    let v3 = dir.join("config-v3.toml.tmpl");
    let v2 = dir.join("config.toml.tmpl");
    if node_root.path(&v3).exists() {
        return v3;
    }
    if node_root.path(&v2).exists() {
        return v2;
    }
    let rendered_v3 = std::fs::read_to_string(node_root.path(rendered))
        .ok()
        .and_then(|text| crate::config::version_of(&text).ok().flatten())
        .is_some_and(|v| v >= 3);
    if rendered_v3 { v3 } else { v2 }
}

fn layout(node_root: &NodeRoot, known: &Known, config: PathBuf, kind: ConfigKind, reason: String) -> Layout {
    Layout {
        distribution: known.distribution,
        config,
        kind,
        reason,
        containerd: first(node_root, known.containerd),
        socket: known.socket.into(),
        unit: unit(node_root, known.units),
    }
}

fn first(node_root: &NodeRoot, candidates: &[&str]) -> PathBuf {
    node_root.first_existing(candidates).unwrap_or(candidates[0]).into()
}

/// The first unit of `units` with a unit file on the node.
fn unit(node_root: &NodeRoot, units: &[&str]) -> Option<String> {
    let dirs = [
        "/etc/systemd/system",
        "/usr/local/lib/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    units
        .iter()
        .find(|unit| {
            dirs.iter().any(|dir| node_root.path(&Path::new(dir).join(format!("{unit}.service"))).exists())
        })
        .map(|unit| unit.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(files: &[&str]) -> (tempfile::TempDir, NodeRoot) {
        let root = tempfile::tempdir().unwrap();
        for file in files {
            let path = root.path().join(file.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if file.ends_with('/') {
                std::fs::create_dir_all(&path).unwrap();
            } else {
                std::fs::write(&path, "version = 2\n").unwrap();
            }
        }
        let node_root = NodeRoot::new(root.path());
        (root, node_root)
    }

    #[test]
    fn aks_uses_etc_containerd_and_the_containerd_unit() {
        let (_root, node_root) = node(&[
            "/etc/containerd/config.toml",
            "/usr/bin/containerd",
            "/lib/systemd/system/containerd.service",
        ]);
        let layout = detect(&node_root, &Overrides::default()).unwrap();
        assert_eq!(layout.config, Path::new("/etc/containerd/config.toml"));
        assert_eq!(layout.kind, ConfigKind::Plain);
        assert_eq!(layout.unit.as_deref(), Some("containerd"));
        assert_eq!(layout.socket, Path::new("/run/containerd/containerd.sock"));
        assert_eq!(
            layout.to_string(),
            "/etc/containerd/config.toml (distribution: containerd; /etc/containerd/config.toml exists)"
        );
    }

    #[test]
    fn k3s_edits_its_template_never_the_generated_file() {
        let (_root, node_root) = node(&[
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            "/var/lib/rancher/k3s/data/current/bin/containerd",
            "/etc/systemd/system/k3s-agent.service",
            "/etc/containerd/config.toml",
        ]);
        let layout = detect(&node_root, &Overrides::default()).unwrap();
        assert_eq!(layout.distribution, "k3s");
        assert_eq!(layout.config, Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"));
        assert!(matches!(layout.kind, ConfigKind::Template { .. }));
        assert_eq!(layout.unit.as_deref(), Some("k3s-agent"));
        assert!(layout.reason.contains("template"), "{}", layout.reason);
    }

    #[test]
    fn k0s_gets_a_drop_in_of_its_own() {
        let (_root, node_root) = node(&["/etc/k0s/containerd.d/", "/var/lib/k0s/bin/containerd"]);
        let layout = detect(&node_root, &Overrides::default()).unwrap();
        assert_eq!(layout.config, Path::new("/etc/k0s/containerd.d/wasmtime-custom.toml"));
        assert_eq!(layout.kind, ConfigKind::DropIn);
    }

    #[test]
    fn an_explicit_config_wins_and_a_missing_binary_is_named() {
        let (_root, node_root) = node(&["/etc/containerd/config.toml", "/opt/bin/containerd"]);
        let overrides = Overrides {
            config: Some("/srv/c.toml".into()),
            containerd: Some("/opt/bin/containerd".into()),
            ..Overrides::default()
        };
        let layout = detect(&node_root, &overrides).unwrap();
        assert_eq!(layout.config, Path::new("/srv/c.toml"));
        assert_eq!(layout.reason, "given with --config");
        let missing = Overrides { containerd: Some("/nope/containerd".into()), ..Overrides::default() };
        let err = detect(&node_root, &missing).unwrap_err().to_string();
        assert!(err.contains("/nope/containerd") && err.contains("--containerd-bin"), "{err}");
    }

    #[test]
    fn nothing_found_says_what_was_looked_for() {
        let (_root, node_root) = node(&[]);
        let err = detect(&node_root, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("k3s, RKE2, k0s, MicroK8s"), "{err}");
    }
}
