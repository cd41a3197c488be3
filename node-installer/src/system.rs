//! Changing the node safely: one installer at a time (a lock), files
//! replaced atomically, and containerd restarted the way the node runs it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::binary::sync_dir;
use crate::node_root::NodeRoot;

/// Holds the installer's lock on the node until dropped.
pub struct Lock(#[allow(dead_code, reason = "held for its Drop, which releases the lock")] File);

/// Takes the node-wide lock, waiting for another installer run to finish.
pub fn lock(node_root: &NodeRoot) -> Result<Lock> {
    let path = node_root.path(Path::new("/run/wasmtime-custom-node-installer.lock"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let file = File::create(&path).with_context(|| format!("could not open the lock {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!("another installer run holds {}; waiting for it", path.display());
        file.lock().with_context(|| format!("could not lock {}", path.display()))?;
    }
    Ok(Lock(file))
}

/// Replaces the node file `path` with `text`: a temp file in the same
/// folder, synced, then renamed over it (keeping its permissions).
pub fn write_atomically(node_root: &NodeRoot, path: &Path, text: &str) -> Result<()> {
    let local = node_root.path(path);
    let dir = local.parent().context("a config file has a parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    // A new file gets 0600 unless the file it replaces said otherwise.
    let mode = std::fs::metadata(&local).map(|m| m.permissions().mode()).unwrap_or(0o600);
    let name = local.file_name().context("a config file has a name")?.to_string_lossy();
    let temp = dir.join(format!(".{name}.wasmtime-custom-{}", std::process::id()));
    let result = (|| {
        // Created with the final mode: a config may hold registry credentials.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(&temp)
            .with_context(|| format!("could not create {}", temp.display()))?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&temp, &local).with_context(|| format!("could not replace {}", path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Gives `to` the permission bits of `from`.
pub fn copy_mode(from: &Path, to: &Path) -> Result<()> {
    let mode =
        std::fs::metadata(from).with_context(|| format!("could not read {}", from.display()))?.permissions();
    std::fs::set_permissions(to, mode).with_context(|| format!("could not set the mode of {}", to.display()))
}

/// Removes the node file `path` if it exists.
pub fn remove_file(node_root: &NodeRoot, path: &Path) -> Result<()> {
    match std::fs::remove_file(node_root.path(path)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("could not remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// How containerd is restarted. Never SIGHUP: containerd exits on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// `systemctl restart UNIT`, run in the mount namespace of the node's
    /// PID 1 (systemd), which the DaemonSet reaches through `hostPID`.
    Systemd(String),
    /// A shell command of the user's (`--restart-command`), run as is.
    Command(String),
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Restart::Systemd(unit) => write!(f, "systemctl restart {unit}"),
            Restart::Command(command) => write!(f, "`{command}`"),
        }
    }
}

pub fn restart(method: &Restart) -> Result<()> {
    // Kept open until the child has been spawned (see `pre_exec` below).
    let mut _pid1_mounts = None;
    let mut command = match method {
        Restart::Command(line) => {
            let mut command = Command::new("/bin/sh");
            command.args(["-c", line]);
            command
        }
        Restart::Systemd(unit) => {
            let namespace = File::open("/proc/1/ns/mnt").context(
                "could not open /proc/1/ns/mnt: restarting containerd through systemd needs hostPID and privileges",
            )?;
            let fd = namespace.as_raw_fd();
            let mut command = Command::new("/usr/bin/systemctl");
            command.args(["restart", unit]);
            // SAFETY: setns on an fd opened before the fork is
            // async-signal-safe; the child then execs the node's systemctl.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            _pid1_mounts = Some(namespace);
            command
        }
    };
    let output = command.output().with_context(|| format!("could not run {method}"))?;
    if !output.status.success() {
        bail!(
            "{method} failed ({}): {} {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
