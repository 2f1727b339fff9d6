//! Expiring old snapshots, so that a table's metadata stays bounded however many commits it has taken.
//!
//! Every commit appends a snapshot, and Iceberg rewrites the table's metadata file (which lists every snapshot) on
//! each commit: without expiry, each commit costs more than the one before. Which snapshots may go is decided by the
//! exactly-once protocol (`ingest::maintain`); this module reads a table's history and removes the snapshots it is
//! given, then deletes the files only they referenced.

use std::collections::HashSet;
use std::path::PathBuf;

use iceberg::spec::Operation;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use super::LakeError;
use super::commit_log::COMMIT_PROPERTY;
use super::warehouse::Warehouse;

/// One snapshot of a table's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub id: i64,
    pub sequence: i64,
    /// The poslake commit it belongs to (`poslake.commit` in its summary).
    pub commit: Option<String>,
}

/// A table's snapshot history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub snapshots: Vec<SnapshotEntry>,
    /// Whether older snapshots were expired: the oldest one kept names a parent the table no longer has.
    pub truncated: bool,
}

impl History {
    /// The oldest snapshot kept, when older ones were expired.
    pub fn starts_at(&self) -> Option<i64> {
        if self.truncated { self.snapshots.first().map(|s| s.id) } else { None }
    }
}

/// What one table's expiry removed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Expired {
    pub snapshots: u64,
    /// Manifest lists of the expired snapshots, manifests no kept snapshot lists, and metadata files older than
    /// the table's metadata log.
    pub files_deleted: u64,
}

impl Warehouse {
    /// The table's snapshots, oldest first, with the commit each belongs to.
    pub async fn history(&self, table: &str) -> Result<History, LakeError> {
        let table = self.load(table).await?;
        let meta = table.metadata();
        let mut snapshots: Vec<SnapshotEntry> = meta
            .snapshots()
            .map(|s| SnapshotEntry {
                id: s.snapshot_id(),
                sequence: s.sequence_number(),
                commit: s.summary().additional_properties.get(COMMIT_PROPERTY).cloned(),
            })
            .collect();
        snapshots.sort_by_key(|s| s.sequence);
        let truncated = snapshots
            .first()
            .and_then(|s| meta.snapshot_by_id(s.id))
            .and_then(|s| s.parent_snapshot_id())
            .is_some_and(|parent| meta.snapshot_by_id(parent).is_none());
        Ok(History { snapshots, truncated })
    }

    /// Removes these snapshots from the table (the current one and ids it no longer has are passed over), then
    /// deletes their manifest lists, the manifests that no kept snapshot lists (merged away, see `merge`), and the
    /// metadata files older than every file in the table's metadata log. Data files stay: appends and merges never
    /// remove data, so every data file of an expired snapshot is in the current one.
    pub async fn expire_snapshots(&self, table: &str, ids: &[i64]) -> Result<Expired, LakeError> {
        let loaded = self.load(table).await?;
        let meta = loaded.metadata();
        let current = meta.current_snapshot_id();
        let ids: Vec<i64> =
            ids.iter().copied().filter(|id| Some(*id) != current && meta.snapshot_by_id(*id).is_some()).collect();
        if ids.is_empty() {
            return Ok(Expired::default());
        }
        let lists: Vec<String> =
            ids.iter().filter_map(|id| meta.snapshot_by_id(*id)).map(|s| s.manifest_list().to_owned()).collect();
        // Manifests the expired snapshots list: those no kept snapshot lists (merged away) go with them. Appends only
        // add manifests, so only a snapshot older than a merge can list one that the current snapshot does not:
        // the lists of the others are not read.
        let before_merge = |meta: &iceberg::spec::TableMetadata, snapshot: &iceberg::spec::Snapshot| {
            meta.snapshots().any(|s| {
                s.summary().operation == Operation::Replace && s.sequence_number() > snapshot.sequence_number()
            })
        };
        let mut manifests = HashSet::new();
        for id in &ids {
            if let Some(snapshot) = meta.snapshot_by_id(*id)
                && before_merge(meta, snapshot)
            {
                manifests.extend(manifest_paths(&loaded, snapshot).await?);
            }
        }
        let tx = Transaction::new(&loaded);
        // Only the named snapshots: without a pinned cutoff iceberg-rust also expires by age (5 days by default),
        // which would take snapshots the protocol still needs.
        let action = tx.expire_snapshots().expire_snapshot_ids(ids.iter().copied()).expire_older_than_ms(i64::MIN);
        let after = action.apply(tx)?.commit(self.catalog_ref()).await?;
        // Files are deleted below only once the catalog is known to no longer name their snapshots.
        self.confirm_commit(table, &after).await?;
        let gone = ids.iter().filter(|id| after.metadata().snapshot_by_id(**id).is_none()).count();
        let mut report = Expired { snapshots: gone as u64, files_deleted: 0 };
        let io = after.file_io();
        for list in lists {
            // A list whose snapshot is still there (another process's expiry failed over ours) is kept.
            let still_used = after.metadata().snapshots().any(|s| s.manifest_list() == list);
            if !still_used && delete_if_present(io, &list).await? {
                report.files_deleted += 1;
            }
        }
        if let Some(current) = after.metadata().current_snapshot()
            && !manifests.is_empty()
        {
            for path in manifest_paths(&after, current).await? {
                manifests.remove(&path);
            }
            // What the current snapshot no longer lists, a kept snapshot older than a merge may still list.
            for snapshot in after.metadata().snapshots().filter(|s| before_merge(after.metadata(), s)) {
                if manifests.is_empty() {
                    break;
                }
                for path in manifest_paths(&after, snapshot).await? {
                    manifests.remove(&path);
                }
            }
            for path in manifests {
                if delete_if_present(io, &path).await? {
                    report.files_deleted += 1;
                }
            }
        }
        report.files_deleted += delete_old_metadata_files(&after)?;
        Ok(report)
    }
}

/// Deletes `path` unless it is gone already; whether this call deleted it. Two workers' expiries of one table may
/// both delete a file their snapshots no longer use: the second found it gone, and failed the maintenance with a
/// warning (seen by an audit).
async fn delete_if_present(io: &iceberg::io::FileIO, path: &str) -> Result<bool, LakeError> {
    match io.delete(path).await {
        Ok(()) => Ok(true),
        Err(_) if !io.exists(path).await? => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The manifests a snapshot's manifest list names (none if the list is gone).
async fn manifest_paths(
    table: &iceberg::table::Table,
    snapshot: &iceberg::spec::SnapshotRef,
) -> Result<Vec<String>, LakeError> {
    if !table.file_io().exists(snapshot.manifest_list()).await? {
        return Ok(Vec::new());
    }
    let list = table.manifest_list_reader(snapshot).load().await?;
    Ok(list.entries().iter().map(|m| m.manifest_path.clone()).collect())
}

/// Deletes the table's metadata files older than the oldest one its metadata log still names (iceberg-rust keeps
/// the log at `write.metadata.previous-versions-max` files, 100 by default, but never deletes what falls out of
/// it). Only older versions go: a commit in progress elsewhere writes a newer one. Local warehouses only.
fn delete_old_metadata_files(table: &iceberg::table::Table) -> Result<u64, LakeError> {
    let version = |name: &str| name.split_once('-').and_then(|(v, _)| v.parse::<i64>().ok());
    let file_name = |path: &str| path.rsplit('/').next().unwrap_or_default().to_owned();
    let meta = table.metadata();
    let oldest_logged = meta
        .metadata_log()
        .iter()
        .map(|m| file_name(&m.metadata_file))
        .chain(table.metadata_location().map(file_name))
        .filter_map(|n| version(&n))
        .min();
    let (Some(oldest), Some(dir)) = (oldest_logged, meta.location().strip_prefix("file://")) else {
        return Ok(0);
    };
    let dir = PathBuf::from(dir).join("metadata");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(LakeError::Io { path: dir, source }),
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".metadata.json") && version(&name).is_some_and(|v| v < oldest) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LakeError::Io { path: entry.path(), source }),
            }
        }
    }
    Ok(deleted)
}
