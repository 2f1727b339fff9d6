//! The embedded dedup store: the set of transaction keys already committed, kept in memory as 128-bit BLAKE3
//! digests of the canonical key and persisted in the warehouse as an append-only file, so that a second run
//! dedups against the first. Exact, not probabilistic: no sale is dropped on a false positive. (The shared Redis
//! Bloom filter with its quarantine is issue 4.)
//!
//! Keys move through two states: *reserved* when a batch claims them (so a later batch in flight cannot claim them
//! again) and *committed* once the batch's data is committed to Iceberg. A batch that fails releases its
//! reservations, so a retry finds its keys new again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::model::TransactionKey;

/// Digest of a transaction key (first 16 bytes of BLAKE3 over its canonical text).
pub type KeyDigest = u128;

pub fn digest(key: &TransactionKey) -> KeyDigest {
    let hash = blake3::hash(key.canonical().as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

#[derive(Debug, thiserror::Error)]
#[error("dedup store {path}: {source}")]
pub struct DedupError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct EmbeddedDedup {
    path: PathBuf,
    file: File,
    committed: HashSet<KeyDigest>,
    reserved: HashSet<KeyDigest>,
}

impl EmbeddedDedup {
    /// Opens (creating) the store at `path`. A torn last record (a crash mid-append) is dropped: its batch was
    /// not marked, and its keys are re-marked when that batch is recovered or redone.
    pub fn open(path: &Path) -> Result<Self, DedupError> {
        let err = |source| DedupError { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(err)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(err)?;
        let whole = buf.len() / 16 * 16;
        if whole != buf.len() {
            file.set_len(whole as u64).map_err(err)?;
        }
        let committed =
            buf[..whole].chunks_exact(16).map(|c| u128::from_le_bytes(c.try_into().unwrap_or([0; 16]))).collect();
        Ok(EmbeddedDedup { path: path.to_path_buf(), file, committed, reserved: HashSet::new() })
    }

    /// Committed keys.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    pub fn is_committed(&self, key: KeyDigest) -> bool {
        self.committed.contains(&key)
    }

    /// Claims `key` for a batch: true if it is new (neither committed nor claimed by a batch in flight).
    pub fn reserve(&mut self, key: KeyDigest) -> bool {
        !self.committed.contains(&key) && self.reserved.insert(key)
    }

    /// The batch holding these keys failed: they are new again.
    pub fn release(&mut self, keys: &[KeyDigest]) {
        for k in keys {
            self.reserved.remove(k);
        }
    }

    /// The batch holding these keys is committed: persist them (fsync) and mark them seen.
    pub fn commit(&mut self, keys: &[KeyDigest]) -> Result<(), DedupError> {
        let mut buf = Vec::with_capacity(keys.len() * 16);
        for k in keys {
            if !self.committed.contains(k) {
                buf.extend_from_slice(&k.to_le_bytes());
            }
        }
        let err = |source| DedupError { path: self.path.clone(), source };
        self.file.write_all(&buf).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        for k in keys {
            self.reserved.remove(k);
            self.committed.insert(*k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_commit_release_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dedup/keys.bin");
        let mut d = EmbeddedDedup::open(&path).expect("open");
        assert!(d.reserve(1) && d.reserve(2));
        assert!(!d.reserve(1), "a key in flight is not new twice");
        d.release(&[2]);
        assert!(d.reserve(2), "a released key is new again");
        d.commit(&[1, 2]).expect("commit");
        assert!(!d.reserve(1) && d.is_committed(2));
        drop(d);
        // A torn record at the end is dropped on open.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open file");
        f.write_all(&[7u8; 5]).expect("torn write");
        let d = EmbeddedDedup::open(&path).expect("reopen");
        assert_eq!(d.len(), 2);
        assert!(d.is_committed(1) && d.is_committed(2));
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 32);
    }
}
