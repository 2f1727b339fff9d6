//! Commits that span several tables, made atomic by rolling forward.
//!
//! Iceberg commits one table at a time, so a batch that lands in six tables could be half committed by a crash.
//! Before the first table commit, the batch's data files (already closed, immutable Parquet) are listed in an
//! *intent* file under `<lake>/commits/`, written to a temporary name, fsynced and renamed. Each table is then
//! committed with the commit id in its snapshot summary (`poslake.commit`). A process that starts and finds an
//! intent finishes it: every table whose snapshot history lacks the id gets the listed files, none gets them twice.
//! The intent is removed once every table holds the commit and the dedup store has its keys.
//!
//! Workers that share a lake share its intents, so an intent is locked (`flock`, through `File::lock`) by the
//! process committing it, from before it appears under its name until it is removed. Recovery takes only intents
//! it can lock: those of a process that died (the kernel releases its locks, SIGKILL included), never one a live
//! worker is still committing, which two processes appending the same files at once would land twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use iceberg::spec::{DataFile, deserialize_data_file_from_json, serialize_data_file_to_json};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use serde::{Deserialize, Serialize};

use super::LakeError;
use super::tables::TABLES;
use super::warehouse::{Commit, Warehouse};

/// The snapshot-summary property naming the commit a snapshot belongs to.
pub const COMMIT_PROPERTY: &str = "poslake.commit";

/// An intent's lock, held by the process committing (or recovering) it; released when dropped or when the process
/// dies.
#[derive(Debug)]
pub struct IntentLock(#[allow(dead_code)] std::fs::File);

impl IntentLock {
    /// The intent's lock if no other process holds it; `None` if one does.
    fn try_take(path: &Path) -> std::io::Result<Option<IntentLock>> {
        let f = std::fs::File::open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(IntentLock(f))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// One table's share of a commit: data files written and closed, not yet committed.
pub struct PreparedTable {
    pub table: &'static str,
    pub files: Vec<DataFile>,
    pub rows: u64,
}

/// A commit about to be made: its id, the snapshot properties, and the data files per table.
pub struct PreparedCommit {
    pub id: String,
    pub properties: HashMap<String, String>,
    pub tables: Vec<PreparedTable>,
    /// What the commit lands, as its maker counts it (files, transactions, ...), kept in the intent so that a
    /// recovery that finishes the commit can count it too. Opaque here.
    pub counts: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct IntentFile {
    id: String,
    properties: HashMap<String, String>,
    tables: Vec<IntentTable>,
    /// With leased route slots: the slots the committing worker held (see [`Warehouse::write_fenced_intent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slots: Option<Vec<u32>>,
    /// [`PreparedCommit::counts`]; absent from intents written before session 34.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counts: Option<serde_json::Value>,
}

/// What an intent that has yet to pass its fence is called: recovery drops it rather than finishing it.
const FENCED: &str = ".json.fence";

/// A commit in progress in another live process (see [`Warehouse::live_intents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIntent {
    pub path: PathBuf,
    /// The route slots its worker held; `None` if unknown (still being written) and empty for a worker that
    /// leases none (it takes any file): both count as every slot.
    pub slots: Option<Vec<u32>>,
}

impl LiveIntent {
    /// Whether the commit may hold files of any of `slots`.
    pub fn touches(&self, slots: &[u32]) -> bool {
        self.slots.as_ref().is_none_or(|mine| mine.is_empty() || mine.iter().any(|s| slots.contains(s)))
    }
}

/// An intent's file name without the suffix of its stage (being written, fenced, made): the commit's.
fn commit_of(path: &Path) -> String {
    let name = path.to_string_lossy();
    let name = name.strip_suffix(".tmp").unwrap_or(&name);
    name.strip_suffix(FENCED).or_else(|| name.strip_suffix(".json")).unwrap_or(name).to_owned()
}

/// Only the slots of an intent file: its data files are skipped, not built.
#[derive(Deserialize)]
struct IntentSlots {
    #[serde(default)]
    slots: Option<Vec<u32>>,
}

#[derive(Serialize, Deserialize)]
struct IntentTable {
    table: String,
    rows: u64,
    /// Iceberg's own JSON form of each data file.
    files: Vec<String>,
}

impl Warehouse {
    fn intents_dir(&self) -> PathBuf {
        self.root().join("commits")
    }

    fn intent_path(&self, id: &str) -> PathBuf {
        self.intents_dir().join(format!("{}.json", id.replace(['/', '\\'], "_")))
    }

    /// Records the commit durably (fsync, rename, fsync of the directory) before any table is committed. The intent
    /// stays locked, so that no other process recovers it, until the returned lock is dropped (after
    /// [`Warehouse::remove_intent`], or when the process dies).
    pub async fn write_intent(&self, commit: &PreparedCommit) -> Result<IntentLock, LakeError> {
        self.write_intent_as(commit, None).await
    }

    /// [`Warehouse::write_intent`] for a commit that must pass a fence (a check that its worker still holds
    /// `slots`) before any table is committed: until [`Warehouse::pass_fence`] renames it, recovery drops the intent
    /// of a process that died rather than finish it, and [`Warehouse::live_intents`] shows its slots.
    pub async fn write_fenced_intent(&self, commit: &PreparedCommit, slots: &[u32]) -> Result<IntentLock, LakeError> {
        self.write_intent_as(commit, Some(slots.to_vec())).await
    }

    /// The fence passed: the intent becomes one that recovery finishes.
    pub fn pass_fence(&self, id: &str) -> Result<(), LakeError> {
        let path = self.intent_path(id);
        let fenced = path.with_extension(&FENCED[1..]);
        std::fs::rename(&fenced, &path).map_err(|source| LakeError::Io { path: path.clone(), source })?;
        let dir = self.intents_dir();
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|source| LakeError::Io { path: dir, source })
    }

    async fn write_intent_as(&self, commit: &PreparedCommit, slots: Option<Vec<u32>>) -> Result<IntentLock, LakeError> {
        let fenced = slots.is_some();
        let mut tables = Vec::new();
        for t in &commit.tables {
            let table = self.load(t.table).await?;
            let meta = table.metadata();
            let partition_type = meta.default_partition_spec().partition_type(meta.current_schema())?;
            let files = t
                .files
                .iter()
                .map(|f| serialize_data_file_to_json(f.clone(), &partition_type, meta.format_version()))
                .collect::<Result<Vec<_>, _>>()?;
            tables.push(IntentTable { table: t.table.to_owned(), rows: t.rows, files });
        }
        let intent = IntentFile {
            id: commit.id.clone(),
            properties: commit.properties.clone(),
            tables,
            slots,
            counts: commit.counts.clone(),
        };
        let dir = self.intents_dir();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LakeError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = match fenced {
            true => self.intent_path(&commit.id).with_extension(&FENCED[1..]),
            false => self.intent_path(&commit.id),
        };
        let tmp = self.intent_path(&commit.id).with_extension("json.tmp");
        let bytes = serde_json::to_vec(&intent).map_err(|e| io(&tmp)(std::io::Error::other(e)))?;
        // Locked before it is written: the lock goes with the file through the rename. Recovery removes any
        // unlocked `.json.tmp` (a writer that died), so one removed between our create and our lock is made again.
        let mut f = loop {
            let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.lock().map_err(io(&tmp))?;
            if std::os::unix::fs::MetadataExt::nlink(&f.metadata().map_err(io(&tmp))?) > 0 {
                break f;
            }
        };
        {
            use std::io::Write;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
        Ok(IntentLock(f))
    }

    /// Commits each table of the commit whose snapshot history does not already hold it, in [`TABLES`] order.
    pub async fn apply(&self, commit: PreparedCommit) -> Result<Vec<Commit>, LakeError> {
        self.apply_with(commit, || {}).await
    }

    /// [`Warehouse::apply`], calling `after_each` after each table's commit (kill points use it).
    pub async fn apply_with(
        &self,
        commit: PreparedCommit,
        mut after_each: impl FnMut(),
    ) -> Result<Vec<Commit>, LakeError> {
        let mut out = Vec::new();
        for t in commit.tables {
            let table = self.load(t.table).await?;
            if holds_commit(&table, &commit.id) {
                continue;
            }
            let n_files = t.files.len();
            let tx = Transaction::new(&table);
            // No duplicate-file check: iceberg-rust's loads every manifest of the table on each commit, work that
            // grows with history (every commit ever made), and it cannot fire here: data file names are fresh
            // UUIDs, and `holds_commit` above is what keeps a commit from being applied twice.
            let action = tx
                .fast_append()
                .with_check_duplicate(false)
                .add_data_files(t.files)
                .set_snapshot_properties(commit.properties.clone());
            let table = action.apply(tx)?.commit(self.catalog_ref()).await?;
            self.confirm_commit(t.table, &table).await?;
            let current = table.metadata().current_snapshot();
            let (snapshot_id, sequence) = current.map_or((-1, 0), |s| (s.snapshot_id(), s.sequence_number()));
            let (snapshots, since_merge) = snapshot_counts(table.metadata());
            out.push(Commit {
                table: t.table,
                table_uuid: table.metadata().uuid().to_string(),
                snapshot_id,
                sequence,
                data_files: n_files,
                rows: t.rows,
                snapshots,
                since_merge,
            });
            after_each();
        }
        Ok(out)
    }

    /// The commit is complete everywhere (or, fenced, given up before any table): forget its intent.
    pub fn remove_intent(&self, id: &str) -> Result<(), LakeError> {
        let path = self.intent_path(id);
        for path in [path.with_extension(&FENCED[1..]), path] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LakeError::Io { path, source }),
            }
        }
        Ok(())
    }

    /// The entries of the intents folder (none if it does not exist yet).
    fn intent_entries(&self) -> Result<Vec<std::fs::DirEntry>, LakeError> {
        let dir = self.intents_dir();
        match std::fs::read_dir(&dir) {
            Ok(entries) => Ok(entries.flatten().collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(LakeError::Io { path: dir, source }),
        }
    }

    /// Every pending intent, those of live processes included (their data files must not be taken for orphans).
    pub async fn pending_intents(&self) -> Result<Vec<PreparedCommit>, LakeError> {
        Ok(self.intents(false).await?.into_iter().map(|(commit, _)| commit).collect())
    }

    /// Intents left by a process that stopped mid-commit, oldest first, each locked for its recovery; intents
    /// another live process holds are left to it. A temporary file that never got renamed is an intent that was
    /// never made: nothing of it was committed, so it is deleted, once unlocked and a minute old (a writer creates
    /// it an instant before it locks it).
    pub async fn abandoned_intents(&self) -> Result<Vec<(PreparedCommit, IntentLock)>, LakeError> {
        Ok(self.intents(true).await?.into_iter().filter_map(|(c, lock)| Some((c, lock?))).collect())
    }

    /// Whether an intent is left that no live process holds: one whose commit, or whose recovery, a process began and
    /// died in (while this one waited for it, say). Nothing is claimed.
    pub fn has_abandoned_intents(&self) -> Result<bool, LakeError> {
        for entry in self.intent_entries()? {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(".json") {
                continue;
            }
            match IntentLock::try_take(&path) {
                Ok(Some(_unlocked)) => return Ok(true),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LakeError::Io { path, source }),
            }
        }
        Ok(false)
    }

    /// Intents (being written, fenced, or made) that another live process holds locked now: commits in progress.
    pub fn live_intents(&self) -> Result<Vec<LiveIntent>, LakeError> {
        let live = self.live_intent_paths()?;
        Ok(live
            .into_iter()
            .map(|path| {
                // Being written, it cannot be read whole yet: its slots are unknown.
                let slots = match path.to_string_lossy().ends_with(".tmp") {
                    true => None,
                    false => std::fs::read(&path)
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<IntentSlots>(&bytes).ok())
                        .and_then(|intent| intent.slots),
                };
                LiveIntent { path, slots }
            })
            .collect())
    }

    /// The paths of the intents another live process holds locked now.
    fn live_intent_paths(&self) -> Result<Vec<PathBuf>, LakeError> {
        let mut live = Vec::new();
        for entry in self.intent_entries()? {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !(name.ends_with(".json") || name.ends_with(".json.tmp") || name.ends_with(FENCED)) {
                continue;
            }
            match IntentLock::try_take(&path) {
                Ok(None) => {}
                // Unlocked (abandoned: recovery's).
                Ok(Some(_)) => continue,
                // Gone since the listing: complete, or renamed on to its next stage (being written to fenced or
                // made, fenced to made), where it is still in progress.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let base = commit_of(&path);
                    let next = [format!("{base}{FENCED}"), format!("{base}.json")]
                        .map(PathBuf::from)
                        .into_iter()
                        .filter(|p| *p != path)
                        .find(|p| matches!(IntentLock::try_take(p), Ok(None)));
                    live.extend(next);
                    continue;
                }
                Err(source) => return Err(LakeError::Io { path, source }),
            }
            live.push(path);
        }
        Ok(live)
    }

    /// Waits until each commit in progress now that may hold files of `slots` has ended (its intent gone, or
    /// unlocked by a process that died), for at most `limit`; returns those still in progress then (none: all ended).
    pub async fn wait_for_live_intents(
        &self,
        limit: std::time::Duration,
        slots: &[u32],
    ) -> Result<Vec<LiveIntent>, LakeError> {
        let started = std::time::Instant::now();
        let mut waiting: Vec<LiveIntent> = self.live_intents()?.into_iter().filter(|i| i.touches(slots)).collect();
        while !waiting.is_empty() && started.elapsed() < limit {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            // An intent moves from being written to fenced to made under the same commit's name; its slots were read
            // once, above.
            let live: Vec<String> = self.live_intent_paths()?.iter().map(|p| commit_of(p)).collect();
            waiting.retain(|intent| live.contains(&commit_of(&intent.path)));
        }
        Ok(waiting)
    }

    async fn intents(&self, claim: bool) -> Result<Vec<(PreparedCommit, Option<IntentLock>)>, LakeError> {
        let entries = self.intent_entries()?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            if name.ends_with(FENCED) {
                // Its fence never passed (the process died before or while checking its leases): no table holds
                // any of it, and its worker's slots may be another's now, with its files. Dropped, not finished.
                if claim && let Ok(Some(_lock)) = IntentLock::try_take(&path) {
                    tracing::info!(intent = %path.display(), "a commit that never passed its lease check: dropped");
                    let _ = std::fs::remove_file(&path);
                }
            } else if name.ends_with(".json.tmp") {
                // An intent whose writer died before it was whole: nothing refers to it. One being written is locked.
                if claim && let Ok(Some(_lock)) = IntentLock::try_take(&path) {
                    let _ = std::fs::remove_file(&path);
                }
            } else if name.ends_with(".json") {
                found.push((modified, path));
            }
        }
        found.sort();
        let mut out = Vec::new();
        for (_, path) in found {
            let lock = match claim {
                true => match IntentLock::try_take(&path) {
                    Ok(Some(lock)) => Some(lock),
                    Ok(None) => {
                        tracing::info!(intent = %path.display(), "a commit in progress in another process: left to it");
                        continue;
                    }
                    // Removed since the listing: its commit is complete.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(LakeError::Io { path, source }),
                },
                false => None,
            };
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(LakeError::Io { path, source }),
            };
            out.push((self.prepared_of(&path, &bytes).await?, lock));
        }
        Ok(out)
    }

    /// The commit an intent file's bytes describe.
    async fn prepared_of(&self, path: &Path, bytes: &[u8]) -> Result<PreparedCommit, LakeError> {
        let intent: IntentFile = serde_json::from_slice(bytes).map_err(|e| LakeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let mut tables = Vec::new();
        for t in intent.tables {
            let Some(def) = TABLES.iter().find(|d| d.name == t.table) else {
                return Err(LakeError::Schema {
                    table: "commits",
                    reason: format!("{} names an unknown table {}", path.display(), t.table),
                });
            };
            let table = self.load(def.name).await?;
            let meta = table.metadata();
            let spec = meta.default_partition_spec();
            let partition_type = spec.partition_type(meta.current_schema())?;
            let files = t
                .files
                .iter()
                .map(|j| deserialize_data_file_from_json(j, spec.spec_id(), &partition_type, meta.current_schema()))
                .collect::<Result<Vec<_>, _>>()?;
            tables.push(PreparedTable { table: def.name, files, rows: t.rows });
        }
        Ok(PreparedCommit { id: intent.id, properties: intent.properties, tables, counts: intent.counts })
    }

    /// The commits other live processes have in progress now, fenced or made, as their intents list them; and how
    /// many more are still being written (their data files cannot be read yet). A commit that ends meanwhile is left
    /// out.
    pub async fn live_commits(&self) -> Result<(Vec<PreparedCommit>, usize), LakeError> {
        let (mut commits, mut unread) = (Vec::new(), 0);
        for path in self.live_intent_paths()? {
            if path.to_string_lossy().ends_with(".tmp") {
                unread += 1;
                continue;
            }
            // A fenced intent may be renamed to its made name between the listing and the read.
            let base = commit_of(&path);
            let mut read = None;
            for candidate in [path.clone(), PathBuf::from(format!("{base}.json"))] {
                match std::fs::read(&candidate) {
                    Ok(bytes) => {
                        read = Some((candidate, bytes));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(LakeError::Io { path: candidate, source }),
                }
            }
            if let Some((path, bytes)) = read {
                commits.push(self.prepared_of(&path, &bytes).await?);
            }
        }
        Ok((commits, unread))
    }

    /// The commit ids of the intents pending now (reads only their ids, not their data files).
    pub fn pending_intent_ids(&self) -> Result<Vec<String>, LakeError> {
        #[derive(Deserialize)]
        struct IdOnly {
            id: String,
        }
        let entries = self.intent_entries()?;
        let mut ids = Vec::new();
        for entry in entries {
            let path = entry.path();
            if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".json")) {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Removed since the listing: its commit is complete.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(LakeError::Io { path, source }),
            };
            let intent: IdOnly = serde_json::from_slice(&bytes).map_err(|e| LakeError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            ids.push(intent.id);
        }
        Ok(ids)
    }

    /// Paths of the data files a snapshot added to the table.
    pub async fn files_added_by(&self, table: &str, snapshot_id: i64) -> Result<Vec<String>, LakeError> {
        let table = self.load(table).await?;
        match table.metadata().snapshot_by_id(snapshot_id).cloned() {
            Some(snapshot) => added_files(&table, &snapshot).await,
            None => Ok(Vec::new()),
        }
    }

    /// Paths of the data files every snapshot after `snapshot_id` (in sequence order) added to a table already
    /// loaded; `None` when that snapshot is no longer in the table's history (expired).
    pub async fn files_added_after(
        table: &iceberg::table::Table,
        snapshot_id: i64,
    ) -> Result<Option<Vec<String>>, LakeError> {
        let Some(after) = table.metadata().snapshot_by_id(snapshot_id).map(|s| s.sequence_number()) else {
            return Ok(None);
        };
        let mut later: Vec<_> = table.metadata().snapshots().filter(|s| s.sequence_number() > after).cloned().collect();
        later.sort_by_key(|s| s.sequence_number());
        let mut out = Vec::new();
        for snapshot in &later {
            out.extend(added_files(table, snapshot).await?);
        }
        Ok(Some(out))
    }
}

/// Paths of the data files `snapshot` added to `table`.
async fn added_files(
    table: &iceberg::table::Table,
    snapshot: &iceberg::spec::SnapshotRef,
) -> Result<Vec<String>, LakeError> {
    let snapshot_id = snapshot.snapshot_id();
    let list = table.manifest_list_reader(snapshot).load().await?;
    let mut out = Vec::new();
    for manifest in list.entries() {
        if manifest.added_snapshot_id != snapshot_id {
            continue;
        }
        for entry in manifest.load_manifest(table.file_io()).await?.entries() {
            if entry.status() == iceberg::spec::ManifestStatus::Added && entry.snapshot_id() == Some(snapshot_id) {
                out.push(entry.file_path().to_owned());
            }
        }
    }
    Ok(out)
}

impl Warehouse {
    /// Reads the named columns of one data file of the table.
    pub async fn read_data_file(
        &self,
        table: &str,
        path: &str,
        columns: &[&str],
    ) -> Result<Vec<arrow_array::RecordBatch>, LakeError> {
        Self::read_table_file(&self.load(table).await?, path, columns).await
    }

    /// [`Self::read_data_file`] for a table already loaded (no catalog round trip per file).
    pub async fn read_table_file(
        table: &iceberg::table::Table,
        path: &str,
        columns: &[&str],
    ) -> Result<Vec<arrow_array::RecordBatch>, LakeError> {
        use parquet::arrow::ProjectionMask;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let bytes = table.file_io().new_input(path)?.read().await?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        let reader = builder.with_projection(mask).build()?;
        Ok(reader.collect::<Result<Vec<_>, _>>()?)
    }
}

fn holds_commit(table: &iceberg::table::Table, id: &str) -> bool {
    table
        .metadata()
        .snapshots()
        .any(|s| s.summary().additional_properties.get(COMMIT_PROPERTY).is_some_and(|c| c == id))
}

/// A table's snapshots, and those after its latest manifest merge (all of them when no merge is left in its history).
fn snapshot_counts(meta: &iceberg::spec::TableMetadata) -> (usize, usize) {
    let merged = meta
        .snapshots()
        .filter(|s| s.summary().operation == iceberg::spec::Operation::Replace)
        .map(|s| s.sequence_number())
        .max();
    let since = meta.snapshots().filter(|s| merged.is_none_or(|m| s.sequence_number() > m)).count();
    (meta.snapshots().count(), since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_without_route_slots_may_hold_any_file() {
        let intent = |slots: Option<Vec<u32>>| LiveIntent { path: PathBuf::from("c.json"), slots };
        assert!(intent(None).touches(&[3]), "unknown: still being written");
        assert!(intent(Some(vec![])).touches(&[3]), "a worker that leases no slots takes any file");
        assert!(intent(Some(vec![3, 4])).touches(&[4]));
        assert!(!intent(Some(vec![3, 4])).touches(&[5]));
    }
}
