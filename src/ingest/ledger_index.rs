//! The file ledger's index: which staged files are ingested already, so that discovery skips them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, Int64Array, StringArray};
use futures::StreamExt;

use super::IngestError;
use super::staging::{StagedFile, StagingError};
use crate::dedup::{Dedup, DedupError, FileIndex, LedgerMark, Vouch};
use crate::lake::{Outcome, Warehouse};

/// The files the ledger holds, known by a 128-bit digest of (path, size) (two files collide with a chance of 2^-128
/// per pair), so that discovery skips them.
///
/// The index lives beside the keys ([`FileIndex`]): on disk in the embedded store, in Redis for a Redis store (where
/// the workers that share the lake share it), so that memory does not grow with the files ever ingested. It is
/// brought up to the ledger's current snapshot at start, reading only the ledger files added since the snapshot it
/// last recorded (all of the ledger if it has none, or that snapshot is gone); see docs/performance.md ("Memory
/// that grows with history").
pub(super) struct LedgerIndex {
    pub(super) files: FileIndex,
    /// The sequence of the ledger snapshot this process last brought the index up to, if the ledger had one.
    synced: Mutex<Option<i64>>,
}

/// A ledger row of a file deferred to a later run: the file's id and the run that deferred it.
type Deferral = (u128, String);

/// Deferrals counted per file at most: a file deferred by more runs than any `max_deferred_runs` allows is given up
/// anyway, so its count need not go further.
const MAX_COUNTED: u32 = crate::config::MAX_DEFERRED_RUNS;
/// Marks asked of the index at a time when counting deferrals.
const DEFERRALS_CHUNK: usize = 10_000;

/// The ledger columns the index is built from.
const COLUMNS: [&str; 4] = ["path", "bytes", "outcome", "run_id"];

/// Tries of a sync whose mark does not stand (each adds its files again), before the run fails.
const SYNC_ATTEMPTS: u32 = 3;
/// File ids per add when bringing the index up to date.
const LEDGER_CHUNK: usize = 100_000;
/// Listed files looked up in the index at a time.
pub(super) const LOOKUP_CHUNK: usize = 512;

impl LedgerIndex {
    pub(super) fn new(files: FileIndex) -> Self {
        LedgerIndex { files, synced: Mutex::new(None) }
    }

    pub(super) fn id(path: &str, size: u64) -> u128 {
        let mut h = blake3::Hasher::new();
        h.update(&size.to_le_bytes());
        h.update(path.as_bytes());
        Self::first_128_bits(h)
    }

    fn first_128_bits(h: blake3::Hasher) -> u128 {
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        u128::from_le_bytes(id)
    }

    pub(super) async fn load(
        warehouse: &Warehouse,
        dedup: &Arc<Dedup>,
        expected_files: u64,
    ) -> Result<Self, IngestError> {
        let index = LedgerIndex::new(FileIndex::open(dedup.clone(), expected_files).await?);
        index.sync(warehouse).await?;
        if let Some(stats) = index.files.stats().await?
            && stats.files > stats.capacity
        {
            tracing::warn!(
                files = stats.files,
                capacity = stats.capacity,
                "the Redis file index holds more files than it was sized for: its buckets leave Redis's compact \
                 encoding and take several times the memory (see docs/dedup.md, \"The file index\")"
            );
        }
        Ok(index)
    }

    /// Brings the index up to the ledger's current snapshot (at start, and before snapshots are expired, so that
    /// its mark stays in the kept history), and returns that snapshot.
    pub(super) async fn sync(&self, warehouse: &Warehouse) -> Result<Option<i64>, IngestError> {
        let files = &self.files;
        // The record first: another worker's sync may record a later ledger at any moment, and a ledger loaded
        // before that would look older than its store. Loaded after, it holds at least what any record says.
        let record = files.lake_record().await?;
        let ledger = warehouse.load("file_ledger").await?;
        let table = ledger.metadata().uuid().to_string();
        refuse_a_store_of_another_lake(&ledger, record, &files.url())?;
        let Some(current) = ledger
            .metadata()
            .current_snapshot()
            .map(|s| LedgerMark { snapshot_id: s.snapshot_id(), sequence: s.sequence_number() })
        else {
            // A new lake claims the store at once: another lake started on it later is refused.
            if let Some(held) = files.record_lake(&table, 0).await? {
                return Err(another_lake(&files.url(), &held, &table));
            }
            return Ok(None);
        };
        let synced = files.synced_to().await?;
        let mut attempt = 0;
        while synced != Some(current.snapshot_id) {
            attempt += 1;
            let mark = files.start_sync(current).await?;
            let added = match synced {
                Some(id) => Warehouse::files_added_after(&ledger, id).await?,
                None => None,
            };
            if added.is_none() && attempt == 1 {
                tracing::info!("bringing the file index up to the ledger's current snapshot: reading the whole ledger");
            }
            let mut pending = Vec::new();
            match added {
                // The ledger files each later snapshot added (a file rewritten by compaction is added again: harmless).
                Some(paths) => {
                    for path in paths {
                        for batch in Warehouse::read_table_file(&ledger, &path, &COLUMNS).await? {
                            let (done, deferred) = Self::ids_of(&batch)?;
                            pending.extend(done);
                            self.count_deferrals(deferred).await?;
                        }
                        if pending.len() >= LEDGER_CHUNK {
                            files.add(std::mem::take(&mut pending)).await?;
                        }
                    }
                }
                None => {
                    let mut batches = warehouse.scan_columns("file_ledger", &COLUMNS).await?;
                    while let Some(batch) = batches.next().await {
                        let (done, deferred) = Self::ids_of(&batch?)?;
                        pending.extend(done);
                        self.count_deferrals(deferred).await?;
                        if pending.len() >= LEDGER_CHUNK {
                            files.add(std::mem::take(&mut pending)).await?;
                        }
                    }
                }
            }
            if files.finish_sync(pending, &mark).await? {
                break;
            }
            // The same files again (from the same snapshot: the mark just made may say the current one), so that a
            // server that lost some of them holds them before the next mark.
            if attempt == SYNC_ATTEMPTS {
                return Err(IngestError::Dedup(DedupError::Redis {
                    url: files.url(),
                    error: format!(
                        "the file index kept losing files while it was brought up to the ledger ({attempt} tries: \
                         a round trip failed, or the store lost data, each time); a mark made then could vouch for \
                         files the server lost"
                    ),
                }));
            }
            tracing::warn!(
                attempt,
                "the file index may have lost files while it was brought up to the ledger (a Redis round trip \
                 failed, or the store lost data): they are added again before it is marked"
            );
        }
        if let Some(held) = files.record_lake(&table, current.sequence).await? {
            return Err(another_lake(&files.url(), &held, &table));
        }
        if let Ok(mut synced) = self.synced.lock() {
            *synced = Some(current.sequence);
        }
        Ok(Some(current.snapshot_id))
    }

    /// Whether the index's answers can be taken as they are: the embedded store's always; a Redis store's if its
    /// mark (read after the answers; on a cluster spread by period, each group's) is of its current generation and
    /// holds at least what this process brought it up to. A Redis that lost its data while the run goes on
    /// (restarted empty, flushed, back without its last writes, one primary of a cluster losing its groups) would
    /// otherwise answer "not ingested" for files ingested before, and a file listed after the loss would be ingested
    /// again: its transactions quarantined as duplicates, but a second ledger row.
    fn vouched(&self, vouch: &Option<Vouch>) -> bool {
        let synced = self.synced.lock().ok().and_then(|s| *s);
        match vouch {
            None => true,
            // Nothing was in the ledger at start: the index has nothing to skip that this run did not list itself.
            Some(_) if synced.is_none() => true,
            Some(Vouch::Mark { sequence, .. }) => synced.is_none_or(|s| *sequence >= s),
            Some(Vouch::Nothing { .. }) => false,
        }
    }

    /// The ids of the files a batch of ledger rows holds as done, and the rows of files deferred to a later run. The
    /// ledger is poslake's own table, so columns that are missing or of another type mean it was altered outside
    /// poslake: an error, rather than files silently read as new.
    fn ids_of(batch: &arrow_array::RecordBatch) -> Result<(Vec<u128>, Vec<Deferral>), IngestError> {
        let string = |name| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let sizes = batch.column_by_name("bytes").and_then(|c| c.as_any().downcast_ref::<Int64Array>());
        match (string("path"), sizes, string("outcome"), string("run_id")) {
            (Some(paths), Some(sizes), Some(outcomes), Some(runs)) => {
                let (mut done, mut deferred) = (Vec::with_capacity(paths.len()), Vec::new());
                for i in 0..paths.len() {
                    let id = Self::id(paths.value(i), sizes.value(i) as u64);
                    if outcomes.value(i) == Outcome::Deferred.as_str() {
                        deferred.push((id, runs.value(i).to_owned()));
                    } else {
                        done.push(id);
                    }
                }
                Ok((done, deferred))
            }
            _ => Err(IngestError::Lake(crate::lake::LakeError::Schema {
                table: "file_ledger",
                reason: format!(
                    "expected string columns `path`, `outcome` and `run_id` and a long column `bytes`, found {}",
                    batch.schema()
                ),
            })),
        }
    }

    /// The index's marks of deferrals, apart from file ids by their own hash domain: one per run that deferred a
    /// file, so that a ledger row read twice (a sync cut before its mark) is counted once, and the `k`-th of a
    /// file's count (`k` from 1).
    fn run_mark(id: u128, run_id: &str) -> u128 {
        Self::mark(id, b"deferred by", run_id.as_bytes())
    }

    fn count_mark(id: u128, k: u32) -> u128 {
        Self::mark(id, b"deferral", &k.to_le_bytes())
    }

    fn mark(id: u128, domain: &[u8], what: &[u8]) -> u128 {
        let mut h = blake3::Hasher::new_derive_key("poslake file ledger deferrals");
        h.update(domain);
        h.update(&id.to_le_bytes());
        h.update(what);
        Self::first_128_bits(h)
    }

    /// Counts these deferrals in the index: per file, one more for each run not counted yet. Each run's mark is
    /// added before the count it raises, so a sync cut between the two counts that run never, rather than twice:
    /// the file is then tried by one more run than the limit, and never given up early. Asked in chunks of files
    /// (a lake whose disk filled defers every file of a run), a few calls to the index per chunk.
    async fn count_deferrals(&self, deferred: Vec<Deferral>) -> Result<(), IngestError> {
        let marks: BTreeSet<(u128, u128)> = deferred.iter().map(|(id, run)| (*id, Self::run_mark(*id, run))).collect();
        let marks: Vec<(u128, u128)> = marks.into_iter().collect();
        for chunk in marks.chunks(DEFERRALS_CHUNK) {
            let counted = self.files.contain(chunk.iter().map(|(_, m)| *m).collect()).await?;
            // Per file, the marks of runs not counted yet.
            let mut new: BTreeMap<u128, Vec<u128>> = BTreeMap::new();
            for (&(id, mark), counted) in chunk.iter().zip(counted) {
                if !counted {
                    new.entry(id).or_default().push(mark);
                }
            }
            if new.is_empty() {
                continue;
            }
            let ids: Vec<u128> = new.keys().copied().collect();
            let before = self.counts(&ids).await?;
            let mut count_marks = Vec::new();
            for ((id, runs), before) in new.iter().zip(before) {
                let after = (before + runs.len() as u32).min(MAX_COUNTED);
                count_marks.extend((before + 1..=after).map(|k| Self::count_mark(*id, k)));
            }
            self.files.add(new.into_values().flatten().collect()).await?;
            self.files.add(count_marks).await?;
        }
        Ok(())
    }

    /// How many runs deferred each of these files before, as far as the index was brought up to the ledger.
    async fn counts(&self, ids: &[u128]) -> Result<Vec<u32>, IngestError> {
        let mut counts = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DEFERRALS_CHUNK / MAX_COUNTED as usize) {
            let marks: Vec<u128> =
                chunk.iter().flat_map(|id| (1..=MAX_COUNTED).map(|k| Self::count_mark(*id, k))).collect();
            let held = self.files.contain(marks).await?;
            // Counts are added in order, so the first one missing ends a file's count.
            counts.extend(held.chunks(MAX_COUNTED as usize).map(|h| h.iter().take_while(|h| **h).count() as u32));
        }
        Ok(counts)
    }

    /// Which of these files the ledger holds, by the index; an index no longer vouched for (see [`Self::vouched`])
    /// is brought up to the ledger again first.
    async fn known(&self, warehouse: &Warehouse, ids: Vec<u128>) -> Result<Vec<bool>, IngestError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (known, vouch) = self.files.contain_vouched(ids.clone()).await?;
        if self.vouched(&vouch) {
            return Ok(known);
        }
        tracing::warn!(
            "the file index no longer holds what it held (the dedup store lost data): reading the ledger into it \
             again before any listed file is skipped"
        );
        // A sync reads the whole ledger when the index's mark (any group's) is not of the store's generation, else
        // what later snapshots added. Its mark carries the generation read before its adds, so that the next lookup
        // is vouched for unless the store lost data again meanwhile.
        if let Ok(mut synced) = self.synced.lock() {
            *synced = None;
        }
        self.sync(warehouse).await?;
        Ok(self.files.contain(ids).await?)
    }

    /// How many earlier runs deferred this staged file.
    pub(super) async fn deferrals(&self, file: &StagedFile) -> Result<u32, IngestError> {
        let counts = self.counts(&[Self::id(&file.path, file.size)]).await?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// The listed files the ledger does not hold, in listing order; `skipped` counts the others.
    pub(super) async fn keep_new(
        &self,
        warehouse: &Warehouse,
        listed: Vec<Result<StagedFile, StagingError>>,
        skipped: &AtomicU64,
    ) -> Vec<Result<StagedFile, IngestError>> {
        let ids: Vec<u128> = listed.iter().flatten().map(|f| Self::id(&f.path, f.size)).collect();
        let known = match self.known(warehouse, ids).await {
            Ok(known) => known,
            Err(e) => return vec![Err(e)],
        };
        let mut known = known.into_iter();
        let mut out = Vec::with_capacity(listed.len());
        for f in listed {
            match f {
                Ok(_) if known.next().unwrap_or(false) => {
                    skipped.fetch_add(1, Ordering::Relaxed);
                }
                f => out.push(f.map_err(IngestError::from)),
            }
        }
        out
    }
}

/// Refuses a store whose file index holds another lake's ledger, or more of this one's than the lake has (restored
/// from an older copy, or its catalog.db alone): trusted, it would skip files the lake lacks (an audit saw a restored
/// lake skip every file ingested after its backup, their sales lost without a word). `record` is the store's
/// [`crate::dedup::Dedup::lake_record`], `ledger` the lake's `file_ledger` table.
pub(crate) fn refuse_a_store_of_another_lake(
    ledger: &iceberg::table::Table,
    record: Option<(String, i64)>,
    store: &str,
) -> Result<(), IngestError> {
    let table = ledger.metadata().uuid().to_string();
    let sequence = ledger.metadata().current_snapshot().map_or(0, |s| s.sequence_number());
    let why = match record {
        Some((held, _)) if held != table => return Err(another_lake(store, &held, &table)),
        Some((_, held)) if held > sequence => format!(
            "holds this lake's ledger up to sequence number {held}, and the lake's is at {sequence}: the lake is \
             older than its store"
        ),
        _ => return Ok(()),
    };
    Err(IngestError::StoreNotOfThisLake { store: store.to_owned(), why })
}

/// The refusal of `store`, whose record names the ledger table `held` of another lake (this lake's is `table`).
pub(crate) fn another_lake(store: &str, held: &str, table: &str) -> IngestError {
    let why = format!("holds the ledger of another lake (table {held}; this lake's is {table})");
    IngestError::StoreNotOfThisLake { store: store.to_owned(), why }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::LedgerIndex;
    use crate::dedup::{Dedup, EmbeddedDedup, FileIndex, LedgerMark};
    use crate::ingest::staging::StagedFile;

    fn file(path: &str, size: u64) -> StagedFile {
        StagedFile::new(path, size)
    }

    /// A file is known by its path and size.
    #[tokio::test]
    async fn the_ledger_index_knows_a_file_by_path_and_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedDedup::open(dir.path()).expect("open");
        let held = [("site=1/2026-11-26/a.xml", 1_000), ("x1", 23)];
        let ids: Vec<u128> = held.iter().map(|(p, s)| LedgerIndex::id(p, *s)).collect();
        let files = FileIndex::open(Arc::new(Dedup::Embedded(store)), 1).await.expect("index");
        let mark = files.start_sync(LedgerMark { snapshot_id: 7, sequence: 1 }).await.expect("mark");
        assert!(files.finish_sync(ids, &mark).await.expect("add"));
        assert_eq!(files.synced_to().await.expect("mark"), Some(7));
        let index = LedgerIndex::new(files);
        {
            let listed = vec![
                Ok(file("site=1/2026-11-26/a.xml", 1_000)),
                // A file re-sent with other contents is new.
                Ok(file("site=1/2026-11-26/a.xml", 1_001)),
                Ok(file("site=1/2026-11-26/b.xml", 1_000)),
                // The size is hashed apart from the path: digits moved between them make another file.
                Ok(file("x12", 3)),
                Ok(file("x1", 23)),
            ];
            let skipped = AtomicU64::new(0);
            let wh = crate::lake::Warehouse::open(&dir.path().join("lake")).await.expect("lake");
            let kept: Vec<String> =
                index.keep_new(&wh, listed, &skipped).await.into_iter().map(|f| f.expect("listed").path).collect();
            assert_eq!(kept, ["site=1/2026-11-26/a.xml", "site=1/2026-11-26/b.xml", "x12"]);
            assert_eq!(skipped.load(Ordering::Relaxed), 2);
        }
    }

    /// A ledger altered outside poslake is an error, not a ledger of no files (which would re-ingest everything).
    #[test]
    fn a_ledger_without_its_columns_is_an_error() {
        use arrow_array::{Int32Array, RecordBatch, StringArray};
        let good = RecordBatch::try_from_iter([
            ("path", Arc::new(StringArray::from(vec!["a.xml", "b.xml", "c.xml"])) as arrow_array::ArrayRef),
            ("bytes", Arc::new(arrow_array::Int64Array::from(vec![5_i64, 6, 7])) as _),
            ("outcome", Arc::new(StringArray::from(vec!["ingested", "deferred", "dead_letter"])) as _),
            ("run_id", Arc::new(StringArray::from(vec!["r1", "r1", "r2"])) as _),
        ])
        .expect("batch");
        // A file deferred to a later run is not held as done.
        let (done, deferred) = LedgerIndex::ids_of(&good).expect("ids");
        assert_eq!(done, [LedgerIndex::id("a.xml", 5), LedgerIndex::id("c.xml", 7)]);
        assert_eq!(deferred, [(LedgerIndex::id("b.xml", 6), "r1".to_owned())]);
        let altered = RecordBatch::try_from_iter([
            ("path", Arc::new(StringArray::from(vec!["a.xml"])) as arrow_array::ArrayRef),
            ("bytes", Arc::new(Int32Array::from(vec![5])) as _),
            ("outcome", Arc::new(StringArray::from(vec!["ingested"])) as _),
            ("run_id", Arc::new(StringArray::from(vec!["r1"])) as _),
        ])
        .expect("batch");
        let err = LedgerIndex::ids_of(&altered).expect_err("an Int32 `bytes` column");
        assert!(err.to_string().contains("file_ledger"), "{err}");
    }

    /// Each run that deferred a file counts once, however often its ledger row is read (a sync cut before its mark
    /// reads it again), and the count does not make the file done.
    #[tokio::test]
    async fn deferrals_are_counted_once_per_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedDedup::open(dir.path()).expect("open");
        let index = LedgerIndex::new(FileIndex::open(Arc::new(Dedup::Embedded(store)), 1).await.expect("index"));
        let (a, b) = (file("site=1/a.xml", 10), file("site=1/b.xml", 10));
        let (id_a, id_b) = (LedgerIndex::id(&a.path, a.size), LedgerIndex::id(&b.path, b.size));
        assert_eq!(index.deferrals(&a).await.expect("count"), 0);
        let rows = |runs: &[(u128, &str)]| runs.iter().map(|(id, r)| (*id, (*r).to_owned())).collect::<Vec<_>>();
        // Two runs in one read, one of them twice.
        index.count_deferrals(rows(&[(id_a, "r1"), (id_a, "r2"), (id_a, "r1")])).await.expect("count");
        assert_eq!(index.deferrals(&a).await.expect("count"), 2);
        // The same rows read again count nothing more; a new run does.
        index.count_deferrals(rows(&[(id_a, "r2"), (id_a, "r1")])).await.expect("count");
        assert_eq!(index.deferrals(&a).await.expect("count"), 2);
        index.count_deferrals(rows(&[(id_a, "r3"), (id_b, "r3")])).await.expect("count");
        assert_eq!(index.deferrals(&a).await.expect("count"), 3);
        assert_eq!(index.deferrals(&b).await.expect("count"), 1);
        // Still listed as new: a deferred file is the next run's.
        let skipped = AtomicU64::new(0);
        let wh = crate::lake::Warehouse::open(&dir.path().join("lake")).await.expect("lake");
        assert_eq!(index.keep_new(&wh, vec![Ok(a), Ok(b)], &skipped).await.len(), 2);
        assert_eq!(skipped.load(Ordering::Relaxed), 0);
    }
}
