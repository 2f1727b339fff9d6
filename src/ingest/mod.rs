//! Ingest: POS files in staging become rows of the lake, through the supervised pipeline of `poslake-actors`.
//! This module is the domain side, [`PosStages`]: what each stage does to a POS file. The actors decide when and
//! where it runs.
//!
//! - [`staging`]: listing and reading the staging area (object_store; local by default);
//! - [`archive`]: the immutable bronze archive of raw files;
//! - [`reconcile`]: verifying the quarantine exactly and promoting false positives;
//! - [`replay`]: taking dead-lettered files again, once what refused them was fixed;
//! - [`commit`]: the exactly-once protocol between the lake and the dedup store, and recovery;
//! - [`maintain`]: table maintenance (merging manifests, expiring snapshots, removing orphans) within that protocol.

pub mod archive;
pub mod commit;
mod in_flight;
mod ledger_index;
mod location;
pub mod maintain;
pub mod reconcile;
pub mod replay;
pub mod route;
pub mod slot_leases;
pub mod staging;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use poslake_actors::{Stages, WriteReport};
use tracing::Instrument;

use crate::config::DedupConfig;
use crate::dedup::{Dedup, DedupError, DedupKey, DedupStore, FileIndex};
use crate::failpoint;
use crate::lake::rows::{FileRows, Quarantine, Source};
use crate::lake::{
    COMMIT_PROPERTY, DeadLetter, LakeError, LakeWriter, LedgerEntry, Outcome, PreparedCommit, Warehouse,
};
use crate::model::{FileFacts, ParsedFile};
use crate::parse::{ParseOptions, parse_file};
use archive::{Archive, ArchiveError};
use commit::{Committer, Recovery};
use in_flight::InFlightKeys;
use ledger_index::{LOOKUP_CHUNK, LedgerIndex};
use staging::{StagedFile, Staging, StagingError};

/// Where an ingest reads and writes.
#[derive(Debug, Clone)]
pub struct IngestPaths {
    /// The staging folder.
    pub staging: PathBuf,
    /// The lake root: `catalog.db`, `warehouse/`, `bronze/raw/` (unless `archive` is given), `commits/`, `dedup/`.
    pub lake: PathBuf,
    /// Where raw files are archived, if not in the lake: a folder, or an Azure URL.
    pub archive: Option<PathBuf>,
    /// The Iceberg catalog's PostgreSQL database, if not SQLite in the lake.
    pub catalog: Option<String>,
}

/// Everything an ingest run needs besides the pipeline's shape.
#[derive(Debug, Clone)]
pub struct IngestSetup {
    pub paths: IngestPaths,
    pub parse: ParseOptions,
    pub policy: CommitPolicy,
    pub dedup: DedupConfig,
    /// Which staging files this worker takes (all by default).
    pub route: route::Route,
}

impl IngestSetup {
    /// Embedded defaults for these paths.
    pub fn new(paths: IngestPaths) -> Self {
        IngestSetup {
            paths,
            parse: ParseOptions::default(),
            policy: CommitPolicy::default(),
            dedup: DedupConfig::default(),
            route: route::Route::all(),
        }
    }
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
    #[error("another `poslake replay` is running on {0}: one at a time, since each would take the same dead letters")]
    ReplayRunning(PathBuf),
    /// `workers = "auto"`: leases of these route slots were lost mid-run (Redis lost them, or this worker could not
    /// renew them for a whole lease), so another worker may be taking their files; everything uncommitted was
    /// abandoned.
    #[error(
        "lost the leases of {} route slots mid-run (first {:?}; Redis lost them, or this worker could not renew them \
         for route_lease_secs): uncommitted work abandoned, for the worker that holds them next",
        .0.len(),
        &.0[..(.0.len().min(8))]
    )]
    LeaseLost(Vec<u32>),
    /// `workers = "auto"`: the leases could not be renewed before a commit (Redis unreachable past its limit).
    #[error("could not renew the route leases before a commit ({0}): uncommitted work abandoned")]
    LeaseUnconfirmed(String),
}

impl IngestError {
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Staging(e) => e.is_retryable(),
            // Every name a file could take holding other bytes will not change on retry.
            IngestError::Archive(e) => !matches!(e, ArchiveError::NoFreeName { .. }),
            IngestError::Lake(e) => e.is_retryable(),
            // The Redis pool already retried with backoff up to its limit.
            IngestError::Dedup(_)
            | IngestError::Abandoned(_)
            | IngestError::ReplayRunning(_)
            | IngestError::LeaseLost(_)
            | IngestError::LeaseUnconfirmed(_) => false,
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

impl Failure {
    /// How the ledger records the file. Tries exhausted at reading it or at archiving it may work next time (a file
    /// still being written, a permission fixed, the lake's disk freed): deferred, so that the next run takes it
    /// again. What the file holds, or what the listing ruled out, will not change: a dead letter, done.
    pub fn outcome(&self) -> Outcome {
        match (self.stage, self.kind) {
            ("download" | "archive", "gave_up") => Outcome::Deferred,
            _ => Outcome::DeadLetter,
        }
    }
}

/// One file after parsing.
pub struct ParsedItem {
    pub file: StagedFile,
    pub content_hash: String,
    /// The raw file: archived, and parsed again in the rare case that a transaction goes to quarantine.
    pub bytes: Bytes,
    pub result: Result<ParsedRows, Failure>,
    /// The trace the file was parsed in, when traces are exported: kept in its ledger row.
    pub trace_id: Option<String>,
}

/// A parsed file as the rest of the pipeline needs it: its facts, its transactions' dedup keys, and its table
/// rows built on the parser pool (the parsed structures are dropped there, so they never wait in a queue).
pub struct ParsedRows {
    pub facts: FileFacts,
    /// Per transaction, in file order.
    pub keys: Vec<DedupKey>,
    /// The first transaction's business date (the archive's partition).
    pub first_date: Option<chrono::NaiveDate>,
    pub rows: FileRows,
}

/// What dedup decided for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: it lands in the silver and bronze tables.
    New,
    /// Certainly seen: earlier in this batch or run (in flight, exact), or in an exact store.
    Duplicate,
    /// Probably seen (a Bloom positive): kept whole in the `sales_duplicates` quarantine for `reconcile`.
    Quarantined,
}

/// Parsed files whose keys were checked: `verdicts[i][j]` is for transaction `j` of file `i`.
pub struct PosBatch {
    items: Vec<ParsedItem>,
    verdicts: Vec<Vec<Verdict>>,
    reserved: Arc<Vec<DedupKey>>,
}

/// When written data is committed: after this many files or this long, whichever comes first (and at the end of
/// the run). Fewer, larger commits keep Iceberg metadata small; the bound is how much work a crash can cost.
#[derive(Debug, Clone, Copy)]
pub struct CommitPolicy {
    /// Default 2,000 files.
    pub files: u64,
    /// Default 10 s.
    pub interval: std::time::Duration,
    /// Snapshots kept per table (0: all). Default 100.
    pub keep_snapshots: usize,
    /// Small manifests a table gathers before they are merged (0: never). Default 100.
    pub min_manifests_to_merge: usize,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy {
            files: 2000,
            interval: std::time::Duration::from_secs(10),
            keep_snapshots: 100,
            min_manifests_to_merge: 100,
        }
    }
}

/// Data written but not yet committed, and the keys it carries.
struct Uncommitted {
    writer: LakeWriter,
    keys: Vec<DedupKey>,
    files: u64,
    since: std::time::Instant,
    /// A write failed: the run is over.
    failed: bool,
}

pub struct PosStages {
    staging: Staging,
    archive: Archive,
    warehouse: Arc<Warehouse>,
    committer: Committer,
    open: tokio::sync::Mutex<Uncommitted>,
    policy: CommitPolicy,
    /// Keys of this run not yet in the store: exact.
    in_flight: Mutex<InFlightKeys>,
    /// Serialises recoveries from a store that lost its state or reconnected.
    healing: tokio::sync::Mutex<()>,
    /// Files the ledger already holds: skipped by discovery.
    ledger: Arc<LedgerIndex>,
    skipped: Arc<AtomicU64>,
    route: Arc<route::Route>,
    /// Files listed that other workers take.
    elsewhere: Arc<AtomicU64>,
    run_id: String,
    /// `run/worker`: the prefix of this process's commit ids.
    commit_prefix: String,
    batches: AtomicU64,
    parse: ParseOptions,
    recovery: Mutex<Recovery>,
    /// Dead letters to take again instead of listing staging (`poslake replay`).
    replay: Option<Arc<Vec<StagedFile>>>,
}

impl PosStages {
    /// Opens staging, the lake and the dedup store, and recovers whatever a stopped run left half done.
    pub async fn open(setup: &IngestSetup, run_id: String) -> Result<Self, IngestError> {
        Self::open_with(setup, run_id, Staging::open(&setup.paths.staging)?).await
    }

    /// [`PosStages::open`] over staging already opened.
    async fn open_with(setup: &IngestSetup, run_id: String, staging: Staging) -> Result<Self, IngestError> {
        let paths = &setup.paths;
        let warehouse = Arc::new(Warehouse::open_with(&paths.lake, paths.catalog.as_deref()).await?);
        let archive = Archive::open(paths.archive.as_deref(), warehouse.root()).await?;
        // A lake or an archive kept inside its own staging area must not ingest its own files.
        let staging = staging.excluding(warehouse.root()).excluding_archive(archive.archived_at());
        let dedup = Arc::new(Dedup::open(&setup.dedup, warehouse.root()).await?);
        tracing::info!(backend = %dedup.describe(), "dedup store");
        let committer = Committer::new(warehouse.clone(), dedup);
        if let Some(leases) = setup.route.leases() {
            // A slot just taken over may have files in another worker's commit in progress: wait for it to end, so
            // that the ledger read below holds them. One that does not end within a lease (its worker paused
            // mid-commit) keeps its slots out of this run; the others go ahead.
            let held = leases.held();
            let waiting = warehouse.wait_for_live_intents(leases.lease_time(), &held).await?;
            if !waiting.is_empty() {
                let aside: Vec<u32> = held.into_iter().filter(|s| waiting.iter().any(|i| i.touches(&[*s]))).collect();
                let intents: Vec<String> = waiting.iter().map(|i| i.path.display().to_string()).collect();
                tracing::warn!(slots = aside.len(), intents = ?intents,
                    "commits by another worker still in progress after a lease (a worker paused mid-commit?): their \
                     slots are left out of this run");
                leases.set_aside(&aside).await?;
            }
        }
        let recovery = committer.recover(None).await?;
        if setup.route.leases().is_none() {
            // Recovery passes over intents another live process holds: its own commit in progress, or its recovery
            // of a commit a killed worker left, whose files may be this worker's. The ledger is read once they end,
            // so that it holds those files; a commit still in progress after a minute (its process paused) is left,
            // at the risk of its files being taken again (their keys are then duplicates: quarantined, not doubled).
            let waiting = warehouse.wait_for_live_intents(std::time::Duration::from_secs(60), &[]).await?;
            if !waiting.is_empty() {
                let intents: Vec<String> = waiting.iter().map(|i| i.path.display().to_string()).collect();
                tracing::warn!(intents = ?intents, "commits by another process still in progress after a minute");
            }
        }
        let ledger = LedgerIndex::load(&warehouse, committer.dedup(), setup.dedup.expected_files).await?;
        let open = Uncommitted {
            writer: LakeWriter::new(warehouse.clone()),
            keys: Vec::new(),
            files: 0,
            since: std::time::Instant::now(),
            failed: false,
        };
        let worker = std::env::var("POSLAKE_WORKER_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into());
        Ok(PosStages {
            staging,
            archive,
            open: tokio::sync::Mutex::new(open),
            policy: setup.policy,
            warehouse,
            committer,
            in_flight: Mutex::new(InFlightKeys::default()),
            healing: tokio::sync::Mutex::new(()),
            ledger: Arc::new(ledger),
            skipped: Arc::new(AtomicU64::new(0)),
            route: Arc::new(setup.route.clone()),
            elsewhere: Arc::new(AtomicU64::new(0)),
            commit_prefix: format!("{run_id}/{worker}-{}", std::process::id()),
            run_id,
            batches: AtomicU64::new(0),
            parse: setup.parse.clone(),
            recovery: Mutex::new(recovery),
            replay: None,
        })
    }

    /// Takes these dead letters again (see [`replay`]) instead of what staging lists.
    pub fn replaying(mut self, files: &[replay::DeadFile]) -> Self {
        self.replay = Some(Arc::new(files.iter().map(replay::DeadFile::staged).collect()));
        self
    }

    /// A replayed file's bytes: from staging while it holds the same file (the same size: a corrected file re-sent
    /// under the same name and size is taken as it is now), else from the bronze archive. A read that may pass on
    /// retry (a network error) is retried rather than answered from the archive.
    async fn replayed_bytes(&self, file: &StagedFile, hash: &str) -> Result<Bytes, IngestError> {
        let unread = match self.staging.get(file, self.parse.max_decompressed_bytes).await {
            Ok(bytes) if bytes.len() as u64 == file.size => return Ok(bytes),
            Ok(bytes) => Err(format!(
                "staging holds another file under this name now ({} bytes, not {}), which `poslake ingest` takes as \
                 new; the bronze archive has no copy of this one",
                bytes.len(),
                file.size
            )),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) if e.is_not_found() => Err("no longer in staging, and the bronze archive has no copy of it (only \
                                               files that reached the parser are archived)"
                .to_owned()),
            // Not a regular file now, or a link out of staging: refused as such, unless the archive has it.
            Err(e) => Ok(e),
        };
        if let Some(bytes) = self.archive.find_refused(&file.path, hash).await? {
            return Ok(bytes);
        }
        Err(match unread {
            Ok(refused) => refused.into(),
            Err(reason) => StagingError::Refused { path: file.path.clone(), kind: "missing", reason }.into(),
        })
    }

    /// Commits everything written since the last commit, then adds its keys to the store (see [`commit`]).
    async fn commit(&self, open: &mut Uncommitted) -> Result<(), IngestError> {
        if open.files == 0 {
            return Ok(());
        }
        let seq = self.batches.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}/{seq}", self.commit_prefix);
        let properties = HashMap::from([
            ("poslake.run-id".to_owned(), self.run_id.clone()),
            (COMMIT_PROPERTY.to_owned(), id.clone()),
        ]);
        let tables = match open.writer.prepare().await {
            Ok(t) => t,
            Err(e) => {
                self.abandon_uncommitted(open, &[]);
                return Err(IngestError::Abandoned(e.to_string()));
            }
        };
        let keys = std::mem::take(&mut open.keys);
        let span = tracing::info_span!(
            "commit",
            commit.id = %id,
            files = open.files as i64,
            iceberg.snapshot_id = tracing::field::Empty,
            iceberg.tables = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        // With leased route slots: once the intent is written, the leases are renewed, and a slot lost since the
        // claim (another worker's now, and maybe its files too) stops the commit (see `slot_leases`).
        let commit = PreparedCommit { id, properties, tables };
        let result = match self.route.leases() {
            None => self.committer.commit(commit, &keys).instrument(span.clone()).await,
            Some(leases) => {
                let fence = async {
                    match leases.confirm().await {
                        Ok(lost) if lost.is_empty() => Ok(()),
                        Ok(lost) => Err(IngestError::LeaseLost(lost)),
                        Err(e) => Err(IngestError::LeaseUnconfirmed(e.to_string())),
                    }
                };
                let slots = leases.held();
                self.committer.commit_fenced(commit, &keys, &slots, fence).instrument(span.clone()).await
            }
        };
        if let Ok(commits) = &result {
            // The snapshot of sales_header (or of the first table committed) names the commit in Iceberg.
            if let Some(c) = commits.iter().find(|c| c.table == "sales_header").or(commits.first()) {
                span.record("iceberg.snapshot_id", c.snapshot_id);
            }
            let tables: Vec<String> = commits.iter().map(|c| format!("{}={}", c.table, c.snapshot_id)).collect();
            span.record("iceberg.tables", tables.join(",").as_str());
            metrics::histogram!(crate::telemetry::metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::counter!(crate::telemetry::metric::COMMITS).increment(1);
        }
        match result {
            Ok(_) => {}
            // The store lost its state between the table commits and the marks: recovery re-adds every
            // committed batch's keys, this one's included.
            Err(IngestError::Dedup(DedupError::StateLost { .. })) => self.heal_holding_open().await?,
            // Nothing was committed: everything open is given up, for whoever holds the slots now.
            Err(e @ (IngestError::LeaseLost(_) | IngestError::LeaseUnconfirmed(_))) => {
                self.abandon_uncommitted(open, &keys);
                return Err(e);
            }
            Err(e) => {
                // Whatever was committed is finished by the next start's recovery; nothing more is written now.
                open.failed = true;
                return Err(e);
            }
        }
        self.release(&keys);
        open.files = 0;
        open.since = std::time::Instant::now();
        self.maybe_maintain(seq + 1).await;
        Ok(())
    }

    /// Every quarter of `keep_snapshots` commits (every 25 when snapshots are all kept), merges small manifests and
    /// expires the snapshots beyond `keep_snapshots` (see [`maintain`]). Maintenance never fails the run: what it
    /// leaves, the next one takes.
    async fn maybe_maintain(&self, commits: u64) {
        let (keep, merge_at) = (self.policy.keep_snapshots, self.policy.min_manifests_to_merge);
        let every = if keep > 0 { (keep as u64 / 4).max(1) } else { 25 };
        if (keep == 0 && merge_at == 0) || !commits.is_multiple_of(every) {
            return;
        }
        // The file index's mark bounds what the ledger's expiry may take; merging alone does not need it.
        let mark = if keep == 0 {
            None
        } else {
            match self.ledger.sync(&self.warehouse).await {
                Ok(mark) => mark,
                Err(e) => {
                    tracing::warn!(error = %e, "table maintenance skipped: the file index is not up to date");
                    return;
                }
            }
        };
        let span = tracing::info_span!("maintain", keep, snapshots = tracing::field::Empty);
        match self.committer.maintain(keep, merge_at, mark).instrument(span.clone()).await {
            Ok(report) => {
                span.record("snapshots", report.snapshots());
            }
            Err(e) => tracing::warn!(error = %e, "table maintenance failed; the next one retries"),
        }
    }

    /// Drops every uncommitted data file and releases the keys it carried (plus `also`).
    fn abandon_uncommitted(&self, open: &mut Uncommitted, also: &[DedupKey]) {
        open.writer = LakeWriter::new(self.warehouse.clone());
        open.failed = true;
        self.release(&open.keys);
        self.release(also);
        open.keys.clear();
    }

    fn release(&self, keys: &[DedupKey]) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.release(keys);
        }
    }

    /// The store lost its state (or came back after an outage, possibly without its last writes): adopt its
    /// generation and re-add the keys of every committed batch it has not marked. Holds the uncommitted data's
    /// lock, so that recovery never races a commit of this process for its intent.
    async fn heal(&self) -> Result<(), IngestError> {
        let _open = self.open.lock().await;
        self.heal_holding_open().await
    }

    /// [`PosStages::heal`] for a caller that already holds the uncommitted data's lock.
    async fn heal_holding_open(&self) -> Result<(), IngestError> {
        let _one = self.healing.lock().await;
        let dedup = self.committer.dedup();
        let lost = match dedup.generation().await {
            Ok(_) => false,
            Err(DedupError::StateLost { expected, found }) => {
                tracing::warn!(%expected, %found, "the dedup store lost its state: re-adding the keys of every committed batch");
                dedup.renew_generation().await?;
                true
            }
            Err(e) => return Err(e.into()),
        };
        let prefix = (!lost).then_some(self.commit_prefix.as_str());
        let report = self.committer.recover(prefix).await?;
        if let Ok(mut r) = self.recovery.lock() {
            r.commits_readded += report.commits_readded;
            r.keys_readded += report.keys_readded;
        }
        Ok(())
    }

    /// Checks keys against the store, healing and asking again if it lost its state.
    async fn contains(&self, keys: &[DedupKey]) -> Result<Vec<bool>, IngestError> {
        for _ in 0..3 {
            match self.committer.dedup().contains(keys).await {
                Ok(found) => {
                    if self.committer.dedup().take_reconnected() {
                        // Back after an outage: the store may have lost its last writes before it stopped.
                        self.heal().await?;
                        continue;
                    }
                    return Ok(found);
                }
                Err(DedupError::StateLost { .. }) => self.heal().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IngestError::Abandoned("the dedup store kept losing its state while being checked".into()))
    }

    /// A parsed file's rows and keys, built here on the parser pool. Rows that do not fit the tables (say, an
    /// amount beyond the decimal's precision) make the file a dead letter, like any other bad input.
    fn rows_of(&self, parsed: ParsedFile) -> Result<ParsedRows, Failure> {
        let rows = FileRows::build(self.warehouse.schemas(), &parsed).map_err(|e| Failure {
            stage: "parse",
            kind: "schema",
            reason: e.to_string(),
            line: None,
            column: None,
            attempts: 1,
        })?;
        Ok(ParsedRows {
            keys: parsed.transactions.iter().map(|t| DedupKey::of(&t.header.key)).collect(),
            first_date: parsed.transactions.first().map(|t| t.header.key.business_date),
            facts: parsed.facts,
            rows,
        })
    }

    /// Quarantines a file's probable duplicates whole. The parsed transactions were dropped after the parse
    /// (Bloom positives are rare), so the raw bytes are parsed again: the parse is deterministic.
    fn add_quarantined(
        &self,
        rows: &mut crate::lake::Rows,
        item: &ParsedItem,
        verdicts: &[Verdict],
        quarantine: &Quarantine,
    ) -> Result<(), IngestError> {
        let parsed = parse_file(&item.file.path, &item.bytes, &self.parse).map_err(|e| {
            IngestError::Abandoned(format!("{} parsed once but not again, for its quarantine: {e}", item.file.path))
        })?;
        let source = Source::of(&parsed);
        for (tx, verdict) in parsed.transactions.iter().zip(verdicts) {
            if *verdict == Verdict::Quarantined {
                rows.add_quarantine(&source, tx, quarantine)?;
            }
        }
        Ok(())
    }

    /// Files discovery skipped because the ledger already holds them.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Files discovery left to other workers (see [`route`]).
    pub fn routed_elsewhere(&self) -> u64 {
        self.elsewhere.load(Ordering::Relaxed)
    }

    /// What recovery did at start-up and during the run.
    pub fn recovery(&self) -> Recovery {
        self.recovery.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn dedup_backend(&self) -> String {
        self.committer.dedup().describe()
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    pub fn lake_root(&self) -> &Path {
        self.warehouse.root()
    }
}

fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

impl Stages for PosStages {
    type File = StagedFile;
    type Fetched = Bytes;
    type Parsed = ParsedItem;
    type Batch = PosBatch;
    type BatchInfo = Arc<Vec<DedupKey>>;
    type Error = IngestError;

    fn size(file: &StagedFile) -> u64 {
        file.size
    }

    fn discover(&self) -> BoxStream<'static, Result<StagedFile, IngestError>> {
        if let Some(files) = &self.replay {
            let files = files.clone();
            return futures::stream::iter((0..files.len()).map(move |i| Ok(files[i].clone()))).boxed();
        }
        let ledger = self.ledger.clone();
        let skipped = self.skipped.clone();
        let (route, elsewhere) = (self.route.clone(), self.elsewhere.clone());
        // Looked up a page at a time: whatever the listing has ready, up to LOOKUP_CHUNK files.
        self.staging
            .list()
            .filter(move |file| {
                let ours = match file {
                    Ok(f) => route.takes(&f.path),
                    Err(_) => true,
                };
                if !ours {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
                futures::future::ready(ours)
            })
            .ready_chunks(LOOKUP_CHUNK)
            .then(move |listed| {
                let (ledger, skipped) = (ledger.clone(), skipped.clone());
                async move { futures::stream::iter(ledger.keep_new(listed, &skipped).await) }
            })
            .flatten()
            .boxed()
    }

    async fn fetch(&self, file: &StagedFile) -> Result<Bytes, IngestError> {
        // Over the parser's limit is refused from the listed size, before a byte is read.
        let bytes = match &file.replay_of {
            Some(hash) => self.replayed_bytes(file, hash).await?,
            None => self.staging.get(file, self.parse.max_decompressed_bytes).await?,
        };
        failpoint::hit("download");
        Ok(bytes)
    }

    fn parse(&self, file: &StagedFile, bytes: Bytes) -> ParsedItem {
        let result = parse_file(&file.path, &bytes, &self.parse)
            .map_err(|e| Failure {
                stage: "parse",
                kind: e.kind(),
                reason: e.to_string(),
                line: e.position().map(|p| p.line),
                column: e.position().map(|p| p.column),
                attempts: 1,
            })
            .and_then(|parsed| self.rows_of(parsed));
        // The parser hashes the bytes for its facts; only a file it refused needs hashing here.
        let content_hash = match &result {
            Ok(p) => p.facts.content_hash.clone(),
            Err(_) => blake3::hash(&bytes).to_hex().to_string(),
        };
        failpoint::hit("parse");
        let trace_id = crate::telemetry::current_trace_id();
        ParsedItem { file: file.clone(), content_hash, bytes, result, trace_id }
    }

    async fn archive(&self, item: &ParsedItem) -> Result<(), IngestError> {
        let (vendor, date) = match &item.result {
            Ok(p) => (p.facts.dialect.id(), p.first_date),
            Err(_) => ("unknown", None),
        };
        self.archive.put(vendor, date, &item.file.path, &item.content_hash, item.bytes.clone()).await?;
        failpoint::hit("archive");
        Ok(())
    }

    fn failed(
        &self,
        file: &StagedFile,
        stage: &'static str,
        attempts: u32,
        kind: &'static str,
        reason: String,
    ) -> ParsedItem {
        let failure = Failure { stage, kind, reason, line: None, column: None, attempts };
        ParsedItem {
            file: file.clone(),
            content_hash: String::new(),
            bytes: Bytes::new(),
            result: Err(failure),
            trace_id: None,
        }
    }

    async fn dedup(&self, items: Vec<ParsedItem>) -> Result<PosBatch, IngestError> {
        // Exact first: keys in flight in this run, and repeats within the batch. Only the rest go to the store.
        let mut verdicts: Vec<Vec<Verdict>> = Vec::with_capacity(items.len());
        let mut ask: Vec<DedupKey> = Vec::new();
        let mut asked_at: Vec<(usize, usize)> = Vec::new();
        {
            let in_flight =
                self.in_flight.lock().map_err(|_| IngestError::Abandoned("in-flight keys poisoned".into()))?;
            let mut in_batch = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let Ok(p) = &item.result else {
                    verdicts.push(Vec::new());
                    continue;
                };
                let mut v = Vec::with_capacity(p.keys.len());
                for (j, key) in p.keys.iter().enumerate() {
                    if in_flight.contains(&key.digest) || !in_batch.insert(key.digest) {
                        v.push(Verdict::Duplicate);
                    } else {
                        v.push(Verdict::New);
                        ask.push(*key);
                        asked_at.push((i, j));
                    }
                }
                verdicts.push(v);
            }
        }
        let seen = self.contains(&ask).await?;
        failpoint::hit("dedup-check");
        let exact = self.committer.dedup().exact();
        let mut reserved = Vec::with_capacity(ask.len());
        let mut in_flight =
            self.in_flight.lock().map_err(|_| IngestError::Abandoned("in-flight keys poisoned".into()))?;
        for ((key, (i, j)), seen) in ask.into_iter().zip(asked_at).zip(seen) {
            if seen {
                verdicts[i][j] = if exact { Verdict::Duplicate } else { Verdict::Quarantined };
            } else if in_flight.reserve(key.digest) {
                reserved.push(key);
            } else {
                verdicts[i][j] = Verdict::Duplicate;
            }
        }
        Ok(PosBatch { items, verdicts, reserved: Arc::new(reserved) })
    }

    fn annotate(item: &ParsedItem, span: &tracing::Span) {
        match &item.result {
            Ok(p) => {
                span.record("vendor", p.facts.dialect.id());
                if let Some(site) = &p.facts.site {
                    span.record("site", site.as_str());
                }
                span.record("transactions", i64::from(p.facts.transaction_count));
            }
            Err(f) => {
                span.record("error.kind", f.kind);
            }
        }
    }

    fn batch_info(batch: &PosBatch) -> Arc<Vec<DedupKey>> {
        batch.reserved.clone()
    }

    async fn write(&self, batch: &PosBatch) -> Result<WriteReport, IngestError> {
        let mut rows = self.warehouse.rows();
        let mut report = WriteReport::default();
        let at = now();
        let quarantine = Quarantine { run_id: &self.run_id, reason: "filter", at };
        for (item, verdicts) in batch.items.iter().zip(&batch.verdicts) {
            report.files += 1;
            report.bytes += item.file.size;
            match &item.result {
                Ok(parsed) => {
                    let keep: Vec<bool> = verdicts.iter().map(|v| *v == Verdict::New).collect();
                    rows.add_built(parsed.rows.select(&keep)?);
                    let fresh = keep.iter().filter(|k| **k).count() as u32;
                    let quarantined = verdicts.iter().filter(|v| **v == Verdict::Quarantined).count() as u32;
                    if quarantined > 0 {
                        self.add_quarantined(&mut rows, item, verdicts, &quarantine)?;
                    }
                    let total = parsed.rows.transactions() as u32;
                    report.transactions += u64::from(total);
                    report.new_transactions += u64::from(fresh);
                    report.duplicates += u64::from(total - fresh);
                    report.quarantined += u64::from(quarantined);
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
                        quarantined_transactions: quarantined,
                        lines: parsed.facts.line_count,
                        discounts: parsed.facts.discount_count,
                        at,
                        trace_id: item.trace_id.clone(),
                    })?;
                }
                Err(f) => {
                    report.dead_letters += 1;
                    report.deferred += u64::from(f.outcome() == Outcome::Deferred);
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
                        trace_id: item.trace_id.clone(),
                        ..LedgerEntry::without_transactions(
                            self.run_id.clone(),
                            item.file.path.clone(),
                            item.file.size,
                            item.content_hash.clone(),
                            f.outcome(),
                            at,
                        )
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
        failpoint::hit("write");
        for item in &batch.items {
            if let Err(f) = &item.result {
                metrics::counter!(crate::telemetry::metric::DEAD_LETTERS, "stage" => f.stage, "reason" => f.kind)
                    .increment(1);
            }
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

    fn abandon(&self, reserved: &Arc<Vec<DedupKey>>) {
        self.release(reserved);
    }

    fn is_retryable(error: &IngestError) -> bool {
        error.is_retryable()
    }

    fn failure_kind(error: &IngestError) -> &'static str {
        match error {
            IngestError::Staging(e) => e.refusal_kind().unwrap_or("gave_up"),
            IngestError::Archive(ArchiveError::NoFreeName { .. }) => "name_taken",
            _ => "gave_up",
        }
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
    /// Files listed that other workers take (`workers` > 1).
    pub other_workers_files: u64,
    pub transactions: u64,
    pub new_transactions: u64,
    pub duplicate_transactions: u64,
    /// Of the duplicates, the probable ones (a Bloom positive) kept in `sales_duplicates` for `reconcile`.
    pub quarantined_transactions: u64,
    pub dead_letters: u64,
    /// Of the dead letters, files deferred to the next run (their reads or archive writes kept failing), which
    /// that run takes again; the others are final until `poslake replay`.
    pub deferred: u64,
    pub retries: u64,
    pub actor_restarts: u64,
    /// The dedup store that ran, and why.
    pub dedup: String,
    /// What recovery finished of earlier runs (and of this one, after a dedup store outage).
    pub recovery: Recovery,
    pub seconds: f64,
    /// The run was asked to stop (Ctrl-C) and drained: files not yet taken are left for the next run.
    pub interrupted: bool,
    /// For `poslake replay`: the dead letters selected (`files` counts those taken before any Ctrl-C).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    /// With `workers = "auto"`: the route slots this worker took files of in the run (of `slot_leases::SLOTS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_slots: Option<u32>,
}

impl IngestSummary {
    pub fn files_per_second(&self) -> f64 {
        self.files as f64 / self.seconds.max(1e-9)
    }

    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// `poslake maintain`: brings the file index up to the ledger, merges small manifests, and expires every table's
/// snapshots beyond the newest `keep` whose commits are complete (see [`maintain`]). Safe beside running ingests:
/// it passes over commits they have in progress, and a merge that loses a race with a commit is dropped.
pub async fn maintain(
    lake: &Path,
    catalog: Option<&str>,
    config: &DedupConfig,
    keep: usize,
    merge_at: usize,
) -> Result<maintain::Maintenance, IngestError> {
    let warehouse = Arc::new(Warehouse::open_with(lake, catalog).await?);
    let dedup = Arc::new(Dedup::open(config, warehouse.root()).await?);
    let ledger = LedgerIndex { files: FileIndex::open(dedup.clone(), config.expected_files).await? };
    let mark = ledger.sync(&warehouse).await?;
    Committer::new(warehouse, dedup).maintain(keep, merge_at, mark).await
}

/// `poslake maintain --remove-orphans-older-than-hours H`: deletes the files under the tables' folders that no
/// snapshot references and that are older than `older_than` (see `lake::orphans`).
pub async fn remove_orphans(
    lake: &Path,
    catalog: Option<&str>,
    config: &DedupConfig,
    older_than: std::time::SystemTime,
) -> Result<Vec<(&'static str, crate::lake::orphans::Orphans)>, IngestError> {
    let warehouse = Arc::new(Warehouse::open_with(lake, catalog).await?);
    let dedup = Arc::new(Dedup::open(config, warehouse.root()).await?);
    Committer::new(warehouse, dedup).remove_orphans(older_than).await
}

/// Runs one ingest of everything in staging not yet in the ledger. `progress` may be watched meanwhile.
pub async fn ingest(
    setup: &IngestSetup,
    pipeline: poslake_actors::PipelineConfig,
    progress: Arc<poslake_actors::Progress>,
) -> Result<IngestSummary, IngestRunError> {
    let started = std::time::Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    let Some(leases) = setup.route.leases() else {
        let stages = Arc::new(PosStages::open(setup, run_id.clone()).await?);
        return run(stages, run_id, started, pipeline, progress, None).await;
    };
    // Claimed before the ledger is read, so that whatever a slot's previous holder committed is skipped.
    leases.claim().await.map_err(IngestError::from)?;
    let result = match PosStages::open(setup, run_id.clone()).await {
        Ok(stages) => run(Arc::new(stages), run_id, started, pipeline, progress, None).await,
        Err(e) => Err(e.into()),
    };
    // What the run took files of: its claim, less any slot set aside or lost since.
    let held = leases.held().len() as u32;
    if let Err(e) = leases.release().await {
        tracing::warn!(error = %e, "could not release this run's route leases; they will expire");
    }
    let mut summary = result?;
    summary.route_slots = Some(held);
    Ok(summary)
}

/// Runs a replay of the dead letters `filter` selects (see [`replay`]): those whose newest ledger row is still a
/// dead letter, read from staging or else from the bronze archive. `progress` may be watched meanwhile.
pub async fn replay(
    setup: &IngestSetup,
    filter: &replay::ReplayFilter,
    pipeline: poslake_actors::PipelineConfig,
    progress: Arc<poslake_actors::Progress>,
) -> Result<IngestSummary, IngestRunError> {
    let started = std::time::Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    // A staging folder removed since (kept for a while, then cleaned up) leaves the archive to read from.
    let staging = match Staging::open(&setup.paths.staging) {
        Err(e) if e.is_missing_folder() => {
            tracing::warn!(error = %e, "staging is gone: each dead letter is read from the bronze archive, if it has it");
            Staging::gone(&setup.paths.staging)
        }
        other => other.map_err(IngestError::from)?,
    };
    // Opened first: recovery finishes any commit a stopped run left, so that the ledger is whole when read.
    let stages = PosStages::open_with(setup, run_id.clone(), staging).await?;
    let _one = replay::lock(stages.lake_root())?;
    let files = replay::select(stages.warehouse(), filter).await?;
    tracing::info!(files = files.len(), "dead letters selected for replay");
    let selected = files.len() as u64;
    let stages = Arc::new(stages.replaying(&files));
    drop(files);
    run(stages, run_id, started, pipeline, progress, Some(selected)).await
}

/// The dead letters a replay with `filter` would take, without taking them (`poslake replay --dry-run`).
pub async fn dead_letters(
    lake: &Path,
    catalog: Option<&str>,
    filter: &replay::ReplayFilter,
) -> Result<Vec<replay::DeadFile>, IngestError> {
    let warehouse = Warehouse::open_with(lake, catalog).await?;
    replay::select(&warehouse, filter).await
}

async fn run(
    stages: Arc<PosStages>,
    run_id: String,
    started: std::time::Instant,
    pipeline: poslake_actors::PipelineConfig,
    progress: Arc<poslake_actors::Progress>,
    replayed: Option<u64>,
) -> Result<IngestSummary, IngestRunError> {
    let snapshot = poslake_actors::run(stages.clone(), pipeline, progress.clone()).await?;
    let t = snapshot.totals;
    Ok(IngestSummary {
        run_id,
        files: t.files,
        bytes: t.bytes,
        already_ingested: stages.skipped(),
        other_workers_files: stages.routed_elsewhere(),
        transactions: t.transactions,
        new_transactions: t.new_transactions,
        duplicate_transactions: t.duplicates,
        quarantined_transactions: t.quarantined,
        dead_letters: t.dead_letters,
        deferred: t.deferred,
        retries: snapshot.retries,
        actor_restarts: snapshot.restarts,
        dedup: stages.dedup_backend(),
        recovery: stages.recovery(),
        seconds: started.elapsed().as_secs_f64(),
        interrupted: progress.stop_requested(),
        replayed,
        route_slots: None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum IngestRunError {
    /// The cause is the error's source: `{:#}` (anyhow, the binary) prints it after the colon once.
    #[error("opening the ingest")]
    Open(#[from] IngestError),
    #[error(transparent)]
    Pipeline(#[from] poslake_actors::PipelineError),
}

#[cfg(test)]
mod tests {
    use super::{Failure, Outcome};

    fn failure(stage: &'static str, kind: &'static str) -> Failure {
        Failure { stage, kind, reason: String::new(), line: None, column: None, attempts: 3 }
    }

    /// Failures of the lake's side or of a read are tried again by the next run; failures of the file are final.
    #[test]
    fn only_reads_and_archives_that_gave_up_are_deferred() {
        assert_eq!(failure("download", "gave_up").outcome(), Outcome::Deferred);
        assert_eq!(failure("archive", "gave_up").outcome(), Outcome::Deferred);
        for (stage, kind) in
            [("download", "too_large"), ("download", "not_a_file"), ("parse", "malformed"), ("parse", "gave_up")]
        {
            assert_eq!(failure(stage, kind).outcome(), Outcome::DeadLetter, "{stage}/{kind}");
        }
    }
}
