//! What the installer notes on the node between runs, in [`PATH`], so that
//! `uninstall` undoes exactly what `install` did: which config file it
//! edited and whether it created that file (then `uninstall` removes the
//! file instead of leaving an empty config behind).
//!
//! Read once, at the start of a run, before anything on the node changes: a
//! state file that is there but cannot be read is an error, never taken as
//! "no state", since guessing could make `uninstall` remove a config the
//! installer did not create, or leave behind one it did.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::node_root::NodeRoot;
use crate::system;

/// The state file (a node path).
pub const PATH: &str = "/var/lib/wasmtime-custom/installer-state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The containerd config file the installer last changed (a node path).
    pub config: PathBuf,
    /// Whether the installer created that file.
    pub created: bool,
}

impl State {
    /// Whether this state says the installer created `config`.
    pub fn created(&self, config: &Path) -> bool {
        self.created && self.config == config
    }
}

/// The node's state: `None` when there is no state file. A file that exists
/// but cannot be read or parsed is an error that names it and says what to
/// do.
pub fn read(node_root: &NodeRoot) -> Result<Option<State>> {
    let local = node_root.path(Path::new(PATH));
    let bytes = match std::fs::read(&local) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("{} cannot be read ({e}); {WHAT_TO_DO}", describe(node_root)),
    };
    match serde_json::from_slice(&bytes) {
        Ok(state) => Ok(Some(state)),
        Err(e) => bail!("{} is not a state the installer wrote ({e}); {WHAT_TO_DO}", describe(node_root)),
    }
}

const WHAT_TO_DO: &str = "nothing was changed. Inspect the file: if it is damaged, remove it to let the \
    installer start over (it then takes containerd's config for one it did not create)";

/// "the installer's state file PATH", with where it is in the installer's
/// view when that differs.
fn describe(node_root: &NodeRoot) -> String {
    let path = Path::new(PATH);
    let local = node_root.path(path);
    if local == path {
        format!("the installer's state file {PATH}")
    } else {
        format!("the installer's state file {PATH} (here {})", local.display())
    }
}

/// Writes `state` to the node, atomically.
pub fn write(node_root: &NodeRoot, state: &State) -> Result<()> {
    let text = serde_json::to_string(state).context("could not serialize the installer's state")?;
    system::write_atomically(node_root, Path::new(PATH), &format!("{text}\n"))
}

/// Removes the state file, and its folder once empty (another file there is
/// not the installer's to remove).
pub fn remove(node_root: &NodeRoot) -> Result<()> {
    let path = Path::new(PATH);
    system::remove_file(node_root, path)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(node_root.path(dir));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (tempfile::TempDir, NodeRoot) {
        let root = tempfile::tempdir().unwrap();
        let node_root = NodeRoot::new(root.path());
        (root, node_root)
    }

    fn put(node_root: &NodeRoot, text: &str) {
        let local = node_root.path(Path::new(PATH));
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(&local, text).unwrap();
    }

    #[test]
    fn a_written_state_reads_back_and_keeps_its_file_format() {
        let (_root, node_root) = node();
        let state = State { config: "/etc/containerd/config.toml".into(), created: true };
        write(&node_root, &state).unwrap();
        assert_eq!(read(&node_root).unwrap(), Some(state.clone()));
        // The format earlier installers wrote, so that their state still reads.
        let text = std::fs::read_to_string(node_root.path(Path::new(PATH))).unwrap();
        assert_eq!(text, "{\"config\":\"/etc/containerd/config.toml\",\"created\":true}\n");
        assert!(state.created(Path::new("/etc/containerd/config.toml")));
        assert!(!state.created(Path::new("/etc/k0s/containerd.d/wasmtime-custom.toml")));

        remove(&node_root).unwrap();
        assert_eq!(read(&node_root).unwrap(), None);
        assert!(!node_root.path(Path::new("/var/lib/wasmtime-custom")).exists(), "its empty folder goes too");
    }

    #[test]
    fn a_missing_state_file_is_no_state() {
        let (_root, node_root) = node();
        assert_eq!(read(&node_root).unwrap(), None);
        remove(&node_root).expect("removing no state is not an error");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_that_names_it_and_says_what_to_do() {
        for corrupt in
            ["{\"config\": \"/etc/containerd/con", "{\"config\": \"/c.toml\", \"created\": \"yes\"}", ""]
        {
            let (_root, node_root) = node();
            put(&node_root, corrupt);
            let err = format!("{:#}", read(&node_root).expect_err(corrupt));
            assert!(err.contains(PATH), "{err}");
            assert!(err.contains(&node_root.path(Path::new(PATH)).display().to_string()), "{err}");
            assert!(err.contains("is not a state the installer wrote"), "{err}");
            assert!(err.contains("nothing was changed"), "{err}");
            assert!(err.contains("remove it to let the installer start over"), "{err}");
            let left = std::fs::read_to_string(node_root.path(Path::new(PATH))).unwrap();
            assert_eq!(left, corrupt, "the file is left as it was, for inspection");
        }
    }

    #[test]
    fn an_unreadable_state_file_is_an_error_too() {
        let (_root, node_root) = node();
        // A folder where the file should be: it exists, but cannot be read.
        std::fs::create_dir_all(node_root.path(Path::new(PATH))).unwrap();
        let err = format!("{:#}", read(&node_root).unwrap_err());
        assert!(err.contains(PATH) && err.contains("cannot be read"), "{err}");
        assert!(err.contains("remove it to let the installer start over"), "{err}");
    }
}
