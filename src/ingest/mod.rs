//! Ingest: POS files in staging become rows of the lake, through the supervised pipeline of `poslake-actors`.
//! This module is the domain side, [`PosStages`] (in `pos_stages`): what each stage does to a POS file. The actors
//! decide when and where it runs.
//!
//! - [`staging`]: listing and reading the staging area (object_store; local by default);
//! - [`archive`]: the immutable bronze archive of raw files;
//! - [`reconcile`]: verifying the quarantine exactly and promoting false positives;
//! - [`replay`]: taking dead-lettered files again, once what refused them was fixed;
//! - [`commit`]: the exactly-once protocol between the lake and the dedup store, and recovery;
//! - [`maintain`]: table maintenance (merging manifests, expiring snapshots, removing orphans) within that protocol.

pub mod archive;
mod claims;
pub mod commit;
mod in_flight;
mod ledger_index;
mod location;
pub mod maintain;
mod pos_stages;
pub mod reconcile;
pub mod replay;
pub mod route;
pub mod slot_leases;
pub mod staging;
pub mod worker_lock;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::DedupConfig;
use crate::dedup::{Dedup, DedupError, DedupKey, FileIndex};
use crate::lake::rows::FileRows;
use crate::lake::{LakeError, Outcome, Warehouse};
use crate::model::FileFacts;
use crate::parse::ParseOptions;
use archive::ArchiveError;
use commit::{Committer, Recovery};
use ledger_index::LedgerIndex;
use staging::{StagedFile, Staging, StagingError};

pub use pos_stages::PosStages;

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
    /// Runs that may defer a file before it is given up as a dead letter.
    pub max_deferred_runs: u32,
    /// How long a run lists before a census counts the listing for its time left (see `PosStages::census`).
    pub census_after: std::time::Duration,
    /// How long a run without leased slots waits at its start for the commits other processes have in progress
    /// (see `PosStages::open`); with a shared store, a commit whose keys were checked longer ago checks them again.
    pub commit_wait: std::time::Duration,
}

/// [`IngestSetup::commit_wait`] by default.
pub const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`IngestSetup::census_after`] by default: a short run, or one with little new, never pays for a second listing.
pub const CENSUS_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

impl IngestSetup {
    /// Embedded defaults for these paths.
    pub fn new(paths: IngestPaths) -> Self {
        IngestSetup {
            paths,
            parse: ParseOptions::default(),
            policy: CommitPolicy::default(),
            dedup: DedupConfig::default(),
            route: route::Route::all(),
            max_deferred_runs: 24,
            census_after: CENSUS_AFTER,
            commit_wait: COMMIT_WAIT,
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
    /// Another run on the lake takes the same share of staging (see [`worker_lock`]).
    #[error(
        "another `poslake ingest` on {} runs as {holder}, so this one ({worker}) would take the same files and land \
         them twice: one run per worker at a time (wait for it to end, or give each process its own --worker-index)",
        lake.display()
    )]
    WorkerRunning { lake: PathBuf, worker: String, holder: String },
    /// The dedup store's file index holds another lake's ledger, or more of this lake's than the lake has now (it was
    /// restored from an older copy): trusted, it would skip files and drop keys this lake never landed.
    #[error(
        "the dedup store ({store}) {why}: it would skip as already ingested files this lake does not hold, and drop \
         their sales. If the lake was restored, or the store belongs to another lake, start this lake's store over \
         (embedded: move <lake>/dedup aside; Redis: delete the keys under its key_prefix, or give this lake a \
         key_prefix of its own), then run `poslake dedup rebuild`; the next ingest takes every file the ledger lacks"
    )]
    StoreNotOfThisLake { store: String, why: String },
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
    /// A `poslake reconcile` running meanwhile promotes keys this commit holds: nothing was committed, and the
    /// files are left for the next run (which finds those keys in the store and quarantines them).
    #[error(
        "a poslake reconcile running meanwhile promotes {0} transactions this commit holds: nothing committed, the \
         files are left for the next run"
    )]
    Reconciling(usize),
    /// The reconcile fence could not be checked before a commit (Redis unreachable past its limit, or restarted
    /// without its data, which a fence may have been part of).
    #[error("could not check the reconcile fence before a commit ({0}): uncommitted work abandoned, for the next run")]
    FenceUnchecked(String),
    /// Keys this commit holds were checked so long ago (the process was paused, or waited out a long outage) that a
    /// reconcile's fence over them could have come and gone, and another process has added some of them since.
    #[error(
        "{0} transactions of this commit, checked as new long before it, are in the dedup store now (another process \
         added them meanwhile): nothing committed, the files are left for the next run"
    )]
    ChecksStale(usize),
    /// Keys this commit holds were checked so long ago that their claims could have expired, and another share of
    /// the staging area claims some of them now (see `claims`).
    #[error(
        "{0} transactions of this commit, checked as new long before it, are claimed by another worker now (this \
         process was paused past its claims): nothing committed, the files are left for the next run"
    )]
    ClaimsLost(usize),
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
            | IngestError::WorkerRunning { .. }
            | IngestError::StoreNotOfThisLake { .. }
            | IngestError::LeaseLost(_)
            | IngestError::LeaseUnconfirmed(_)
            | IngestError::Reconciling(_)
            | IngestError::FenceUnchecked(_)
            | IngestError::ChecksStale(_)
            | IngestError::ClaimsLost(_) => false,
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
    /// Earlier runs deferred the file as many times as allowed: this failure is final.
    pub given_up: bool,
}

impl Failure {
    /// How the ledger records the file. Tries exhausted at reading it or at archiving it, or a file that changed
    /// since it was listed, may work next time (a file still being written, a permission fixed, the lake's disk
    /// freed): deferred, so that the next run takes it
    /// again, up to `max_deferred_runs` runs. What the file holds, or what the listing ruled out, will not change:
    /// a dead letter, done.
    pub fn outcome(&self) -> Outcome {
        match (self.stage, self.kind) {
            ("download" | "archive", "gave_up") if !self.given_up => Outcome::Deferred,
            // Replaced between the listing and the read: the next run lists it again, whatever its size then. As a
            // dead letter under its listed size, a file put back as it was listed was skipped as seen for good.
            ("download", "changed") if !self.given_up => Outcome::Deferred,
            _ => Outcome::DeadLetter,
        }
    }

    /// Makes a deferrable failure final, after `earlier` runs deferred the file.
    pub fn give_up(&mut self, earlier: u32) {
        self.given_up = true;
        self.reason.push_str(&format!(
            " (deferred by {earlier} earlier runs: given up after max_deferred_runs runs; `poslake replay` \
             takes it again)"
        ));
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
    /// The file's values outside its transactions, for its ledger row (a JSON object).
    pub envelope: Option<String>,
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
    /// In a commit another process had in progress when this run started (paused mid-commit, say), whose keys the
    /// store will have only once it ends: quarantined too, for `reconcile` to check once it has.
    InProgressElsewhere,
    /// Claimed in flight by another share of the staging area (another worker took a copy of this sale in the
    /// same commit window; see `claims`): quarantined, for `reconcile` to check once that commit has landed it.
    ClaimedElsewhere,
    /// Found new, then in the store once claimed: another worker landed it between this check and this claim (this
    /// process paused there); quarantined, for `reconcile` to confirm.
    LandedMeanwhile,
}

impl Verdict {
    /// Why a transaction is quarantined (the `reason` of its `sales_duplicates` row); `None` if it is not.
    pub fn quarantine_reason(self) -> Option<&'static str> {
        match self {
            Verdict::Quarantined => Some("filter"),
            Verdict::InProgressElsewhere => Some("commit_in_progress"),
            Verdict::ClaimedElsewhere => Some("in_flight_elsewhere"),
            Verdict::LandedMeanwhile => Some("landed_meanwhile"),
            Verdict::New | Verdict::Duplicate => None,
        }
    }
}

/// Parsed files whose keys were checked: `verdicts[i][j]` is for transaction `j` of file `i`.
pub struct PosBatch {
    items: Vec<ParsedItem>,
    verdicts: Vec<Vec<Verdict>>,
    reserved: Arc<Vec<DedupKey>>,
    /// When `reserved` was checked against the store.
    checked: std::time::Instant,
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
    let ledger = LedgerIndex::new(FileIndex::open(dedup.clone(), config.expected_files).await?);
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

/// What a service checks once, before its first run: staging opens and is not the lake, and the lake, if it is
/// there, is a folder. No retry mends these mistakes, so they fail the start rather than every run.
pub fn check_paths(paths: &IngestPaths) -> Result<(), IngestError> {
    staging::Staging::open(&paths.staging)?.refuse_as_lake(&paths.lake)?;
    match std::fs::metadata(&paths.lake) {
        Ok(m) if !m.is_dir() => Err(LakeError::Io {
            path: paths.lake.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "the lake must be a folder; this is a file"),
        }
        .into()),
        _ => Ok(()),
    }
}

/// Runs one ingest of everything in staging not yet in the ledger. `progress` may be watched meanwhile.
pub async fn ingest(
    setup: &IngestSetup,
    pipeline: poslake_actors::PipelineConfig,
    progress: Arc<poslake_actors::Progress>,
) -> Result<IngestSummary, IngestRunError> {
    let started = std::time::Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    let _worker = worker_lock::lock(&setup.paths.lake, setup.route.worker())?;
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
    if held == 0 && summary.other_workers_files > 0 {
        // Not a failure (other workers may be taking them), but a one-off run beside none looks done when it is not:
        // an audit saw one take nothing while a killed worker's leases had yet to expire.
        tracing::warn!(
            files = summary.other_workers_files,
            "this run held no route slot: every slot is leased by another worker (live, or stopped and not yet \
             expired); their files wait for those workers, or for a run after the leases expire"
        );
    }
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
    // Before the store: a second replay is refused for what it is, not for the embedded store the first one holds.
    let _one = replay::lock(&setup.paths.lake)?;
    // Opened first: recovery finishes any commit a stopped run left, so that the ledger is whole when read.
    let stages = PosStages::open_with(setup, run_id.clone(), staging).await?;
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

/// What [`replay::absent_values`] says of `filter` on the lake at `lake`.
pub async fn absent_replay_values(
    lake: &Path,
    catalog: Option<&str>,
    filter: &replay::ReplayFilter,
) -> Result<Vec<String>, IngestError> {
    let warehouse = Warehouse::open_with(lake, catalog).await?;
    replay::absent_values(&warehouse, filter).await
}

async fn run(
    stages: Arc<PosStages>,
    run_id: String,
    started: std::time::Instant,
    pipeline: poslake_actors::PipelineConfig,
    progress: Arc<poslake_actors::Progress>,
    replayed: Option<u64>,
) -> Result<IngestSummary, IngestRunError> {
    // A run still listing after a few seconds is long enough to want its size: a census counts the listing beside it.
    stages.report_to(&progress);
    let census = {
        let (stages, progress, after) = (stages.clone(), progress.clone(), stages.census_after());
        tokio::spawn(async move {
            // A replay knows its size at once.
            if !stages.is_replay() {
                tokio::time::sleep(after).await;
            }
            if !progress.discovery_done() {
                stages.census(progress).await;
            }
        })
    };
    let snapshot = poslake_actors::run(stages.clone(), pipeline, progress.clone()).await;
    census.abort();
    let snapshot = snapshot?;
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

impl IngestRunError {
    /// Another run of the same worker holds the lake (see [`worker_lock`]): a service skips its turn.
    pub fn is_worker_busy(&self) -> bool {
        matches!(self, IngestRunError::Open(IngestError::WorkerRunning { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::{Failure, Outcome};

    fn failure(stage: &'static str, kind: &'static str) -> Failure {
        Failure { stage, kind, reason: String::new(), line: None, column: None, attempts: 3, given_up: false }
    }

    /// Failures of the lake's side or of a read are tried again by the next run; failures of the file are final.
    #[test]
    fn only_reads_and_archives_that_gave_up_and_changed_files_are_deferred() {
        assert_eq!(failure("download", "gave_up").outcome(), Outcome::Deferred);
        assert_eq!(failure("archive", "gave_up").outcome(), Outcome::Deferred);
        assert_eq!(failure("download", "changed").outcome(), Outcome::Deferred);
        for (stage, kind) in
            [("download", "too_large"), ("download", "not_a_file"), ("parse", "malformed"), ("parse", "gave_up")]
        {
            assert_eq!(failure(stage, kind).outcome(), Outcome::DeadLetter, "{stage}/{kind}");
        }
        // Deferred by as many runs as allowed: final.
        let mut last = failure("download", "gave_up");
        last.give_up(24);
        assert_eq!(last.outcome(), Outcome::DeadLetter);
        assert!(last.reason.contains("deferred by 24 earlier runs"), "{}", last.reason);
    }
}
