//! The node's root filesystem as the installer sees it (`--host-root`: `/`
//! when the installer runs on the node itself, `/mnt/node-root` in the
//! DaemonSet), and programs of the node run inside that root, so that the
//! node's own containerd, libc and CPU architecture are what is checked.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// The node's root filesystem: node paths are resolved under it, and node
/// programs run chrooted into it.
#[derive(Debug, Clone)]
pub struct NodeRoot {
    root: PathBuf,
}

impl NodeRoot {
    pub fn new(root: impl Into<PathBuf>) -> NodeRoot {
        NodeRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the node's absolute `path` is in the installer's view.
    pub fn path(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// A command for the node's program `program` (an absolute path on the
    /// node), run with the node's root as `/`.
    pub fn command(&self, program: &Path) -> Result<Command> {
        if !program.is_absolute() {
            bail!("{} must be an absolute path on the node", program.display());
        }
        if self.root == Path::new("/") {
            return Ok(Command::new(program));
        }
        let root =
            CString::new(self.root.as_os_str().as_bytes()).context("the node root path has a NUL byte")?;
        let mut command = Command::new(program);
        // SAFETY: between fork and exec only async-signal-safe calls are made
        // (chroot, chdir), on memory allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs the node's `program` with `args`; fails with its output unless it
    /// exits 0.
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<Output> {
        let output = self
            .command(program)?
            .args(args)
            .output()
            .with_context(|| format!("could not run {} on the node", program.display()))?;
        if !output.status.success() {
            bail!(
                "`{} {}` failed on the node ({}): {}",
                program.display(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// The first of `candidates` (absolute node paths) that exists.
    pub fn first_existing<'a>(&self, candidates: &[&'a str]) -> Option<&'a str> {
        candidates.iter().copied().find(|c| self.path(Path::new(c)).exists())
    }
}
