//! Ingest: POS files in staging become rows of the lake, through the supervised pipeline of `poslake-actors`.
//! This module is the domain side, [`PosStages`]: what each stage does to a POS file. The actors decide when and
//! where it runs.
//!
//! - [`staging`]: listing and reading the staging area (object_store; local by default);
//! - [`archive`]: the immutable bronze archive of raw files;
//! - [`dedup`]: the embedded store of committed transaction keys.

pub mod archive;
pub mod dedup;
pub mod staging;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, Int64Array, StringArray};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use poslake_actors::{Stages, WriteReport};

use crate::lake::{DeadLetter, LakeError, LakeWriter, LedgerEntry, Outcome, Warehouse};
use crate::model::ParsedFile;
use crate::parse::{ParseOptions, parse_file};
use archive::{Archive, ArchiveError};
use dedup::{DedupError, EmbeddedDedup, KeyDigest, digest};
use staging::{StagedFile, Staging, StagingError};

/// Where an ingest reads and writes.
#[derive(Debug, Clone)]
pub struct IngestPaths {
    /// The staging folder.
    pub staging: PathBuf,
    /// The lake root: `catalog.db`, `warehouse/`, `bronze/raw/`, `dedup/`.
    pub lake: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Dedup(#[from] DedupError),
    /// A write or commit failed after data was written: everything uncommitted was abandoned (a later run
    /// redoes those files), and this run cannot go on.
    #[error("uncommitted data abandoned after a failed write: {0}")]
    Abandoned(String),
}

impl IngestError {
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Staging(e) => e.is_retryable(),
            IngestError::Archive(_) => true,
            IngestError::Lake(e) => e.is_retryable(),
            IngestError::Dedup(_) | IngestError::Abandoned(_) => false,
        }
    }
}

/// Why a file did not make it: recorded as a dead letter.
#[derive(Debug, Clone)]
pub struct Failure {
    pub stage: &'static str,
    pub kind: &'static str,
    pub reason: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub attempts: u32,
}

/// One file after parsing.
pub struct ParsedItem {
    pub file: StagedFile,
    pub content_hash: String,
    pub bytes: Bytes,
    pub result: Result<ParsedFile, Failure>,
}

/// Parsed files whose keys were checked: `new[i][j]` says whether transaction `j` of file `i` is new.
pub struct PosBatch {
    items: Vec<ParsedItem>,
    new: Vec<Vec<bool>>,
    reserved: Arc<Vec<KeyDigest>>,
}

/// When written data is committed: after this many files or this long, whichever comes first (and at the end of
/// the run). Fewer, larger commits keep Iceberg metadata small; the bound is how much work a crash can cost.
#[derive(Debug, Clone, Copy)]
pub struct CommitPolicy {
    /// Default 2,000 files.
    pub files: u64,
    /// Default 10 s.
    pub interval: std::time::Duration,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy { files: 2000, interval: std::time::Duration::from_secs(10) }
    }
}

/// Data written but not yet committed, and the keys it carries.
struct Uncommitted {
    writer: LakeWriter,
    keys: Vec<KeyDigest>,
    files: u64,
    since: std::time::Instant,
    /// A write failed: the run is over.
    failed: bool,
}

pub struct PosStages {
    staging: Staging,
    archive: Archive,
    warehouse: Arc<Warehouse>,
    open: tokio::sync::Mutex<Uncommitted>,
    policy: CommitPolicy,
    dedup: Mutex<EmbeddedDedup>,
    /// (path, size) of files the ledger already holds: skipped by discovery.
    ledger: Arc<HashSet<(String, u64)>>,
    skipped: Arc<AtomicU64>,
    run_id: String,
    batches: AtomicU64,
    parse: ParseOptions,
}

impl PosStages {
    pub async fn open(
        paths: &IngestPaths,
        run_id: String,
        parse: ParseOptions,
        policy: CommitPolicy,
    ) -> Result<Self, IngestError> {
        let staging = Staging::local(&paths.staging)?;
        let warehouse = Arc::new(Warehouse::open(&paths.lake).await?);
        let archive = Archive::local(warehouse.root())?;
        let dedup = EmbeddedDedup::open(&warehouse.root().join("dedup/keys.bin"))?;
        let ledger = load_ledger(&warehouse).await?;
        let open = Uncommitted {
            writer: LakeWriter::new(warehouse.clone()),
            keys: Vec::new(),
            files: 0,
            since: std::time::Instant::now(),
            failed: false,
        };
        Ok(PosStages {
            staging,
            archive,
            open: tokio::sync::Mutex::new(open),
            policy,
            warehouse,
            dedup: Mutex::new(dedup),
            ledger: Arc::new(ledger),
            skipped: Arc::new(AtomicU64::new(0)),
            run_id,
            batches: AtomicU64::new(0),
            parse,
        })
    }

    /// Commits everything written since the last commit, then marks its keys committed: the keys are marked
    /// only after the data that carries them is committed.
    async fn commit(&self, open: &mut Uncommitted) -> Result<(), IngestError> {
        if open.files == 0 {
            return Ok(());
        }
        let seq = self.batches.fetch_add(1, Ordering::SeqCst);
        let props = HashMap::from([
            ("poslake.run-id".to_owned(), self.run_id.clone()),
            ("poslake.commit".to_owned(), format!("{}/{seq}", self.run_id)),
        ]);
        if let Err(e) = open.writer.commit(&props).await {
            self.abandon_uncommitted(open, &[]);
            return Err(IngestError::Abandoned(e.to_string()));
        }
        let keys = std::mem::take(&mut open.keys);
        if let Ok(mut store) = self.dedup.lock() {
            store.commit(&keys)?;
        }
        open.files = 0;
        open.since = std::time::Instant::now();
        Ok(())
    }

    /// Drops every uncommitted data file and releases the keys it carried (plus `also`).
    fn abandon_uncommitted(&self, open: &mut Uncommitted, also: &[KeyDigest]) {
        open.writer = LakeWriter::new(self.warehouse.clone());
        open.failed = true;
        if let Ok(mut store) = self.dedup.lock() {
            store.release(&open.keys);
            store.release(also);
        }
        open.keys.clear();
    }

    /// Files discovery skipped because the ledger already holds them.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    pub fn lake_root(&self) -> &Path {
        self.warehouse.root()
    }
}

/// Paths and sizes in the file ledger. Held in memory: a later issue moves this to the shared store.
async fn load_ledger(warehouse: &Warehouse) -> Result<HashSet<(String, u64)>, LakeError> {
    let mut out = HashSet::new();
    for batch in warehouse.scan("file_ledger").await? {
        let paths = batch.column_by_name("path").and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        let sizes = batch.column_by_name("bytes").and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned());
        if let (Some(paths), Some(sizes)) = (paths, sizes) {
            for i in 0..paths.len() {
                out.insert((paths.value(i).to_owned(), sizes.value(i) as u64));
            }
        }
    }
    Ok(out)
}

fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

impl Stages for PosStages {
    type File = StagedFile;
    type Fetched = Bytes;
    type Parsed = ParsedItem;
    type Batch = PosBatch;
    type BatchInfo = Arc<Vec<KeyDigest>>;
    type Error = IngestError;

    fn size(file: &StagedFile) -> u64 {
        file.size
    }

    fn discover(&self) -> BoxStream<'static, Result<StagedFile, IngestError>> {
        let ledger = self.ledger.clone();
        let skipped = self.skipped.clone();
        self.staging
            .list()
            .filter_map(move |f| {
                let keep = match &f {
                    Ok(file) if ledger.contains(&(file.path.clone(), file.size)) => {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    _ => true,
                };
                std::future::ready(keep.then(|| f.map_err(IngestError::from)))
            })
            .boxed()
    }

    async fn fetch(&self, file: &StagedFile) -> Result<Bytes, IngestError> {
        Ok(self.staging.get(file).await?)
    }

    fn parse(&self, file: &StagedFile, bytes: Bytes) -> ParsedItem {
        let result = parse_file(&file.path, &bytes, &self.parse).map_err(|e| Failure {
            stage: "parse",
            kind: e.kind(),
            reason: e.to_string(),
            line: e.position().map(|p| p.line),
            column: e.position().map(|p| p.column),
            attempts: 1,
        });
        // The parser hashes the bytes for its facts; only a file it refused needs hashing here.
        let content_hash = match &result {
            Ok(p) => p.facts.content_hash.clone(),
            Err(_) => blake3::hash(&bytes).to_hex().to_string(),
        };
        ParsedItem { file: file.clone(), content_hash, bytes, result }
    }

    async fn archive(&self, item: &ParsedItem) -> Result<(), IngestError> {
        let (vendor, date) = match &item.result {
            Ok(p) => (p.facts.dialect.id(), p.transactions.first().map(|t| t.header.key.business_date)),
            Err(_) => ("unknown", None),
        };
        self.archive.put(vendor, date, &item.file.path, &item.content_hash, item.bytes.clone()).await?;
        Ok(())
    }

    fn failed(&self, file: &StagedFile, stage: &'static str, attempts: u32, reason: String) -> ParsedItem {
        let failure = Failure { stage, kind: "gave_up", reason, line: None, column: None, attempts };
        ParsedItem { file: file.clone(), content_hash: String::new(), bytes: Bytes::new(), result: Err(failure) }
    }

    fn dedup(&self, items: Vec<ParsedItem>) -> PosBatch {
        let mut reserved = Vec::new();
        let mut new = Vec::with_capacity(items.len());
        let Ok(mut store) = self.dedup.lock() else {
            // A poisoned lock means a panic mid-update: nothing is marked new, the writer fails the batch loudly.
            return PosBatch { new: items.iter().map(|_| Vec::new()).collect(), items, reserved: Arc::new(reserved) };
        };
        for item in &items {
            let flags = match &item.result {
                Ok(p) => p
                    .transactions
                    .iter()
                    .map(|t| {
                        let d = digest(&t.header.key);
                        let is_new = store.reserve(d);
                        if is_new {
                            reserved.push(d);
                        }
                        is_new
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            new.push(flags);
        }
        PosBatch { items, new, reserved: Arc::new(reserved) }
    }

    fn batch_info(batch: &PosBatch) -> Arc<Vec<KeyDigest>> {
        batch.reserved.clone()
    }

    async fn write(&self, batch: &PosBatch) -> Result<WriteReport, IngestError> {
        let mut rows = self.warehouse.rows();
        let mut report = WriteReport::default();
        let at = now();
        for (item, new) in batch.items.iter().zip(&batch.new) {
            report.files += 1;
            report.bytes += item.file.size;
            match &item.result {
                Ok(parsed) => {
                    let mut fresh = 0u32;
                    for (tx, is_new) in parsed.transactions.iter().zip(new) {
                        if *is_new {
                            rows.add_transaction(parsed, tx)?;
                            fresh += 1;
                        }
                    }
                    let total = parsed.transactions.len() as u32;
                    report.transactions += u64::from(total);
                    report.new_transactions += u64::from(fresh);
                    report.duplicates += u64::from(total - fresh);
                    rows.add_ledger(&LedgerEntry {
                        run_id: self.run_id.clone(),
                        path: item.file.path.clone(),
                        bytes: item.file.size,
                        content_hash: item.content_hash.clone(),
                        dialect: Some(parsed.facts.dialect.id().to_owned()),
                        site: parsed.facts.site.clone(),
                        outcome: Outcome::Ingested,
                        transactions: total,
                        new_transactions: fresh,
                        duplicate_transactions: total - fresh,
                        lines: parsed.facts.line_count,
                        discounts: parsed.facts.discount_count,
                        at,
                        trace_id: None,
                    })?;
                }
                Err(f) => {
                    report.dead_letters += 1;
                    rows.add_dead_letter(&DeadLetter {
                        run_id: self.run_id.clone(),
                        path: item.file.path.clone(),
                        content_hash: item.content_hash.clone(),
                        stage: f.stage,
                        kind: f.kind,
                        reason: f.reason.clone(),
                        line: f.line,
                        column: f.column,
                        attempts: f.attempts,
                        at,
                    })?;
                    rows.add_ledger(&LedgerEntry {
                        run_id: self.run_id.clone(),
                        path: item.file.path.clone(),
                        bytes: item.file.size,
                        content_hash: item.content_hash.clone(),
                        dialect: None,
                        site: None,
                        outcome: Outcome::DeadLetter,
                        transactions: 0,
                        new_transactions: 0,
                        duplicate_transactions: 0,
                        lines: 0,
                        discounts: 0,
                        at,
                        trace_id: None,
                    })?;
                }
            }
        }
        let mut open = self.open.lock().await;
        if open.failed {
            return Err(IngestError::Abandoned("an earlier write of this run failed".into()));
        }
        if let Err(e) = open.writer.write(rows).await {
            self.abandon_uncommitted(&mut open, &batch.reserved);
            return Err(IngestError::Abandoned(e.to_string()));
        }
        open.keys.extend_from_slice(&batch.reserved);
        open.files += batch.items.len() as u64;
        if open.files >= self.policy.files || open.since.elapsed() >= self.policy.interval {
            self.commit(&mut open).await?;
        }
        Ok(report)
    }

    async fn finish(&self) -> Result<(), IngestError> {
        let mut open = self.open.lock().await;
        if open.failed {
            return Err(IngestError::Abandoned("an earlier write of this run failed".into()));
        }
        self.commit(&mut open).await
    }

    fn abandon(&self, reserved: &Arc<Vec<KeyDigest>>) {
        if let Ok(mut store) = self.dedup.lock() {
            store.release(reserved);
        }
    }

    fn is_retryable(error: &IngestError) -> bool {
        error.is_retryable()
    }
}

/// What one ingest run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestSummary {
    pub run_id: String,
    /// Files found and processed this run.
    pub files: u64,
    pub bytes: u64,
    /// Files skipped because an earlier run already ingested them.
    pub already_ingested: u64,
    pub transactions: u64,
    pub new_transactions: u64,
    pub duplicate_transactions: u64,
    pub dead_letters: u64,
    pub retries: u64,
    pub actor_restarts: u64,
    pub seconds: f64,
}

impl IngestSummary {
    pub fn files_per_second(&self) -> f64 {
        self.files as f64 / self.seconds.max(1e-9)
    }

    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Runs one ingest of everything in staging not yet in the ledger. `progress` may be watched meanwhile.
pub async fn ingest(
    paths: &IngestPaths,
    parse: ParseOptions,
    policy: CommitPolicy,
    pipeline: poslake_actors::PipelineConfig,
    progress: Arc<poslake_actors::Progress>,
) -> Result<IngestSummary, IngestRunError> {
    let started = std::time::Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    let stages = Arc::new(PosStages::open(paths, run_id.clone(), parse, policy).await?);
    let snapshot = poslake_actors::run(stages.clone(), pipeline, progress).await?;
    let t = snapshot.totals;
    Ok(IngestSummary {
        run_id,
        files: t.files,
        bytes: t.bytes,
        already_ingested: stages.skipped(),
        transactions: t.transactions,
        new_transactions: t.new_transactions,
        duplicate_transactions: t.duplicates,
        dead_letters: t.dead_letters,
        retries: snapshot.retries,
        actor_restarts: snapshot.restarts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum IngestRunError {
    #[error("opening the ingest: {0}")]
    Open(#[from] IngestError),
    #[error(transparent)]
    Pipeline(#[from] poslake_actors::PipelineError),
}
