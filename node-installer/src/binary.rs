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
    check_architecture(&bytes, source)?;
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

/// The CPU architecture an ELF binary is built for, from its header: the
/// machine field of a 64-bit little-endian ELF (what Linux on x86_64 and
/// arm64 runs).
fn elf_architecture(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        _ => Some("another architecture"),
    }
}

/// Refuses a shim built for another CPU than the one this installer runs
/// on (the node's: the image index gave the node its own architecture's
/// image), before anything on the node changes.
fn check_architecture(bytes: &[u8], source: &Path) -> Result<()> {
    let node = std::env::consts::ARCH;
    match elf_architecture(bytes) {
        None => {
            bail!("{} is not a Linux ELF executable: it cannot be the shim (see --shim)", source.display())
        }
        Some(built) if built != node => bail!(
            "{} is built for {built}, but this node is {node}: install with the installer image of the \
             node's architecture (the published image is an index of linux/amd64 and linux/arm64; \
             `cargo xtask dist` builds both), or pass --shim with a {node} build",
            source.display()
        ),
        Some(_) => Ok(()),
    }
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
    let users = processes_running(node_root, binary);
    if !users.is_empty() {
        eprintln!(
            "keeping {}: running shims use it (pids {}); run uninstall again once their pods are gone",
            binary.display(),
            pid_list(&users)
        );
        return Ok(false);
    }
    std::fs::remove_file(&local).with_context(|| format!("could not remove {}", binary.display()))?;
    Ok(true)
}

/// The shim's compile cache on the node (compiled code of plain images;
/// the shim's default, unless containerd's environment names another).
pub const COMPILE_CACHE: &str = "/var/lib/wasmtime-custom/cache";

/// Removes the shim's compile cache; the bytes it held, `None` if there was
/// none. Shims still running keep the entries they mapped (the files go
/// when they exit).
pub fn remove_compile_cache(node_root: &NodeRoot) -> Result<Option<u64>> {
    let local = node_root.path(Path::new(COMPILE_CACHE));
    let entries = match std::fs::read_dir(&local) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("could not read {COMPILE_CACHE}")),
    };
    let bytes = entries.filter_map(|entry| entry.ok()?.metadata().ok()).map(|meta| meta.len()).sum();
    std::fs::remove_dir_all(&local).with_context(|| format!("could not remove {COMPILE_CACHE}"))?;
    Ok(Some(bytes))
}

/// Pids of the shims that run `binary` (a node path), in ascending order:
/// processes running the file there now, or one it replaced (an upgraded
/// shim keeps running the old inode), leaving out those whose parent runs
/// it too (a shim's container processes). The installer runs in the host's
/// PID namespace (`hostPID`), so `/proc` shows the node's processes; their
/// executable is named by its node path, or by the installer's view of it
/// when the installer runs on the host itself.
pub fn processes_running(node_root: &NodeRoot, binary: &Path) -> Vec<u32> {
    let paths = [binary.to_path_buf(), node_root.path(binary)];
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let running: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            // A shim started from a binary that was replaced since shows
            // "<path> (deleted)"; it still needs the path for its cleanup.
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                let exe = exe.to_string_lossy();
                let exe = exe.trim_end_matches(" (deleted)");
                paths.iter().any(|p| p.as_os_str() == exe)
            })
        })
        .collect();
    let mut shims: Vec<u32> =
        running.iter().copied().filter(|pid| parent(*pid).is_none_or(|p| !running.contains(&p))).collect();
    shims.sort_unstable();
    shims
}

/// The parent of process `pid`, from `/proc/<pid>/status`.
fn parent(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("PPid:")?.trim().parse().ok())
}

/// "1, 2, 3", for messages.
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_of_another_architecture_is_refused_with_both_named() {
        let mut header = b"\x7fELF\x02\x01\x01".to_vec();
        header.resize(20, 0);
        let other = if std::env::consts::ARCH == "aarch64" { 62u16 } else { 183u16 };
        header[18..20].copy_from_slice(&other.to_le_bytes());
        let err = format!("{:#}", check_architecture(&header, Path::new("/shim")).unwrap_err());
        assert!(err.contains("this node is") && err.contains(std::env::consts::ARCH), "{err}");
        assert!(err.contains(if other == 62 { "x86_64" } else { "aarch64" }), "{err}");
        let own = if std::env::consts::ARCH == "aarch64" { 183u16 } else { 62u16 };
        header[18..20].copy_from_slice(&own.to_le_bytes());
        check_architecture(&header, Path::new("/shim")).unwrap();
        let err = format!("{:#}", check_architecture(b"#!/bin/sh\n", Path::new("/shim")).unwrap_err());
        assert!(err.contains("not a Linux ELF"), "{err}");
    }
}
