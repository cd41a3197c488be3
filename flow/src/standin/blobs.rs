//! The blob store in place of Blob Storage: one folder per outbox binding,
//! blob names that are plain file names, and atomic writes (a temporary
//! file renamed into place, so a reader never sees half a blob). A storage
//! outage can be injected: the first N writes are refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::bindings::OUTBOXES;

/// Why a blob was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// The name is missing or not a plain file name (the caller's fault).
    InvalidName(Option<String>),
    /// Refused on purpose: the injected outage.
    InjectedOutage,
    /// The write itself failed.
    Failed(String),
}

/// The outbox folders under one root.
pub struct BlobStore {
    root: PathBuf,
    /// Writes attempted with a valid name, for the injected outage and
    /// unique temporary names.
    sequence: AtomicU64,
    failing_writes: u64,
}

impl BlobStore {
    /// Creates a folder for each outbox under `root`; the first
    /// `failing_writes` writes will be refused.
    pub fn create(root: &Path, failing_writes: u64) -> Result<BlobStore> {
        for outbox in OUTBOXES {
            let dir = root.join(outbox);
            std::fs::create_dir_all(&dir).with_context(|| format!("create the outbox {}", dir.display()))?;
        }
        Ok(BlobStore { root: root.to_path_buf(), sequence: AtomicU64::new(0), failing_writes })
    }

    /// The folder holding `outbox`'s blobs.
    pub fn folder(&self, outbox: &str) -> PathBuf {
        self.root.join(outbox)
    }

    /// Writes `data` as the blob `name` of `outbox`, on a blocking thread;
    /// returns the name written.
    pub async fn write(&self, outbox: &str, name: Option<&str>, data: Bytes) -> Result<String, BlobError> {
        let name = match name {
            Some(name) if valid_blob_name(name) => name.to_string(),
            other => return Err(BlobError::InvalidName(other.map(str::to_string))),
        };
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
        if sequence < self.failing_writes {
            return Err(BlobError::InjectedOutage);
        }
        let dir = self.folder(outbox);
        tokio::task::spawn_blocking({
            let name = name.clone();
            move || write_atomically(&dir, &name, sequence, &data)
        })
        .await
        .map_err(|e| BlobError::Failed(e.to_string()))?
        .map_err(|e| BlobError::Failed(format!("{e:#}")))?;
        Ok(name)
    }
}

/// A blob name the stand-in accepts: one path component, no tricks.
fn valid_blob_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.starts_with('.') && !name.contains(['/', '\0'])
}

/// Writes a hidden temporary file (unique per `sequence`) and renames it
/// to `name`: the blob appears whole or not at all.
fn write_atomically(dir: &Path, name: &str, sequence: u64, data: &[u8]) -> Result<()> {
    let temporary = dir.join(format!(".{name}.{sequence}.partial"));
    std::fs::write(&temporary, data).with_context(|| format!("write {}", temporary.display()))?;
    let target = dir.join(name);
    std::fs::rename(&temporary, &target).with_context(|| format!("rename into {}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_are_plain_file_names() {
        for good in ["1", "10000", "order-7"] {
            assert!(valid_blob_name(good), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden"] {
            assert!(!valid_blob_name(bad), "{bad}");
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_blob_is_written_whole_under_its_name_and_a_rewrite_replaces_it() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::create(root.path(), 0).unwrap();
        assert_eq!(files(root.path()), OUTBOXES);
        assert_eq!(
            store.write("express-outbox", Some("7"), Bytes::from_static(b"{\"a\":1}")).await,
            Ok("7".into())
        );
        assert_eq!(
            store.write("express-outbox", Some("7"), Bytes::from_static(b"{\"a\":2}")).await,
            Ok("7".into())
        );
        let dir = store.folder("express-outbox");
        assert_eq!(files(&dir), ["7"], "no temporary file is left behind");
        assert_eq!(std::fs::read(dir.join("7")).unwrap(), b"{\"a\":2}");
    }

    #[tokio::test]
    async fn an_unsafe_or_missing_name_is_refused_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::create(root.path(), 0).unwrap();
        for name in [None, Some("../escape"), Some(".hidden")] {
            let written = store.write("standard-outbox", name, Bytes::from_static(b"x")).await;
            assert_eq!(written, Err(BlobError::InvalidName(name.map(str::to_string))));
        }
        assert!(files(&store.folder("standard-outbox")).is_empty());
        assert!(!root.path().join("escape").exists());
    }

    #[tokio::test]
    async fn the_injected_outage_refuses_exactly_the_first_writes() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::create(root.path(), 2).unwrap();
        let mut outcomes = Vec::new();
        for name in ["1", "2", "3", "4"] {
            outcomes.push(store.write("express-outbox", Some(name), Bytes::from_static(b"{}")).await);
        }
        assert_eq!(
            outcomes,
            [Err(BlobError::InjectedOutage), Err(BlobError::InjectedOutage), Ok("3".into()), Ok("4".into())]
        );
        assert_eq!(files(&store.folder("express-outbox")), ["3", "4"]);
    }
}
