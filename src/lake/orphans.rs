//! Removing orphan files: files under a table's folder that no snapshot references.
//!
//! A run that fails or is killed before its commit leaves data files no snapshot names (they are never read: a
//! table is what its snapshots list), and a kill mid-merge leaves a manifest, a manifest list and a metadata file.
//! This deletes such files once they are older than a grace period. The period matters: a running ingest writes data
//! files long before they are named anywhere (its intent comes at commit time), so a young unreferenced file may be
//! in use. Files that a pending intent names are kept whatever their age.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::LakeError;
use super::warehouse::Warehouse;

/// What one table's sweep found and removed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Orphans {
    /// Files the table's snapshots and metadata reference.
    pub referenced: u64,
    /// Unreferenced files removed (older than the grace period).
    pub removed: u64,
    pub removed_bytes: u64,
    /// Unreferenced files kept because they are younger than the grace period or an intent names them.
    pub kept: u64,
}

impl Warehouse {
    /// Deletes the files under `table`'s folder that no snapshot, no metadata file in its log and no name in
    /// `protected` references, and that were last modified before `older_than`. Local warehouses only.
    pub async fn remove_orphans(
        &self,
        table: &str,
        older_than: SystemTime,
        protected: &HashSet<String>,
    ) -> Result<Orphans, LakeError> {
        let loaded = self.load(table).await?;
        let meta = loaded.metadata();
        let Some(root) = meta.location().strip_prefix("file://").map(PathBuf::from) else {
            return Ok(Orphans::default());
        };
        let io = loaded.file_io();
        let mut referenced: HashSet<PathBuf> = HashSet::new();
        let local = |uri: &str| PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        referenced.extend(loaded.metadata_location().map(local));
        referenced.extend(meta.metadata_log().iter().map(|m| local(&m.metadata_file)));
        let mut manifests_seen = HashSet::new();
        for snapshot in meta.snapshots() {
            referenced.insert(local(snapshot.manifest_list()));
            for manifest in loaded.manifest_list_reader(snapshot).load().await?.entries() {
                if !manifests_seen.insert(manifest.manifest_path.clone()) {
                    continue;
                }
                referenced.insert(local(&manifest.manifest_path));
                for entry in manifest.load_manifest(io).await?.entries() {
                    referenced.insert(local(entry.data_file().file_path()));
                }
            }
        }
        // A referenced path outside the table's folder means a layout this sweep does not understand: deleting by
        // it could take live data, so nothing is deleted.
        if let Some(outside) = referenced.iter().find(|p| !p.starts_with(&root)) {
            return Err(LakeError::UnsafeSweep { table: table.to_owned(), path: outside.clone(), root });
        }
        let protected: HashSet<PathBuf> = protected.iter().map(|p| local(p)).collect();
        let mut report = Orphans { referenced: referenced.len() as u64, ..Orphans::default() };
        for (path, modified, bytes) in files_under(&root)? {
            if referenced.contains(&path) {
                continue;
            }
            if protected.contains(&path) || modified >= older_than {
                report.kept += 1;
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    report.removed += 1;
                    report.removed_bytes += bytes;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LakeError::Io { path, source }),
            }
        }
        Ok(report)
    }
}

/// Every file under `root`, with its modification time and size.
fn files_under(root: &Path) -> Result<Vec<(PathBuf, SystemTime, u64)>, LakeError> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LakeError::Io { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| LakeError::Io { path: dir.clone(), source })?;
            let meta = entry.metadata().map_err(|source| LakeError::Io { path: entry.path(), source })?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if let Ok(modified) = meta.modified() {
                out.push((entry.path(), modified, meta.len()));
            }
        }
    }
    Ok(out)
}
