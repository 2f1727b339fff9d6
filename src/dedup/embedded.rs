//! The embedded dedup store: the exact set of committed keys, kept in memory as 128-bit digests and persisted in
//! the lake (`dedup/keys.bin`, append-only, fsynced), with the applied commits beside it (`dedup/applied.log`).
//! Exact: a positive answer is certain. Memory grows with the keys (16 bytes each plus the set's overhead), which
//! suits one machine's history; a fleet shares the Redis filter instead.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{DedupError, DedupKey, DedupStore, KeyDigest, PartitionStats};

pub struct EmbeddedDedup {
    dir: PathBuf,
    generation: String,
    state: Mutex<State>,
}

struct State {
    keys_file: File,
    applied_file: File,
    keys: HashSet<KeyDigest>,
    applied: HashSet<String>,
}

impl EmbeddedDedup {
    /// Opens (creating) the store in `dir`. A torn last record (a crash mid-append) is dropped: its commit was not
    /// marked applied, so recovery re-adds its keys.
    pub fn open(dir: &Path) -> Result<Self, DedupError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DedupError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let keys_path = dir.join("keys.bin");
        let mut keys_file =
            OpenOptions::new().create(true).read(true).append(true).open(&keys_path).map_err(err(&keys_path))?;
        let mut buf = Vec::new();
        keys_file.read_to_end(&mut buf).map_err(err(&keys_path))?;
        let whole = buf.len() / 16 * 16;
        if whole != buf.len() {
            keys_file.set_len(whole as u64).map_err(err(&keys_path))?;
        }
        let keys =
            buf[..whole].chunks_exact(16).map(|c| u128::from_le_bytes(c.try_into().unwrap_or([0; 16]))).collect();

        let applied_path = dir.join("applied.log");
        let mut applied_file =
            OpenOptions::new().create(true).read(true).append(true).open(&applied_path).map_err(err(&applied_path))?;
        let mut text = String::new();
        applied_file.read_to_string(&mut text).map_err(err(&applied_path))?;
        // Only whole lines count: a torn last line is an unmarked commit.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete != text.len() {
            applied_file.set_len(complete as u64).map_err(err(&applied_path))?;
        }
        let applied = text[..complete].lines().map(str::to_owned).collect();

        let gen_path = dir.join("generation");
        let generation = match std::fs::read_to_string(&gen_path) {
            Ok(g) if !g.trim().is_empty() => g.trim().to_owned(),
            _ => {
                let g = uuid::Uuid::new_v4().to_string();
                std::fs::write(&gen_path, &g).map_err(err(&gen_path))?;
                g
            }
        };
        Ok(EmbeddedDedup {
            dir: dir.to_path_buf(),
            generation,
            state: Mutex::new(State { keys_file, applied_file, keys, applied }),
        })
    }

    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.state.lock().map_or(0, |s| s.keys.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, DedupError> {
        self.state.lock().map_err(|_| DedupError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("the store's lock was poisoned by a panic"),
        })
    }
}

impl DedupStore for EmbeddedDedup {
    async fn contains(&self, keys: &[DedupKey]) -> Result<Vec<bool>, DedupError> {
        let state = self.lock()?;
        Ok(keys.iter().map(|k| state.keys.contains(&k.digest)).collect())
    }

    async fn add(&self, keys: &[DedupKey]) -> Result<(), DedupError> {
        let mut state = self.lock()?;
        let mut buf = Vec::with_capacity(keys.len() * 16);
        let mut seen = HashSet::with_capacity(keys.len());
        for k in keys {
            if !state.keys.contains(&k.digest) && seen.insert(k.digest) {
                buf.extend_from_slice(&k.digest.to_le_bytes());
            }
        }
        let path = self.dir.join("keys.bin");
        let err = |source| DedupError::Io { path: path.clone(), source };
        state.keys_file.write_all(&buf).map_err(err)?;
        state.keys_file.sync_data().map_err(err)?;
        state.keys.extend(seen);
        Ok(())
    }

    async fn mark_applied(&self, commits: &[String]) -> Result<(), DedupError> {
        let mut state = self.lock()?;
        let mut text = String::new();
        for c in commits {
            if !state.applied.contains(c) {
                text.push_str(c);
                text.push('\n');
            }
        }
        let path = self.dir.join("applied.log");
        let err = |source| DedupError::Io { path: path.clone(), source };
        state.applied_file.write_all(text.as_bytes()).map_err(err)?;
        state.applied_file.sync_data().map_err(err)?;
        state.applied.extend(commits.iter().cloned());
        Ok(())
    }

    async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        let state = self.lock()?;
        Ok(commits.iter().map(|c| state.applied.contains(c)).collect())
    }

    async fn stats(&self) -> Result<Vec<PartitionStats>, DedupError> {
        let n = self.len() as u64;
        Ok(vec![PartitionStats {
            partition: "all".into(),
            adds: n,
            estimated_keys: n as f64,
            capacity: u64::MAX,
            fill: 0.0,
            fp_now: 0.0,
            memory_bytes: n * 16,
            over_capacity: false,
        }])
    }

    fn exact(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("embedded (exact key set in {})", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn key(d: u128) -> DedupKey {
        DedupKey { digest: d, date: NaiveDate::from_ymd_opt(2026, 1, 2).expect("date") }
    }

    #[tokio::test]
    async fn add_mark_and_reopen_dropping_torn_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dedup");
        let d = EmbeddedDedup::open(&path).expect("open");
        let generation = d.generation().to_owned();
        assert_eq!(d.contains(&[key(1), key(2)]).await.expect("contains"), [false, false]);
        d.add(&[key(1), key(2), key(1)]).await.expect("add");
        d.mark_applied(&["run/0".into()]).await.expect("mark");
        assert_eq!(d.contains(&[key(1), key(3)]).await.expect("contains"), [true, false]);
        drop(d);
        let append = |name: &str, bytes: &[u8]| {
            let mut f = OpenOptions::new().append(true).open(path.join(name)).expect("open file");
            f.write_all(bytes).expect("torn write");
        };
        append("keys.bin", &[7u8; 5]);
        append("applied.log", b"run/1");
        let d = EmbeddedDedup::open(&path).expect("reopen");
        assert_eq!(d.len(), 2);
        assert_eq!(d.generation(), generation);
        assert_eq!(d.applied(&["run/0".into(), "run/1".into()]).await.expect("applied"), [true, false]);
        assert_eq!(std::fs::metadata(path.join("keys.bin")).expect("meta").len(), 32);
    }
}
