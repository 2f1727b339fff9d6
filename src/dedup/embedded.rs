//! The embedded dedup store: the exact set of committed keys, as 128-bit digests in an LSM tree on local disk
//! (fjall, under `<lake>/dedup/store/`), with the applied commits and the index of the ledger's files beside it in
//! the same database.
//!
//! Exact: a positive answer is certain. Memory is bounded whatever the history: a commit's keys are written
//! straight to disk as a sorted table (a small add goes through a small memtable), compactions merge the tables,
//! and a lookup touches memory only through per-table Bloom filters and a fixed block cache. (The store held every
//! digest in a hash set before: ~40 bytes of RAM per key ingested.) One process opens it at a time; a fleet of
//! workers shares the Redis filter instead.

use std::path::{Path, PathBuf};

use fjall::config::PartitioningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{DedupError, DedupKey, DedupStore, Holding, PartitionStats};

/// The block cache, shared by both keyspaces: most of the store's memory. A short run never fills it and a long one
/// does (heap profiles: under 1 MB of blocks early in an ingest, about 10 MB once the store is large), so it is kept
/// small: 4 MiB rather than 8, for about 6% slower lookups at 15 million keys (`examples/dedup_memory`).
const CACHE_BYTES: u64 = 4 << 20;
/// A memtable is written out as a sorted table once it holds this much. Keys bypass it (see [`ingest_sorted`]); it
/// holds only applied-commit marks and keys imported from the earlier layout.
const MEMTABLE_BYTES: u64 = 4 << 20;
/// The journal is the smallest fjall allows; memtables flush long before it fills.
const JOURNAL_BYTES: u64 = 64 << 20;
/// The file index's record of the ledger snapshot it holds: not 16 bytes long, so never a file id.
const LEDGER_MARK: &[u8] = b"ledger-synced-to-snapshot";
/// Which lake's ledger the index holds (its table's UUID), and the latest ledger sequence number it was brought up
/// to: see [`EmbeddedDedup::lake_record`]. Neither is 16 bytes long.
const LEDGER_TABLE: &[u8] = b"ledger-table-uuid";
const LEDGER_SEQUENCE: &[u8] = b"ledger-synced-sequence";
/// Adds of at least this many keys (an ingest's commit: up to 2,000 files' keys) are written as a table of their
/// own (see [`ingest_sorted`]); smaller ones go through the memtable, so that many small adds (a trickle of small
/// commits) do not leave a table each.
const INGEST_MIN_KEYS: usize = 10_000;
/// An add written as a table waits (up to [`L0_WAIT`]) while the newest level holds more tables than this, so that
/// lookups, which probe each of them, stay cheap when adds outpace compaction.
const L0_MAX_TABLES: usize = 16;
const L0_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// See [`EmbeddedDedup::internals`].
#[derive(Debug, Clone, Copy)]
pub struct StoreInternals {
    pub tables: usize,
    pub l0_tables: usize,
    pub sealed_memtables: usize,
    pub write_buffer_bytes: u64,
    pub cache_bytes: u64,
    pub disk_bytes: u64,
}

pub struct EmbeddedDedup {
    dir: PathBuf,
    generation: String,
    db: Database,
    keys: Keyspace,
    applied: Keyspace,
    /// The ledger's files, as the ingest's 128-bit file ids, and [`LEDGER_MARK`]: see [`EmbeddedDedup::files_add`].
    files: Keyspace,
}

impl EmbeddedDedup {
    /// Opens (creating) the store in `dir`. A store written by an earlier poslake (`keys.bin`, `applied.log`) is
    /// imported once; a torn last record there (a crash mid-append) is dropped: its commit was not marked applied,
    /// so recovery re-adds its keys.
    pub fn open(dir: &Path) -> Result<Self, DedupError> {
        Self::open_writable(dir).map_err(not_writable)
    }

    fn open_writable(dir: &Path) -> Result<Self, DedupError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let store = dir.join("store");
        let db = Database::builder(&store)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            // One background thread flushes and compacts: the cores are the parsers'.
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => DedupError::InUse(store.clone()),
                e => fjall_err(&store, e),
            })?;
        // Filters and indexes are partitioned at every level, so a lookup loads through the cache only the small
        // partition it needs. Unpartitioned, a table's filter is one block of megabytes, and a cache too small to keep
        // it reloads it for every key: writes then stall behind flushes (measured: 3,000 keys/s from 1 million keys
        // on, against 200,000 partitioned).
        let options = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .filter_block_partitioning_policy(PartitioningPolicy::all(true))
                .index_block_partitioning_policy(PartitioningPolicy::all(true))
        };
        let keys = db.keyspace("keys", options).map_err(|e| fjall_err(&store, e))?;
        let applied = db.keyspace("applied", options).map_err(|e| fjall_err(&store, e))?;
        let files = db.keyspace("files", options).map_err(|e| fjall_err(&store, e))?;

        let gen_path = dir.join("generation");
        let generation = match std::fs::read_to_string(&gen_path) {
            Ok(g) if !g.trim().is_empty() => g.trim().to_owned(),
            _ => {
                let g = uuid::Uuid::new_v4().to_string();
                std::fs::write(&gen_path, &g).map_err(io(&gen_path))?;
                g
            }
        };
        let store = EmbeddedDedup { dir: dir.to_path_buf(), generation, db, keys, applied, files };
        store.import_legacy()?;
        Ok(store)
    }

    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// Keys held (an estimate while tables are being merged: a key written twice may count twice).
    pub fn len(&self) -> usize {
        self.keys.approximate_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ledger snapshot the file index was last brought up to (see [`Self::files_add`]), if any.
    pub fn files_synced_to(&self) -> Result<Option<i64>, DedupError> {
        let mark = self.files.get(LEDGER_MARK).map_err(|e| self.err(e))?;
        Ok(mark.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(i64::from_le_bytes))
    }

    /// Adds files to the index of files the ledger holds (an exact set on disk, beside the keys: the ingest's
    /// discovery asks it instead of holding every file ever ingested in memory), then records that the index
    /// holds the ledger up to `synced_to`. Both are durable before it returns, the files first.
    pub async fn files_add(&self, ids: Vec<u128>, synced_to: Option<i64>) -> Result<(), DedupError> {
        let files = self.files.clone();
        let digests: Vec<[u8; 16]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        self.blocking(move |db, _, _| {
            if digests.len() >= INGEST_MIN_KEYS {
                ingest_sorted(&files, digests)?;
            } else if !digests.is_empty() {
                insert_durably(db, &files, digests)?;
            }
            match synced_to {
                Some(snapshot) => {
                    files.insert(LEDGER_MARK, snapshot.to_le_bytes())?;
                    db.persist(PersistMode::SyncData)
                }
                None => Ok(()),
            }
        })
        .await
    }

    /// The ledger this index was last brought up to: its table's UUID, and the highest sequence number.
    pub fn lake_record(&self) -> Result<Option<(String, i64)>, DedupError> {
        let table = self.files.get(LEDGER_TABLE).map_err(|e| self.err(e))?;
        let sequence = self.files.get(LEDGER_SEQUENCE).map_err(|e| self.err(e))?;
        Ok(table.map(|t| {
            let sequence = sequence.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map_or(0, i64::from_le_bytes);
            (String::from_utf8_lossy(&t).into_owned(), sequence)
        }))
    }

    /// Records the ledger the index holds (see [`Self::lake_record`]), keeping the highest sequence; leaves a record
    /// of another ledger table as it is, and returns that table.
    pub async fn record_lake(&self, table: &str, sequence: i64) -> Result<Option<String>, DedupError> {
        let held = self.lake_record()?;
        if let Some((other, _)) = held.as_ref().filter(|(t, _)| t != table) {
            return Ok(Some(other.clone()));
        }
        let higher = held.is_none_or(|(_, held)| sequence > held);
        let (files, table) = (self.files.clone(), table.to_owned());
        self.blocking(move |db, _, _| {
            files.insert(LEDGER_TABLE, table.as_bytes())?;
            if higher {
                files.insert(LEDGER_SEQUENCE, sequence.to_le_bytes())?;
            }
            db.persist(PersistMode::SyncData)
        })
        .await?;
        Ok(None)
    }

    /// Which of these files the index holds.
    pub async fn files_contain(&self, ids: Vec<u128>) -> Result<Vec<bool>, DedupError> {
        let files = self.files.clone();
        self.blocking(move |_, _, _| ids.iter().map(|id| files.contains_key(id.to_be_bytes())).collect()).await
    }

    /// The LSM tree's shape and what it holds in memory now: for `examples/dedup_memory` and diagnostics.
    pub fn internals(&self) -> StoreInternals {
        StoreInternals {
            tables: self.keys.table_count(),
            l0_tables: self.keys.l0_table_count(),
            sealed_memtables: self.keys.sealed_memtable_count(),
            write_buffer_bytes: self.db.write_buffer_size(),
            cache_bytes: self.db.cache_size(),
            disk_bytes: self.keys.disk_space(),
        }
    }

    /// Moves the files of the earlier layout into the database, then renames them `*.imported`: an import cut
    /// short is simply redone (adds are idempotent).
    fn import_legacy(&self) -> Result<(), DedupError> {
        let keys_path = self.dir.join("keys.bin");
        if keys_path.exists() {
            let bytes = std::fs::read(&keys_path).map_err(io(&keys_path))?;
            // Only whole records count: a torn last one belongs to an unmarked commit. Batches of 100,000 keys.
            let whole = &bytes[..bytes.len() / 16 * 16];
            for chunk in whole.chunks(16 * 100_000) {
                let mut batch = self.db.batch();
                for c in chunk.chunks_exact(16) {
                    let mut d = [0u8; 16];
                    d.copy_from_slice(c);
                    batch.insert(&self.keys, u128::from_le_bytes(d).to_be_bytes(), []);
                }
                batch.commit().map_err(|e| self.err(e))?;
            }
        }
        let applied_path = self.dir.join("applied.log");
        if applied_path.exists() {
            let text = std::fs::read_to_string(&applied_path).map_err(io(&applied_path))?;
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            let mut batch = self.db.batch();
            for line in text[..complete].lines() {
                batch.insert(&self.applied, line.as_bytes(), []);
            }
            batch.commit().map_err(|e| self.err(e))?;
        }
        if keys_path.exists() || applied_path.exists() {
            self.db.persist(PersistMode::SyncData).map_err(|e| self.err(e))?;
            for path in [&keys_path, &applied_path] {
                if path.exists() {
                    std::fs::rename(path, path.with_extension("imported")).map_err(io(path))?;
                }
            }
            tracing::info!(keys = self.len(), dir = %self.dir.display(), "imported the embedded dedup store's earlier files");
        }
        Ok(())
    }

    fn err(&self, e: fjall::Error) -> DedupError {
        fjall_err(&self.dir.join("store"), e)
    }

    /// Runs a blocking store call off the async threads (lookups may read tables from disk).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &Keyspace, &Keyspace) -> Result<T, fjall::Error> + Send + 'static,
    ) -> Result<T, DedupError> {
        let (db, keys, applied) = (self.db.clone(), self.keys.clone(), self.applied.clone());
        tokio::task::spawn_blocking(move || f(&db, &keys, &applied))
            .await
            .map_err(|e| DedupError::Io { path: self.dir.clone(), source: std::io::Error::other(e.to_string()) })?
            .map_err(|e| self.err(e))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DedupError + '_ {
    move |source| DedupError::Io { path: path.to_path_buf(), source }
}

/// Inserts the keys (with empty values) in one batch and syncs the journal before returning.
fn insert_durably<K: Into<fjall::UserKey>>(
    db: &Database,
    keyspace: &Keyspace,
    keys: impl IntoIterator<Item = K>,
) -> Result<(), fjall::Error> {
    let mut batch = db.batch();
    for k in keys {
        batch.insert(keyspace, k, []);
    }
    batch.commit()?;
    db.persist(PersistMode::SyncData)
}

/// Writes one batch of keys as a new sorted table, bypassing the memtable and the journal; durable on return (the
/// table file, its directory and the tree's version are fsynced).
///
/// Why not inserts: every key inserted is a skip-list node in a memtable until a flush writes it out, and with one
/// background thread a flush can wait behind a long compaction. Those memtables were the part of the process's
/// heap that grew with history: at the peak of a 100,000-file ingest (7.4 million keys) 30 MB of live heap, against
/// 14.5 MB in a 10,000-file one (jemalloc heap profiles). A batch here is one commit's keys, sorted in memory it
/// already holds; the tables it leaves are merged by the usual compactions.
fn ingest_sorted(keyspace: &Keyspace, mut digests: Vec<[u8; 16]>) -> Result<(), fjall::Error> {
    let waiting = std::time::Instant::now();
    while keyspace.l0_table_count() > L0_MAX_TABLES && waiting.elapsed() < L0_WAIT {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The ingestion requires strictly ascending keys; big-endian bytes sort as the digests do.
    digests.sort_unstable();
    digests.dedup();
    let mut ingestion = keyspace.start_ingestion()?;
    for d in digests {
        ingestion.write(d, [])?;
    }
    ingestion.finish()
}

/// fjall opens a store for writing, even to read it, so a lake on a read-only mount (or one this user may not write)
/// cannot be opened: said so, with what to do instead, rather than as a bare I/O error.
fn not_writable(e: DedupError) -> DedupError {
    match e {
        DedupError::Io { path, source }
            if matches!(
                source.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            DedupError::NotWritable { path, source }
        }
        e => e,
    }
}

fn fjall_err(path: &Path, e: fjall::Error) -> DedupError {
    match e {
        // An I/O error inside the LSM tree (a full disk) is named as such, not as fjall's Debug form.
        fjall::Error::Io(source) | fjall::Error::Storage(fjall::LsmError::Io(source)) => {
            DedupError::Io { path: path.to_path_buf(), source }
        }
        e => DedupError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) },
    }
}

impl DedupStore for EmbeddedDedup {
    async fn contains(&self, keys: &[DedupKey]) -> Result<Vec<bool>, DedupError> {
        let digests: Vec<[u8; 16]> = keys.iter().map(|k| k.digest.to_be_bytes()).collect();
        self.blocking(move |_, keys, _| digests.iter().map(|d| keys.contains_key(d)).collect()).await
    }

    async fn add(&self, keys: &[DedupKey]) -> Result<(), DedupError> {
        if keys.is_empty() {
            return Ok(());
        }
        let digests: Vec<[u8; 16]> = keys.iter().map(|k| k.digest.to_be_bytes()).collect();
        // Durable before returning: the commit is marked applied next, and a mark must never outlive its keys.
        if digests.len() >= INGEST_MIN_KEYS {
            self.blocking(move |_, keys, _| ingest_sorted(keys, digests)).await
        } else {
            self.blocking(move |db, keys, _| insert_durably(db, keys, digests)).await
        }
    }

    /// One set of marks beside one set of keys: what the keys are does not matter.
    async fn mark_applied(&self, commits: &[String], _: Holding<'_>) -> Result<(), DedupError> {
        let commits: Vec<Vec<u8>> = commits.iter().map(|c| c.as_bytes().to_vec()).collect();
        self.blocking(move |db, _, applied| insert_durably(db, applied, commits)).await
    }

    async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        let commits = commits.to_vec();
        self.blocking(move |_, _, applied| commits.iter().map(|c| applied.contains_key(c)).collect()).await
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
            // What the store holds in memory (its memtables and cached blocks); its size on disk is in `internals`.
            memory_bytes: self.db.write_buffer_size() + self.db.cache_size(),
            over_capacity: false,
            primary: None,
            claims: 0,
        }])
    }

    fn exact(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("embedded (exact key set on disk in {})", self.dir.join("store").display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn key(d: u128) -> DedupKey {
        DedupKey { digest: d, date: NaiveDate::from_ymd_opt(2026, 1, 2).expect("date") }
    }

    #[test]
    fn a_store_that_cannot_be_written_says_so_and_what_to_do() {
        let io = |kind| DedupError::Io { path: "/lake/dedup/store".into(), source: std::io::Error::from(kind) };
        for kind in [std::io::ErrorKind::ReadOnlyFilesystem, std::io::ErrorKind::PermissionDenied] {
            let message = not_writable(io(kind)).to_string();
            assert!(
                message.contains("/lake/dedup/store") && message.contains("where the lake is writable"),
                "{message}"
            );
        }
        assert!(matches!(not_writable(io(std::io::ErrorKind::NotFound)), DedupError::Io { .. }));
    }

    #[tokio::test]
    async fn add_mark_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dedup");
        let d = EmbeddedDedup::open(&path).expect("open");
        let generation = d.generation().to_owned();
        assert_eq!(d.contains(&[key(1), key(2)]).await.expect("contains"), [false, false]);
        d.add(&[key(1), key(2), key(1)]).await.expect("add");
        d.mark_applied(&["run/0".into()], Holding::Everything).await.expect("mark");
        assert_eq!(d.contains(&[key(1), key(3)]).await.expect("contains"), [true, false]);
        drop(d);
        let d = EmbeddedDedup::open(&path).expect("reopen");
        assert_eq!(d.generation(), generation);
        assert_eq!(d.contains(&[key(2), key(3)]).await.expect("contains"), [true, false]);
        assert_eq!(d.applied(&["run/0".into(), "run/1".into()]).await.expect("applied"), [true, false]);
    }

    #[tokio::test]
    async fn a_second_process_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = EmbeddedDedup::open(dir.path()).expect("open");
        let second = EmbeddedDedup::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(second.contains("open in another process"), "{second}");
    }

    /// Many keys, in adds large enough to be written as tables of their own and in small ones that go through the
    /// memtable and its flushes, with keys repeated inside an add and across adds: every one found again after a
    /// reopen, and none that was never added (the store is exact, whatever its tables' Bloom filters say).
    #[tokio::test]
    async fn many_keys_survive_flushes_and_stay_exact() {
        let n = 300_000u128;
        let spread = |i: u128| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834);
        for chunk_len in [50_000, INGEST_MIN_KEYS - 1] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let d = EmbeddedDedup::open(dir.path()).expect("open");
                let all: Vec<DedupKey> = (0..n).map(|i| key(spread(i))).collect();
                for chunk in all.chunks(chunk_len) {
                    // Unsorted, with the chunk's first keys twice and the previous chunk's last key again.
                    let mut add: Vec<DedupKey> = chunk.iter().rev().copied().collect();
                    add.extend_from_slice(&chunk[..10]);
                    d.add(&add).await.expect("add");
                    d.add(&chunk[chunk.len() - 1..]).await.expect("add again");
                }
            }
            let d = EmbeddedDedup::open(dir.path()).expect("reopen");
            let added: Vec<DedupKey> = (0..n).step_by(97).map(|i| key(spread(i))).collect();
            assert!(d.contains(&added).await.expect("contains").iter().all(|b| *b), "chunks of {chunk_len}");
            let never: Vec<DedupKey> = (n..n + 100_000).map(|i| key(spread(i))).collect();
            assert!(d.contains(&never).await.expect("contains").iter().all(|b| !*b), "chunks of {chunk_len}");
        }
    }

    /// A store written in the earlier layout (`keys.bin` of little-endian digests, `applied.log`), torn records
    /// included, is imported once and its files set aside.
    #[tokio::test]
    async fn the_earlier_layout_is_imported_dropping_torn_records() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut keys = Vec::new();
        for d in [5u128, 6] {
            keys.extend_from_slice(&d.to_le_bytes());
        }
        keys.extend_from_slice(&[7u8; 5]);
        std::fs::write(dir.path().join("keys.bin"), &keys).expect("keys");
        let mut log = std::fs::File::create(dir.path().join("applied.log")).expect("log");
        log.write_all(b"run/0\nrun/1").expect("write");
        drop(log);
        let d = EmbeddedDedup::open(dir.path()).expect("open");
        assert_eq!(d.contains(&[key(5), key(6), key(7)]).await.expect("contains"), [true, true, false]);
        assert_eq!(d.applied(&["run/0".into(), "run/1".into()]).await.expect("applied"), [true, false]);
        assert!(!dir.path().join("keys.bin").exists() && dir.path().join("keys.imported").exists());
        drop(d);
        let d = EmbeddedDedup::open(dir.path()).expect("reopen");
        assert_eq!(d.contains(&[key(5)]).await.expect("contains"), [true]);
    }
}
