//! [`PosStages`]: what each stage of the pipeline does to a POS file (list, fetch, archive, parse, dedup, write,
//! commit), and the state one run keeps between them: the open lake writer, the keys in flight, the ledger's files.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use poslake_actors::{Stages, WriteReport};
use tracing::Instrument;

use super::archive::{Archive, ArchiveError};
use super::commit::{Committer, Recovery};
use super::in_flight::InFlightKeys;
use super::ledger_index::{LOOKUP_CHUNK, LedgerIndex};

/// The census looks up one listed entry in this many in the file index.
const CENSUS_SAMPLE: u64 = 64;
use super::staging::{StagedFile, Staging, StagingError};
use crate::dedup::{Dedup, DedupError, DedupKey, DedupStore, KeyDigest};
use crate::failpoint;
use crate::lake::rows::{FileRows, Quarantine, Source};
use crate::lake::{COMMIT_PROPERTY, DeadLetter, LakeWriter, LedgerEntry, Outcome, PreparedCommit, Warehouse};
use crate::model::ParsedFile;
use crate::parse::{ParseOptions, parse_file};

use super::{
    CommitPolicy, Failure, IngestError, IngestSetup, ParsedItem, ParsedRows, PosBatch, Verdict, claims, replay, route,
};

/// Data written but not yet committed, and the keys it carries.
struct Uncommitted {
    writer: LakeWriter,
    keys: Vec<DedupKey>,
    files: u64,
    since: std::time::Instant,
    /// When the oldest of `keys` was checked against the store.
    checked: Option<std::time::Instant>,
    /// A write failed, for this reason: the run is over.
    failed: Option<String>,
    /// What the files written since the last commit hold: published as metrics once they are committed.
    pending: WriteReport,
    /// Their dead letters by stage and reason, published with `pending`.
    dead_letters: super::commit::DeadLetterCounts,
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
    /// Keys of the commits other processes had in progress at the run's start (see [`PosStages::open_with`]).
    held_elsewhere: HashSet<KeyDigest>,
    /// Claims on this run's keys in flight, with other workers (see [`claims`]).
    claims: Option<claims::Claims>,
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
    max_deferred_runs: u32,
    /// The run's progress, told how much of the listing discovery passed over (see [`PosStages::census`]).
    progress: std::sync::OnceLock<Arc<poslake_actors::Progress>>,
    census_after: std::time::Duration,
    /// [`IngestSetup::commit_wait`].
    commit_wait: std::time::Duration,
}

impl PosStages {
    /// Opens staging, the lake and the dedup store, and recovers whatever a stopped run left half done.
    pub async fn open(setup: &IngestSetup, run_id: String) -> Result<Self, IngestError> {
        Self::open_with(setup, run_id, Staging::open(&setup.paths.staging)?).await
    }

    /// [`PosStages::open`] over staging already opened.
    pub(super) async fn open_with(setup: &IngestSetup, run_id: String, staging: Staging) -> Result<Self, IngestError> {
        let paths = &setup.paths;
        staging.refuse_as_lake(&paths.lake)?;
        let warehouse = Arc::new(Warehouse::open_with(&paths.lake, paths.catalog.as_deref()).await?);
        // An ingest writes every table: one another engine changed is refused now, not at the first batch.
        warehouse.check_writable()?;
        let archive = Archive::open(paths.archive.as_deref(), warehouse.root()).await?;
        // A lake or an archive kept inside its own staging area must not ingest its own files.
        let staging = staging.excluding(warehouse.root()).excluding_archive(archive.archived_at());
        let dedup = Arc::new(Dedup::open(&setup.dedup, warehouse.root()).await?);
        // Once a process, and again if it changes: a service opens the store for every run (a soak audit counted
        // 170,000 info lines a day at `--every 1s` with nothing landed).
        let backend = dedup.describe();
        static LAST: Mutex<Option<String>> = Mutex::new(None);
        let changed = LAST.lock().map(|mut last| last.replace(backend.clone()).as_ref() != Some(&backend));
        if changed.unwrap_or(true) {
            tracing::info!(backend = %backend, "dedup store");
        } else {
            tracing::debug!(backend = %backend, "dedup store");
        }
        let committer = Committer::new(warehouse.clone(), dedup);
        // Before recovery writes anything, to the store or the tables.
        committer.refuse_a_store_of_another_lake().await?;
        let mut recovery = committer.recover(None).await?;
        if let Some(leases) = setup.route.leases() {
            // A slot just taken over may have files in another worker's commit in progress: wait for it to end, so
            // that the ledger read below holds them. One that does not end within a lease (its worker paused
            // mid-commit) keeps its slots out of this run; the others go ahead.
            let held = leases.held();
            let (settled, waiting) = committer.settle(leases.lease_time(), &held).await?;
            recovery.absorb(settled);
            if !waiting.is_empty() {
                let aside: Vec<u32> = held.into_iter().filter(|s| waiting.iter().any(|i| i.touches(&[*s]))).collect();
                let intents: Vec<String> = waiting.iter().map(|i| i.path.display().to_string()).collect();
                tracing::warn!(slots = aside.len(), intents = ?intents,
                    "commits by another worker still in progress after a lease (a worker paused mid-commit?): their \
                     slots are left out of this run");
                leases.set_aside(&aside).await?;
            }
        } else {
            // Recovery passes over intents another live process holds: its own commit in progress, or its recovery
            // of a commit a killed worker left, whose files may be this worker's. The ledger is read once they end,
            // so that it holds those files; a commit still in progress after the wait (its process paused) is left
            // to its process, its keys held below.
            let (settled, waiting) = committer.settle(setup.commit_wait, &[]).await?;
            recovery.absorb(settled);
            if !waiting.is_empty() {
                let intents: Vec<String> = waiting.iter().map(|i| i.path.display().to_string()).collect();
                tracing::warn!(intents = ?intents, wait_secs = setup.commit_wait.as_secs(),
                    "commits by another process still in progress after the wait");
            }
        }
        // Keys of the commits still in progress elsewhere (a process paused mid-commit, or one committing on slots
        // this worker does not hold) reach the store only when they end: copies of those sales that this run takes
        // (re-sent files in its share) are quarantined, not landed, or both would land once those commits end. An
        // audit landed 25 sales twice so, with a worker held under a debugger after its first table.
        let (held_elsewhere, commits_elsewhere) = committer.keys_in_progress_elsewhere().await?;
        if !held_elsewhere.is_empty() {
            tracing::info!(
                keys = held_elsewhere.len(),
                commits = commits_elsewhere,
                "keys of commits in progress in other processes: copies of them in this run are quarantined"
            );
        }
        let ledger = LedgerIndex::load(&warehouse, committer.dedup(), setup.dedup.expected_files).await?;
        let open = Uncommitted {
            writer: LakeWriter::new(warehouse.clone()),
            keys: Vec::new(),
            files: 0,
            since: std::time::Instant::now(),
            checked: None,
            pending: WriteReport::default(),
            dead_letters: Default::default(),
            failed: None,
        };
        let worker = crate::config::worker_name();
        let route = Arc::new(setup.route.clone());
        let claims = claims::Claims::new(route.clone(), committer.dedup(), setup.dedup.claim_in_flight);
        Ok(PosStages {
            staging,
            archive,
            open: tokio::sync::Mutex::new(open),
            policy: setup.policy,
            warehouse,
            committer,
            in_flight: Mutex::new(InFlightKeys::default()),
            held_elsewhere,
            claims,
            healing: tokio::sync::Mutex::new(()),
            ledger: Arc::new(ledger),
            skipped: Arc::new(AtomicU64::new(0)),
            route,
            elsewhere: Arc::new(AtomicU64::new(0)),
            commit_prefix: format!("{run_id}/{worker}-{}", std::process::id()),
            run_id,
            batches: AtomicU64::new(0),
            parse: setup.parse.clone(),
            recovery: Mutex::new(recovery),
            replay: None,
            max_deferred_runs: setup.max_deferred_runs,
            progress: std::sync::OnceLock::new(),
            census_after: setup.census_after,
            commit_wait: setup.commit_wait,
        })
    }

    /// Whether this run takes dead letters again rather than what staging lists.
    pub(super) fn is_replay(&self) -> bool {
        self.replay.is_some()
    }

    /// How long the run lists before its census starts.
    pub(super) fn census_after(&self) -> std::time::Duration {
        self.census_after
    }

    /// Reports to `progress` how far discovery has gone through the listing (set before the run starts).
    pub(super) fn report_to(&self, progress: &Arc<poslake_actors::Progress>) {
        let _ = self.progress.set(progress.clone());
    }

    /// Counts into `progress` the entries of the staging listing this worker takes: a second listing, of names and
    /// sizes only, beside discovery. Discovery goes through the listing only as fast as files are taken (credits
    /// hold it back), so without this the run's size, and the time left, are known only at its end. Nothing is
    /// looked up: the time left assumes the rest of the listing holds new files in the share seen so far. A replay
    /// knows its files already.
    pub(super) async fn census(&self, progress: Arc<poslake_actors::Progress>) {
        // A replay's files are its selection, known at its start.
        if let Some(files) = &self.replay {
            progress.census_counted(files.len() as u64);
            progress.census_finished();
            return;
        }
        let route = self.route.clone();
        let mut listed = self.staging.list().ready_chunks(LOOKUP_CHUNK);
        let mut position = 0u64;
        while let Some(chunk) = listed.next().await {
            // A listing that fails here leaves no size (a short count would make the time left far too short); the
            // discovery's own listing says what failed, or goes on past it.
            if let Some(Err(e)) = chunk.iter().find(|f| f.is_err()) {
                tracing::debug!(error = %e, "the census of the listing stopped: no estimate of the run's size");
                return;
            }
            // An entry that is no file (a link out of staging, a FIFO) is listed, and discovered, as one.
            let ours: Vec<&StagedFile> = chunk.iter().flatten().filter(|f| route.takes(&f.path)).collect();
            // One entry in CENSUS_SAMPLE is looked up in the file index: where in the listing the new files are, for
            // a few lookups (a run's new files gather in some folders, today's, not spread evenly).
            let sampled: Vec<(u64, u128)> = (position..)
                .zip(&ours)
                .filter(|(at, _)| at % CENSUS_SAMPLE == 0)
                .map(|(at, f)| (at, LedgerIndex::id(&f.path, f.size)))
                .collect();
            if !sampled.is_empty() {
                let ids = sampled.iter().map(|(_, id)| *id).collect();
                let Ok(known) = self.ledger.files.contain(ids).await else { return };
                for ((at, _), known) in sampled.iter().zip(known) {
                    progress.census_sampled(*at, !known);
                }
            }
            position += ours.len() as u64;
            progress.census_counted(ours.len() as u64);
        }
        progress.census_finished();
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
        const GONE: &str = "no longer in staging, and the bronze archive has no copy of it (only files that reached the parser are \
             archived)";
        // A name that is not UTF-8 cannot be read back (see `DeadFile::staged`); gone from staging, it is missing.
        let unaddressable = file.refused.as_ref().is_some_and(|r| r.kind == "unusable_name");
        if unaddressable && file.path.contains('\u{FFFD}') && !self.staging.holds_lossy(&file.path) {
            return Err(StagingError::Refused { path: file.path.clone(), kind: "missing", reason: GONE.into() }.into());
        }
        let unread = match self.staging.get(file, self.parse.max_decompressed_bytes).await {
            Ok(bytes) => return Ok(bytes),
            // `get` reads only a file of the listed size.
            Err(StagingError::Changed { found, .. }) => Err(format!(
                "staging holds another file under this name now ({found} bytes, not {}), which `poslake ingest` takes \
                 as new; the bronze archive has no copy of this one",
                file.size
            )),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) if e.is_not_found() => Err(GONE.to_owned()),
            // Refused from its recorded size before any read: whether staging still holds it is asked apart.
            Err(StagingError::TooLarge { .. }) if !self.staging.holds(&file.path).await? => Err(GONE.to_owned()),
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
                self.abandon_uncommitted(open, &[], e.to_string());
                return Err(IngestError::Abandoned(e.to_string()));
            }
        };
        let keys = std::mem::take(&mut open.keys);
        let checked = open.checked.take();
        let span = tracing::info_span!(
            "commit",
            commit.id = %id,
            files = open.files as i64,
            iceberg.snapshot_id = tracing::field::Empty,
            iceberg.tables = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        // Once the intent is written, two checks before any table is committed. With leased route slots, the leases
        // are renewed, and a slot lost since the claim (another worker's now, and maybe its files too) stops the
        // commit (see `slot_leases`). With a shared store, a key that a running `poslake reconcile` promotes stops it
        // too, or both would land the key (see `reconcile`).
        let counts = super::commit::CommitCounts::of(&open.pending, &open.dead_letters);
        let commit = PreparedCommit { id, properties, tables, counts };
        let shared = self.committer.dedup().is_shared();
        let leases = self.route.leases();
        let result = if leases.is_none() && !shared {
            self.committer.commit(commit, &keys).instrument(span.clone()).await
        } else {
            let fence = async {
                if let Some(leases) = leases {
                    match leases.confirm().await {
                        Ok(lost) if lost.is_empty() => {}
                        Ok(lost) => return Err(IngestError::LeaseLost(lost)),
                        Err(e) => return Err(IngestError::LeaseUnconfirmed(e.to_string())),
                    }
                }
                // Any failure here stops the commit (never taken for the store losing state after the tables).
                match self.committer.dedup().fenced(&keys).await {
                    Ok(0) => {}
                    Ok(n) => return Err(IngestError::Reconciling(n)),
                    Err(e) => return Err(IngestError::FenceUnchecked(e.to_string())),
                }
                // Keys checked long ago are checked again: a reconcile's fence lasts a while, not for ever, and a
                // process paused past other workers' wait for its commits may meet sales they landed meanwhile (an
                // audit saw a worker resumed after a pause land 111 sales a second time).
                let checked = checked.unwrap_or_else(std::time::Instant::now);
                let limit = super::reconcile::RECHECK_AFTER.min(self.commit_wait);
                match self.committer.dedup().added_since(&keys, checked, limit).await {
                    Ok(0) => {}
                    Ok(n) => return Err(IngestError::ChecksStale(n)),
                    Err(e) => return Err(IngestError::FenceUnchecked(e.to_string())),
                }
                // So are their claims: a process paused past the wait may have lost them to another share.
                match &self.claims {
                    Some(claims) if checked.elapsed() >= limit => {
                        match claims.confirm(self.committer.dedup(), &keys).await {
                            Ok(0) => Ok(()),
                            Ok(n) => Err(IngestError::ClaimsLost(n)),
                            Err(e) => Err(IngestError::FenceUnchecked(e.to_string())),
                        }
                    }
                    _ => Ok(()),
                }
            };
            let slots = leases.map(|l| l.held()).unwrap_or_default();
            self.committer.commit_fenced(commit, &keys, &slots, fence).instrument(span.clone()).await
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
        // A run's first commit also asks whether the tables are past due: the count of commits below starts again
        // with every run, so a service's runs or a cron's, with fewer commits each than the interval, never reached
        // it (a soak audit saw 1,200 snapshots a table after 1,962 runs, with 100 kept).
        let overdue = seq == 0 && result.as_ref().is_ok_and(|commits| self.maintenance_overdue(commits));
        let counted_by_recovery = match result {
            Ok(_) => false,
            // The store lost its state between the table commits and the marks: recovery re-adds every
            // committed batch's keys, this one's included. It also finishes this commit's intent (its lock went
            // with the failed call), and counts what the intent lands.
            Err(IngestError::Dedup(DedupError::StateLost { .. })) => {
                self.heal_holding_open().await?;
                true
            }
            // Nothing was committed: everything open is given up, for whoever holds the slots now.
            Err(
                e @ (IngestError::LeaseLost(_)
                | IngestError::LeaseUnconfirmed(_)
                | IngestError::Reconciling(_)
                | IngestError::FenceUnchecked(_)
                | IngestError::ChecksStale(_)
                | IngestError::ClaimsLost(_)),
            ) => {
                self.abandon_uncommitted(open, &keys, e.to_string());
                return Err(e);
            }
            Err(e) => {
                // Whatever was committed is finished by the next start's recovery; nothing more is written now.
                open.failed = Some(e.to_string());
                return Err(e);
            }
        };
        self.release(&keys);
        if let Some(claims) = &self.claims {
            claims.release(self.committer.dedup(), &keys).await;
        }
        // Counted once committed: a batch written and then abandoned (its commit failed) is counted by the run that
        // lands it, and one whose intent a recovery finished, by that recovery.
        let pending = std::mem::take(&mut open.pending);
        let dead_letters = std::mem::take(&mut open.dead_letters);
        if !counted_by_recovery {
            poslake_actors::metric::committed(&pending);
            super::commit::count_dead_letters(&dead_letters);
        }
        open.files = 0;
        open.since = std::time::Instant::now();
        self.maybe_maintain(seq + 1, overdue).await;
        Ok(())
    }

    /// Whether a table just committed holds a quarter of `keep_snapshots` more snapshots than it keeps, or as many
    /// appends since its last manifest merge as `min_manifests_to_merge` (each append adds a manifest).
    fn maintenance_overdue(&self, commits: &[crate::lake::Commit]) -> bool {
        let (keep, merge_at) = (self.policy.keep_snapshots, self.policy.min_manifests_to_merge);
        commits.iter().any(|c| {
            (keep > 0 && c.snapshots >= keep + maintenance_interval(keep) as usize)
                || (merge_at > 0 && c.since_merge >= merge_at)
        })
    }

    /// Every quarter of `keep_snapshots` commits of a run (every 25 when snapshots are all kept), or when `overdue`,
    /// merges small manifests and expires the snapshots beyond `keep_snapshots` (see [`maintain`]). Maintenance
    /// never fails the run: what it leaves, the next one takes.
    async fn maybe_maintain(&self, commits: u64, overdue: bool) {
        let (keep, merge_at) = (self.policy.keep_snapshots, self.policy.min_manifests_to_merge);
        if (keep == 0 && merge_at == 0) || !(overdue || commits.is_multiple_of(maintenance_interval(keep))) {
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
    fn abandon_uncommitted(&self, open: &mut Uncommitted, also: &[DedupKey], reason: String) {
        open.writer = LakeWriter::new(self.warehouse.clone());
        open.failed = Some(reason);
        self.release(&open.keys);
        self.release(also);
        if let Some(claims) = &self.claims {
            claims.forget(&open.keys);
            claims.forget(also);
        }
        open.keys.clear();
        open.pending = WriteReport::default();
        open.dead_letters.clear();
        open.checked = None;
    }

    /// Takes out of a batch's reserved keys those `out` marks, giving them the verdict `verdict` and their
    /// in-flight reservation back; the rest, with their places.
    fn give_back(
        &self,
        reserved: Vec<DedupKey>,
        at: Vec<(usize, usize)>,
        out: &[bool],
        verdicts: &mut [Vec<Verdict>],
        verdict: Verdict,
    ) -> (Vec<DedupKey>, Vec<(usize, usize)>) {
        if !out.iter().any(|o| *o) {
            return (reserved, at);
        }
        let (mut kept, mut kept_at, mut given) = (Vec::with_capacity(reserved.len()), Vec::new(), Vec::new());
        for ((key, (i, j)), o) in reserved.into_iter().zip(at).zip(out) {
            if *o {
                verdicts[i][j] = verdict;
                given.push(key);
            } else {
                kept.push(key);
                kept_at.push((i, j));
            }
        }
        self.release(&given);
        (kept, kept_at)
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
        // A store that came back as another lake's (the URL now reaches another Redis) gets nothing of this one's: a
        // re-audit saw a heal adopt it, add this lake's keys and marks there, and raise its record.
        self.committer.refuse_a_store_of_another_lake().await?;
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
            given_up: false,
        })?;
        Ok(ParsedRows {
            keys: parsed.transactions.iter().map(|t| DedupKey::of(&t.header.key)).collect(),
            first_date: parsed.transactions.first().map(|t| t.header.key.business_date),
            facts: parsed.facts,
            rows,
            envelope: parsed.envelope.to_json(),
        })
    }

    /// Quarantines a file's probable duplicates whole. The parsed transactions were dropped after the parse
    /// (Bloom positives are rare), so the raw bytes are parsed again: the parse is deterministic.
    fn add_quarantined(
        &self,
        rows: &mut crate::lake::Rows,
        item: &ParsedItem,
        verdicts: &[Verdict],
        at: chrono::NaiveDateTime,
    ) -> Result<(), IngestError> {
        let parsed = parse_file(&item.file.path, &item.bytes, &self.parse).map_err(|e| {
            IngestError::Abandoned(format!("{} parsed once but not again, for its quarantine: {e}", item.file.path))
        })?;
        let source = Source::of(&parsed);
        for (tx, verdict) in parsed.transactions.iter().zip(verdicts) {
            if let Some(reason) = verdict.quarantine_reason() {
                rows.add_quarantine(&source, tx, &Quarantine { run_id: &self.run_id, reason, at })?;
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
        let (ledger, warehouse) = (self.ledger.clone(), self.warehouse.clone());
        let skipped = self.skipped.clone();
        let (route, elsewhere) = (self.route.clone(), self.elsewhere.clone());
        let progress = self.progress.get().cloned();
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
                let (ledger, warehouse, skipped) = (ledger.clone(), warehouse.clone(), skipped.clone());
                let progress = progress.clone();
                async move {
                    let entries = listed.len();
                    let new = ledger.keep_new(&warehouse, listed, &skipped).await;
                    if let Some(progress) = &progress {
                        progress.passed_over(entries.saturating_sub(new.len()) as u64);
                    }
                    futures::stream::iter(new)
                }
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

    fn text_size(&self, _file: &StagedFile, bytes: &Bytes) -> u64 {
        crate::parse::text_size(bytes, self.parse.max_decompressed_bytes)
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
                given_up: false,
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
        let failure = Failure { stage, kind, reason, line: None, column: None, attempts, given_up: false };
        ParsedItem {
            file: file.clone(),
            content_hash: String::new(),
            bytes: Bytes::new(),
            result: Err(failure),
            trace_id: None,
        }
    }

    async fn dedup(&self, mut items: Vec<ParsedItem>) -> Result<PosBatch, IngestError> {
        // A file that as many earlier runs deferred as allowed is given up now rather than taken by every run.
        for item in &mut items {
            if let Err(f) = &mut item.result
                && f.outcome() == Outcome::Deferred
            {
                let earlier = self.ledger.deferrals(&item.file).await?;
                if earlier + 1 >= self.max_deferred_runs {
                    f.give_up(earlier);
                }
            }
        }
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
                    } else if !self.held_elsewhere.is_empty() && self.held_elsewhere.contains(&key.digest) {
                        v.push(Verdict::InProgressElsewhere);
                    } else {
                        v.push(Verdict::New);
                        ask.push(*key);
                        asked_at.push((i, j));
                    }
                }
                verdicts.push(v);
            }
        }
        // Before the round trip: what the store held from this moment on is what the check saw.
        let checked = std::time::Instant::now();
        let seen = self.contains(&ask).await?;
        failpoint::hit("dedup-check");
        let exact = self.committer.dedup().exact();
        let mut reserved = Vec::with_capacity(ask.len());
        let mut reserved_at = Vec::with_capacity(ask.len());
        {
            let mut in_flight =
                self.in_flight.lock().map_err(|_| IngestError::Abandoned("in-flight keys poisoned".into()))?;
            for ((key, (i, j)), seen) in ask.into_iter().zip(asked_at).zip(seen) {
                if seen {
                    verdicts[i][j] = if exact { Verdict::Duplicate } else { Verdict::Quarantined };
                } else if in_flight.reserve(key.digest) {
                    reserved.push(key);
                    reserved_at.push((i, j));
                } else {
                    verdicts[i][j] = Verdict::Duplicate;
                }
            }
        }
        if let Some(claims) = &self.claims
            && !reserved.is_empty()
        {
            let paths: Vec<&str> = reserved_at.iter().map(|&(i, _)| items[i].file.path.as_str()).collect();
            let elsewhere = match claims.claim(self.committer.dedup(), &reserved, &paths).await {
                Ok(e) => e,
                Err(e) => {
                    self.release(&reserved);
                    return Err(e.into());
                }
            };
            failpoint::hit("dedup-claim");
            (reserved, reserved_at) =
                self.give_back(reserved, reserved_at, &elsewhere, &mut verdicts, Verdict::ClaimedElsewhere);
            // Checked again once claimed: another worker may have checked, claimed, landed and released a key
            // between this check and this claim (this process paused there). A claim ends only once its keys are
            // in the store, so a key claimed now is either in flight nowhere else or in the store already. An audit
            // held a worker between the two and saw 599 sales land twice.
            if !reserved.is_empty() {
                let landed = match self.contains(&reserved).await {
                    Ok(l) => l,
                    Err(e) => {
                        claims.forget(&reserved);
                        self.release(&reserved);
                        return Err(e);
                    }
                };
                if landed.iter().any(|l| *l) {
                    let ended: Vec<DedupKey> =
                        reserved.iter().zip(&landed).filter(|(_, l)| **l).map(|(k, _)| *k).collect();
                    (reserved, _) =
                        self.give_back(reserved, reserved_at, &landed, &mut verdicts, Verdict::LandedMeanwhile);
                    claims.release(self.committer.dedup(), &ended).await;
                }
            }
        }
        Ok(PosBatch { items, verdicts, reserved: Arc::new(reserved), checked })
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
        for (item, verdicts) in batch.items.iter().zip(&batch.verdicts) {
            report.files += 1;
            report.bytes += item.file.size;
            match &item.result {
                Ok(parsed) => {
                    let keep: Vec<bool> = verdicts.iter().map(|v| *v == Verdict::New).collect();
                    rows.add_built(parsed.rows.select(&keep)?);
                    let fresh = keep.iter().filter(|k| **k).count() as u32;
                    let quarantined = verdicts.iter().filter(|v| v.quarantine_reason().is_some()).count() as u32;
                    if quarantined > 0 {
                        self.add_quarantined(&mut rows, item, verdicts, at)?;
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
                        envelope: parsed.envelope.clone(),
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
        if let Some(reason) = &open.failed {
            return Err(IngestError::Abandoned(format!("an earlier write of this run failed: {reason}")));
        }
        if let Err(e) = open.writer.write(rows).await {
            self.abandon_uncommitted(&mut open, &batch.reserved, e.to_string());
            return Err(IngestError::Abandoned(e.to_string()));
        }
        failpoint::hit("write");
        for item in &batch.items {
            if let Err(f) = &item.result {
                *open.dead_letters.entry((f.stage.to_owned(), f.kind.to_owned())).or_default() += 1;
            }
        }
        if !batch.reserved.is_empty() {
            open.checked = Some(open.checked.map_or(batch.checked, |t| t.min(batch.checked)));
        }
        open.keys.extend_from_slice(&batch.reserved);
        open.files += batch.items.len() as u64;
        open.pending.add(&report);
        if open.files >= self.policy.files || open.since.elapsed() >= self.policy.interval {
            self.commit(&mut open).await?;
        }
        Ok(report)
    }

    async fn finish(&self) -> Result<(), IngestError> {
        let mut open = self.open.lock().await;
        if let Some(reason) = &open.failed {
            return Err(IngestError::Abandoned(format!("an earlier write of this run failed: {reason}")));
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

/// Commits between maintenance passes: a quarter of the snapshots kept, or 25 when all are kept.
fn maintenance_interval(keep: usize) -> u64 {
    if keep > 0 { (keep as u64 / 4).max(1) } else { 25 }
}
