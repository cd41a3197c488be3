//! Putting the shim binary on the node: written to a temp file in the
//! target folder, checked to run there, then renamed over the old one. A
//! running shim keeps its inode (no `text file busy`), and a binary that
//! cannot run on the node never replaces one that can.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::node_root::NodeRoot;

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[derive(Debug)]
pub struct Installed {
    /// Node path of the installed binary.
    pub path: PathBuf,
    pub sha256: String,
    /// What `-v` printed on the node.
    pub version: String,
    pub changed: bool,
}

/// Installs `source` (a path in the installer's view) as `dir/name` on the node.
pub fn install(
    node_root: &NodeRoot,
    source: &Path,
    dir: &Path,
    name: &str,
    dry_run: bool,
) -> Result<Installed> {
    let bytes = std::fs::read(source)
        .with_context(|| format!("could not read the shim to install, {} (see --shim)", source.display()))?;
    let sha256 = sha256_hex(&bytes);
    let target = dir.join(name);
    let current = std::fs::read(node_root.path(&target)).ok();
    if current.as_deref().map(sha256_hex).as_deref() == Some(&sha256) {
        let version = version_on_node(node_root, &target)?;
        return Ok(Installed { path: target, sha256, version, changed: false });
    }
    if dry_run {
        return Ok(Installed { path: target, sha256, version: "(not run: --dry-run)".into(), changed: true });
    }
    std::fs::create_dir_all(node_root.path(dir))
        .with_context(|| format!("could not create {} on the node", dir.display()))?;
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let temp_local = node_root.path(&temp);
    let result = (|| {
        let mut file = std::fs::File::create(&temp_local)
            .with_context(|| format!("could not create {}", temp_local.display()))?;
        file.write_all(&bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        drop(file);
        // Before it replaces anything: it must run on this node (CPU
        // architecture, libc, libseccomp).
        let version = version_on_node(node_root, &temp)?;
        std::fs::rename(&temp_local, node_root.path(&target))
            .with_context(|| format!("could not move the shim into place at {}", target.display()))?;
        sync_dir(&node_root.path(dir))?;
        let written = std::fs::read(node_root.path(&target))?;
        if sha256_hex(&written) != sha256 {
            bail!("{} does not have the expected sha256 {sha256} after writing", target.display());
        }
        Ok(version)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_local);
    }
    Ok(Installed { path: target, sha256, version: result?, changed: true })
}

/// Runs the shim's `-v` on the node; the error says what usually causes it.
pub fn version_on_node(node_root: &NodeRoot, binary: &Path) -> Result<String> {
    let output = node_root.run(binary, &["-v"]).with_context(|| {
        format!(
            "the shim does not run on this node ({}): wrong CPU architecture, or a missing library \
             (it needs glibc and libseccomp.so.2)",
            binary.display()
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.lines().find_map(|l| l.trim().strip_prefix("Version: ")).unwrap_or("unknown");
    Ok(version.trim().to_string())
}

/// Removes the binary unless a running process uses it; `Ok(false)` (with
/// the reason printed) when it was kept.
pub fn remove(node_root: &NodeRoot, binary: &Path) -> Result<bool> {
    let local = node_root.path(binary);
    if !local.exists() {
        return Ok(true);
    }
    let users = processes_running(&[binary.to_path_buf(), local.clone()]);
    if !users.is_empty() {
        eprintln!(
            "keeping {}: running shims use it (pids {}); run uninstall again once their pods are gone",
            binary.display(),
            users.join(", ")
        );
        return Ok(false);
    }
    std::fs::remove_file(&local).with_context(|| format!("could not remove {}", binary.display()))?;
    Ok(true)
}

/// Pids whose executable is one of `paths` (the node's path and the
/// installer's view of it). The installer runs in the host's PID namespace
/// (`hostPID`), so `/proc` shows the node's processes.
fn processes_running(paths: &[PathBuf]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|entry| {
            // A shim started from a binary that was replaced since shows
            // "<path> (deleted)"; it still needs the path for its cleanup.
            std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| {
                let exe = exe.to_string_lossy();
                let exe = exe.trim_end_matches(" (deleted)");
                paths.iter().any(|p| p.as_os_str() == exe)
            })
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync {}", dir.display()))
}
