//! The exactly-once protocol between the lake and the dedup store.
//!
//! A commit, in order:
//! 1. the batch's keys were checked (and held in memory as in flight) before its rows were written;
//! 2. the data files are closed and listed in a durable intent (`lake::commit_log`);
//! 3. each table is committed with the commit id (`run/worker/sequence`) in its snapshot summary;
//! 4. the keys are added to the dedup store, and only then
//! 5. the commit is marked applied in the store and the intent removed.
//!
//! A crash anywhere leaves one of: nothing committed (the files are not in the ledger: the next run redoes them);
//! an intent (recovery finishes its tables, never committing one twice); or committed tables whose keys the store
//! may lack (recovery finds the commit unmarked in the store and re-adds its keys from the snapshot's
//! `sales_header` files). Keys are never in the store before their data is committed, so a retry never mistakes
//! its own sales for duplicates.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{Array, Date32Array, RecordBatch, StringArray};
use chrono::NaiveDate;

use super::IngestError;
use super::maintain::history_marker;
use crate::dedup::{Dedup, DedupKey, DedupStore, Holding, KeyDigest};
use crate::failpoint;
use crate::lake::tables::{FILE_LEDGER, SALES_HEADER, TABLES};
use crate::lake::{Commit, IntentLock, PreparedCommit, Warehouse};
use crate::model::{KeyVariant, TransactionKey};

/// Rounds of [`Committer::settle`] at most: each finishes at least one abandoned commit, or is the last.
const SETTLE_ROUNDS: usize = 8;

/// What a recovery did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Recovery {
    /// Half-made commits finished from their intents.
    pub intents_finished: u64,
    /// Committed batches whose keys the store lacked, and how many keys were re-added for them.
    pub commits_readded: u64,
    pub keys_readded: u64,
    /// Complete commits without `sales_header` rows that the store had not marked applied (it lost its state).
    pub keyless_marked: u64,
}

impl Recovery {
    /// Adds what a later round of recovery did.
    pub fn absorb(&mut self, more: Recovery) {
        self.intents_finished += more.intents_finished;
        self.commits_readded += more.commits_readded;
        self.keys_readded += more.keys_readded;
        self.keyless_marked += more.keyless_marked;
    }
}

/// What a commit lands, as the pipeline counts it ([`poslake_actors::WriteReport`]), in the form its intent keeps
/// ([`PreparedCommit::counts`]): a recovery that finishes the commit counts it in the metrics, as the process that
/// began it would have.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CommitCounts {
    files: u64,
    bytes: u64,
    transactions: u64,
    new_transactions: u64,
    duplicates: u64,
    quarantined: u64,
    dead_letters: u64,
    deferred: u64,
    /// Dead letters by stage and reason (an intent written before session 35 has none).
    #[serde(default)]
    dead_letter_reasons: Vec<(String, String, u64)>,
}

/// Dead letters by (stage, reason), counted once their commit is made.
pub type DeadLetterCounts = std::collections::BTreeMap<(String, String), u64>;

/// Counts committed dead letters in `poslake_dead_letters_total`, as the files are counted: at the commit, so that a
/// run whose commit failed does not count the files its next run lands again.
pub fn count_dead_letters(counts: &DeadLetterCounts) {
    for ((stage, reason), n) in counts {
        metrics::counter!(crate::telemetry::metric::DEAD_LETTERS, "stage" => stage.clone(), "reason" => reason.clone())
            .increment(*n);
    }
}

impl CommitCounts {
    /// The counts as an intent keeps them.
    pub fn of(r: &poslake_actors::WriteReport, dead_letters: &DeadLetterCounts) -> Option<serde_json::Value> {
        let counts = CommitCounts {
            files: r.files,
            bytes: r.bytes,
            transactions: r.transactions,
            new_transactions: r.new_transactions,
            duplicates: r.duplicates,
            quarantined: r.quarantined,
            dead_letters: r.dead_letters,
            deferred: r.deferred,
            dead_letter_reasons: dead_letters.iter().map(|((s, k), n)| (s.clone(), k.clone(), *n)).collect(),
        };
        serde_json::to_value(counts).ok()
    }

    /// The counts an intent kept; `None` for an intent without them (or with some other value).
    fn report(kept: serde_json::Value) -> Option<(poslake_actors::WriteReport, DeadLetterCounts)> {
        let c: CommitCounts = serde_json::from_value(kept).ok()?;
        let reasons = c.dead_letter_reasons.into_iter().map(|(s, k, n)| ((s, k), n)).collect();
        let report = poslake_actors::WriteReport {
            files: c.files,
            bytes: c.bytes,
            transactions: c.transactions,
            new_transactions: c.new_transactions,
            duplicates: c.duplicates,
            quarantined: c.quarantined,
            dead_letters: c.dead_letters,
            deferred: c.deferred,
        };
        Some((report, reasons))
    }
}

pub struct Committer {
    warehouse: Arc<Warehouse>,
    dedup: Arc<Dedup>,
}

/// Keys per add when rebuilding the store from `sales_header`.
const REBUILD_CHUNK: usize = 100_000;
/// The columns of `sales_header` that make up a key.
const KEY_COLUMNS: [&str; 5] = ["site", "business_date", "register", "sequence", "key_variant"];

impl Committer {
    pub fn new(warehouse: Arc<Warehouse>, dedup: Arc<Dedup>) -> Self {
        Committer { warehouse, dedup }
    }

    pub fn dedup(&self) -> &Arc<Dedup> {
        &self.dedup
    }

    pub fn warehouse(&self) -> &Arc<Warehouse> {
        &self.warehouse
    }

    /// Commits the prepared tables and then adds `keys` (the keys of the new `sales_header` rows).
    pub async fn commit(&self, commit: PreparedCommit, keys: &[DedupKey]) -> Result<Vec<Commit>, IngestError> {
        if commit.tables.is_empty() {
            return Ok(Vec::new());
        }
        // Held until the intent is removed (or this returns early): no other worker recovers it meanwhile.
        let intent = self.warehouse.write_intent(&commit).await?;
        failpoint::hit("commit-intent");
        self.apply(commit, keys, intent).await
    }

    /// [`Committer::commit`] by a worker that leases route `slots`, with `fence` (the renewal of its leases)
    /// checked once the intent is written and before any table is committed. If the fence fails, the intent is
    /// removed and nothing is committed; if the process dies before it passes, recovery drops the intent. Another
    /// worker that takes one of `slots` over after the fence passed sees this commit's intent and waits for it.
    pub async fn commit_fenced(
        &self,
        commit: PreparedCommit,
        keys: &[DedupKey],
        slots: &[u32],
        fence: impl std::future::Future<Output = Result<(), IngestError>>,
    ) -> Result<Vec<Commit>, IngestError> {
        if commit.tables.is_empty() {
            return Ok(Vec::new());
        }
        let intent = self.warehouse.write_fenced_intent(&commit, slots).await?;
        if let Err(e) = fence.await {
            self.warehouse.remove_intent(&commit.id)?;
            return Err(e);
        }
        self.warehouse.pass_fence(&commit.id)?;
        // As for an unfenced commit: the intent is made, and recovery finishes it.
        failpoint::hit("commit-intent");
        self.apply(commit, keys, intent).await
    }

    /// The rest of a commit once its intent is made: the tables, the keys, the applied mark; the intent (and its
    /// lock, dropped at the end) last.
    async fn apply(
        &self,
        commit: PreparedCommit,
        keys: &[DedupKey],
        _intent: IntentLock,
    ) -> Result<Vec<Commit>, IngestError> {
        let id = commit.id.clone();
        let commits = self.warehouse.apply_with(commit, || failpoint::hit("commit-table")).await?;
        if let Some(ledger) = commits.iter().find(|c| c.table == FILE_LEDGER.name) {
            self.record_lake(&ledger.table_uuid, ledger.sequence).await?;
        }
        failpoint::hit("commit-recorded");
        self.dedup.add(keys).await?;
        failpoint::hit("commit-keys");
        self.dedup.mark_applied(std::slice::from_ref(&id), Holding::Keys(keys)).await?;
        failpoint::hit("commit-applied");
        self.warehouse.remove_intent(&id)?;
        Ok(commits)
    }

    /// Refuses a store that is not this lake's, or is ahead of it (see
    /// [`super::ledger_index::refuse_a_store_of_another_lake`]). Called before anything writes to the store or the
    /// tables: a recovery run first wrote a refused lake's keys into another lake's store, and finished a commit
    /// into a restored catalog, which took its ledger up to the store's record and hid the restore (an audit lost
    /// 18 sales that way with the embedded store).
    pub async fn refuse_a_store_of_another_lake(&self) -> Result<(), IngestError> {
        // The record before the ledger, as a sync reads them (see `LedgerIndex::sync`).
        let record = self.dedup.lake_record().await?;
        let ledger = self.warehouse.load(FILE_LEDGER.name).await?;
        super::ledger_index::refuse_a_store_of_another_lake(&ledger, record, &self.dedup.describe())
    }

    /// Records in the store how far the ledger has reached now, before keys of commits up to there go in (see
    /// [`Committer::apply`]).
    async fn record_current_ledger(&self) -> Result<(), IngestError> {
        let ledger = self.warehouse.load(FILE_LEDGER.name).await?;
        if let Some(current) = ledger.metadata().current_snapshot() {
            self.record_lake(&ledger.metadata().uuid().to_string(), current.sequence_number()).await?;
        }
        Ok(())
    }

    /// Records in the store that it holds the keys of the ledger table `table` up to `sequence`; refused when the
    /// store's record names another lake's ledger (its keys are that lake's).
    async fn record_lake(&self, table: &str, sequence: i64) -> Result<(), IngestError> {
        match self.dedup.record_lake(table, sequence).await? {
            Some(held) => Err(super::ledger_index::another_lake(&self.dedup.describe(), &held, table)),
            None => Ok(()),
        }
    }

    /// Waits for the commits other processes have in progress (those touching `slots`; every one when empty) to end,
    /// for at most `limit` each round, and finishes those whose process died: an intent waited for whose process
    /// died meanwhile, or one that another process began to recover while this one recovered, has not ended, and
    /// what it lands must be in the tables before the caller reads them (an audit saw a worker go on past such a
    /// commit, take its files again, and land their sales twice once the next start finished it). Returns what
    /// recovery did, and the commits still in progress after `limit`.
    pub async fn settle(
        &self,
        limit: std::time::Duration,
        slots: &[u32],
    ) -> Result<(Recovery, Vec<crate::lake::LiveIntent>), IngestError> {
        let mut recovery = Recovery::default();
        for _ in 0..SETTLE_ROUNDS {
            let waiting = self.warehouse.wait_for_live_intents(limit, slots).await?;
            if !waiting.is_empty() {
                return Ok((recovery, waiting));
            }
            if !self.warehouse.has_abandoned_intents()? {
                break;
            }
            recovery.absorb(self.recover(None).await?);
        }
        Ok((recovery, Vec::new()))
    }

    /// The keys of the `sales_header` rows in the commits other processes have in progress now (see
    /// [`Warehouse::live_commits`]), and how many such commits there are. Their keys reach the store only once
    /// they end, which a paused process may put off for as long as it stays paused. A data file that cannot be read
    /// (its commit was given up and the file removed) is passed over with a warning.
    pub async fn keys_in_progress_elsewhere(&self) -> Result<(HashSet<KeyDigest>, usize), IngestError> {
        let (commits, being_written) = self.warehouse.live_commits().await?;
        if being_written > 0 {
            tracing::warn!(
                intents = being_written,
                "commits by another process are still writing their intents: their keys cannot be read"
            );
        }
        let mut keys = HashSet::new();
        let count = commits.len() + being_written;
        if commits.is_empty() {
            return Ok((keys, count));
        }
        let table = self.warehouse.load(SALES_HEADER.name).await?;
        for commit in commits {
            let Some(header) = commit.tables.iter().find(|t| t.table == SALES_HEADER.name) else { continue };
            for file in &header.files {
                match Warehouse::read_table_file(&table, file.file_path(), &KEY_COLUMNS).await {
                    Ok(batches) => keys.extend(keys_of(&batches)?.into_iter().map(|k| k.digest)),
                    Err(e) => tracing::warn!(commit = %commit.id, file = file.file_path(), error = %e,
                        "a data file of a commit in progress elsewhere could not be read: its keys are not held"),
                }
            }
        }
        Ok((keys, count))
    }

    /// Finishes what a stopped process left: pending intents, then the keys of every committed batch the store
    /// has not marked applied. `only_prefix` limits the second part to commit ids with that prefix (this run's,
    /// after a reconnect); `None` looks at the whole history.
    pub async fn recover(&self, only_prefix: Option<&str>) -> Result<Recovery, IngestError> {
        let mut report = Recovery::default();
        let intents = self.warehouse.abandoned_intents().await?;
        let mut finished = Vec::new();
        for (mut intent, lock) in intents {
            let id = intent.id.clone();
            let counts = intent.counts.take().and_then(CommitCounts::report);
            self.warehouse.apply(intent).await?;
            failpoint::hit("recover-intent");
            finished.push((id, lock, counts));
            report.intents_finished += 1;
        }
        let finished_here: HashSet<&str> = finished.iter().map(|(id, _, _)| id.as_str()).collect();
        let history = self.warehouse.history(SALES_HEADER.name).await?;
        // Every key added below belongs to a commit the ledger holds by now: the store records that first, so that it
        // never holds keys of a commit past its record (a lake restored to before it is then refused, not trusted).
        self.record_current_ledger().await?;
        // Read after the history: a commit another process has in progress there (its intent still held) has its rows
        // in `sales_header` before its ledger, and that process adds its keys once its ledger is in and recorded.
        // Added here, they would be in the store ahead of its record (a re-audit saw a restore not refused so).
        let in_progress: HashSet<String> = self
            .warehouse
            .pending_intent_ids()?
            .into_iter()
            .filter(|id| !finished_here.contains(id.as_str()))
            .collect();
        // Older snapshots were expired: only a store holding the marker of where the history now starts has their
        // keys. Any other (lost, restored from an older copy, new to this lake) is reloaded from every row.
        if only_prefix.is_none()
            && let Some(start) = history.starts_at()
            && !self.dedup.applied(&[history_marker(start)]).await?.first().copied().unwrap_or(false)
        {
            tracing::warn!(
                "the dedup store does not hold the keys of the expired part of sales_header's history: \
                 reloading it from every sales_header row"
            );
            let (added, held_back) = self.reload_keys(&finished_here).await?;
            report.keys_readded += added;
            let mut ids: Vec<String> =
                history.snapshots.iter().filter_map(|s| s.commit.clone()).filter(|c| !held_back.contains(c)).collect();
            report.commits_readded += ids.len() as u64;
            ids.push(history_marker(start));
            self.dedup.mark_applied(&ids, Holding::Everything).await?;
        }
        // The intents finished here are always re-added, whatever `only_prefix`: another process's commit that this
        // one completed has no keys in the store yet.
        let in_history: HashSet<String> = history.snapshots.iter().filter_map(|s| s.commit.clone()).collect();
        let commits: Vec<(String, i64)> = history
            .snapshots
            .into_iter()
            .filter_map(|s| s.commit.map(|c| (c, s.id)))
            .filter(|(id, _)| {
                only_prefix.is_none_or(|prefix| id.starts_with(prefix)) || finished_here.contains(id.as_str())
            })
            .filter(|(id, _)| !in_progress.contains(id))
            .collect();
        let ids: Vec<String> = commits.iter().map(|(id, _)| id.clone()).collect();
        let applied = self.dedup.applied(&ids).await?;
        for ((id, snapshot), done) in commits.into_iter().zip(applied) {
            if done {
                continue;
            }
            let mut keys = Vec::new();
            for path in self.warehouse.files_added_by(SALES_HEADER.name, snapshot).await? {
                let batches = self.warehouse.read_data_file(SALES_HEADER.name, &path, &KEY_COLUMNS).await?;
                keys.extend(keys_of(&batches)?);
            }
            self.dedup.add(&keys).await?;
            self.dedup.mark_applied(std::slice::from_ref(&id), Holding::Keys(&keys)).await?;
            // A process killed between its tables and the end of its claims left them (see `claims`): its keys are
            // in the store now, so they end here rather than run out (an audit counted 529-633 left per kill).
            if let Err(e) = self.dedup.release_claims(&keys).await {
                tracing::warn!(commit = %id, error = %e, "claims of a recovered commit not ended (its keys are in the store)");
            }
            report.commits_readded += 1;
            report.keys_readded += keys.len() as u64;
        }
        // Intents of commits without sales rows have no keys, and no snapshot of sales_header: they are complete once
        // their tables are. (Those with sales rows were marked above, once their keys were in.)
        let ids: Vec<String> =
            finished.iter().map(|(id, _, _)| id.clone()).filter(|id| !in_history.contains(id.as_str())).collect();
        self.dedup.mark_applied(&ids, Holding::Keys(&[])).await?;
        if only_prefix.is_none() {
            report.keyless_marked = self.mark_keyless_commits(&in_history).await?;
        }
        // Each removed while still locked: no other process takes it up meanwhile. Its files and transactions are
        // counted in the metrics then, since the process that wrote them stopped before it could: not before, or a
        // recovery that failed after its tables would leave the intent to be finished, and counted, again.
        for (id, _lock, counts) in &finished {
            self.warehouse.remove_intent(id)?;
            if let Some((counts, dead_letters)) = counts {
                poslake_actors::metric::committed(counts);
                count_dead_letters(dead_letters);
            }
        }
        if report.intents_finished + report.commits_readded + report.keyless_marked > 0 {
            tracing::info!(
                intents = report.intents_finished,
                commits = report.commits_readded,
                keys = report.keys_readded,
                keyless_commits = report.keyless_marked,
                "recovered: finished half-made commits and re-added keys the dedup store lacked"
            );
        }
        Ok(report)
    }

    /// Marks applied the complete commits that added no `sales_header` rows (a run of re-sent files only, or of dead
    /// letters): they have no keys, so they are complete once their tables are, but a store that lost its state
    /// lacks their marks, and expiry keeps every snapshot from the first unmarked one on, in the tables they wrote
    /// (`file_ledger` above all), for good. `in_header` holds the commits of `sales_header`'s history, handled by
    /// their keys. A commit an intent names is left to whoever finishes it: its `sales_header` snapshot may still
    /// come, and it must not be marked before its keys are in. Returns how many were marked.
    async fn mark_keyless_commits(&self, in_header: &HashSet<String>) -> Result<u64, IngestError> {
        let mut ids = Vec::new();
        for def in TABLES.iter().filter(|def| def.name != SALES_HEADER.name) {
            let history = self.warehouse.history(def.name).await?;
            ids.extend(history.snapshots.into_iter().filter_map(|s| s.commit).filter(|c| !in_header.contains(c)));
        }
        ids.sort();
        ids.dedup();
        // Histories first, intents second (as expiry reads them): an intent is written before any table is
        // committed and removed only once the commit is complete, so a commit seen above still in progress is listed.
        let pending: HashSet<String> = self.warehouse.pending_intent_ids()?.into_iter().collect();
        ids.retain(|id| !pending.contains(id));
        if ids.is_empty() {
            return Ok(0);
        }
        let applied = self.dedup.applied(&ids).await?;
        let unmarked: Vec<String> = ids.into_iter().zip(applied).filter(|(_, done)| !done).map(|(id, _)| id).collect();
        self.dedup.mark_applied(&unmarked, Holding::Keys(&[])).await?;
        Ok(unmarked.len() as u64)
    }

    /// Repopulates the store from every row of `sales_header` (a lost or new filter), and marks every commit
    /// applied. Returns the keys added.
    pub async fn rebuild(&self) -> Result<u64, IngestError> {
        // Into a store that is not this lake's (or is ahead of it), keys would mix with another lake's: refused, as
        // an ingest is (a re-audit saw a rebuild put a second lake's keys in the first's filter).
        self.refuse_a_store_of_another_lake().await?;
        // Finishes intents (with their keys) but re-adds no other commit: no commit id starts with NUL.
        self.recover(Some("\u{0}")).await?;
        // The history is read before the scan, so that every commit marked below has its rows in the scan (a commit
        // that lands meanwhile is left to its own process or the next recovery). A rebuild that stops before its
        // end marks nothing, and the next recovery re-adds what the store lacks.
        let history = self.warehouse.history(SALES_HEADER.name).await?;
        failpoint::hit("rebuild-scan");
        let (added, held_back) = self.reload_keys(&HashSet::new()).await?;
        let mut ids: Vec<String> = history.snapshots.iter().filter_map(|s| s.commit.clone()).collect();
        let in_header: HashSet<String> = ids.iter().cloned().collect();
        // A commit in progress is marked by whoever finishes it, once its keys are in.
        ids.retain(|id| !held_back.contains(id));
        ids.extend(history.starts_at().map(history_marker));
        self.dedup.mark_applied(&ids, Holding::Everything).await?;
        self.mark_keyless_commits(&in_header).await?;
        Ok(added)
    }

    /// Adds the key of every `sales_header` row to the store, as the table is when this starts, but for the rows of
    /// commits still in progress (their intents pending: another process's, live or dead; not `finished_here`, this
    /// recovery's). Returns the keys added and the commits held back. A commit in progress has its rows in
    /// `sales_header` before its ledger: its keys go in once its ledger is in and recorded, by its process or by the
    /// recovery that finishes it (a re-audit saw a reload take such a commit's keys, its process die, and a lake
    /// restored to before it go on, its sales taken for duplicates).
    async fn reload_keys(&self, finished_here: &HashSet<&str>) -> Result<(u64, HashSet<String>), IngestError> {
        use futures::{StreamExt, TryStreamExt};
        let table = self.warehouse.load(SALES_HEADER.name).await?;
        // Read after the table: a commit in it whose intent is gone by now is complete, its ledger in.
        let pending: HashSet<String> = self.warehouse.pending_intent_ids()?.into_iter().collect();
        let mut held_back = HashSet::new();
        let mut skipped = HashSet::new();
        for snapshot in table.metadata().snapshots() {
            let Some(id) = snapshot.summary().additional_properties.get(crate::lake::COMMIT_PROPERTY) else { continue };
            if pending.contains(id) && !finished_here.contains(id.as_str()) {
                skipped.extend(self.warehouse.files_added_by(SALES_HEADER.name, snapshot.snapshot_id()).await?);
                held_back.insert(id.clone());
            }
        }
        self.record_current_ledger().await?;
        let mut added = 0u64;
        if table.metadata().current_snapshot().is_none() {
            return Ok((added, held_back));
        }
        let map = |e| IngestError::from(crate::lake::LakeError::from(e));
        let scan = table.scan().select(KEY_COLUMNS).build().map_err(map)?;
        let mut batches: futures::stream::BoxStream<'_, Result<RecordBatch, IngestError>> = if skipped.is_empty() {
            Box::pin(scan.to_arrow().await.map_err(map)?.map_err(map))
        } else {
            // File by file, without those of the commits held back.
            let tasks: Vec<String> =
                scan.plan_files().await.map_err(map)?.map_ok(|t| t.data_file_path).try_collect().await.map_err(map)?;
            let table = &table;
            Box::pin(
                futures::stream::iter(tasks.into_iter().filter(|path| !skipped.contains(path)))
                    .then(
                        move |path: String| async move { Warehouse::read_table_file(table, &path, &KEY_COLUMNS).await },
                    )
                    .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                    .map_err(IngestError::from)
                    .try_flatten(),
            )
        };
        // Added in chunks of about REBUILD_CHUNK keys rather than per scan batch (about a thousand rows): the
        // embedded store writes a large add as one sorted table, a small one through its memtable.
        let mut keys = Vec::new();
        while let Some(batch) = batches.try_next().await? {
            keys.extend(keys_of(std::slice::from_ref(&batch))?);
            if keys.len() >= REBUILD_CHUNK {
                self.dedup.add(&keys).await?;
                added += keys.len() as u64;
                keys.clear();
            }
        }
        if !keys.is_empty() {
            self.dedup.add(&keys).await?;
            added += keys.len() as u64;
        }
        Ok((added, held_back))
    }
}

/// The dedup keys of `sales_header` rows (the key columns, in any order).
pub fn keys_of(batches: &[RecordBatch]) -> Result<Vec<DedupKey>, IngestError> {
    let bad = |what: &str| IngestError::Abandoned(format!("sales_header key columns unreadable: {what}"));
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(|| bad("epoch"))?;
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| b.column_by_name(name).ok_or_else(|| bad(name));
        let site = col("site")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| bad("site"))?;
        let date = col("business_date")?.as_any().downcast_ref::<Date32Array>().ok_or_else(|| bad("business_date"))?;
        let register = col("register")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| bad("register"))?;
        let sequence = col("sequence")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| bad("sequence"))?;
        let variant = col("key_variant")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| bad("key_variant"))?;
        for i in 0..b.num_rows() {
            let key = TransactionKey {
                site: site.value(i).to_owned(),
                business_date: epoch + chrono::TimeDelta::days(i64::from(date.value(i))),
                register: (!register.is_null(i)).then(|| register.value(i).to_owned()),
                sequence: sequence.value(i).to_owned(),
                variant: KeyVariant::parse(variant.value(i)).ok_or_else(|| bad(variant.value(i)))?,
            };
            out.push(DedupKey::of(&key));
        }
    }
    Ok(out)
}
