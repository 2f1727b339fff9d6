//! Table maintenance inside the exactly-once protocol: merging small manifests (`lake::merge`, which changes no
//! data and names no commit), and which snapshots may be expired.
//!
//! Recovery reads the snapshot history (`commit`): an intent is rolled forward only into tables whose history lacks
//! its commit, and a commit the dedup store has not marked applied gets its keys re-added from the `sales_header`
//! files its snapshot added. So a snapshot may be expired only once its commit is complete everywhere:
//! - no intent names its commit (the commit is finished in every table);
//! - the store marks its commit applied (its keys are in the store);
//! - for `file_ledger`, it is older than the file index's mark (else the next start reads the whole ledger).
//!
//! Only a prefix of each history goes, so what is kept is complete from its start. Before any `sales_header`
//! snapshot goes, the store records a *history marker* naming the oldest snapshot that stays: a store holding it
//! holds the keys of every commit before that snapshot. A store that lost its state, was restored from an older
//! copy, or is new to this lake lacks the marker, and recovery then reloads it from every `sales_header` row.

use std::collections::HashSet;

use super::IngestError;
use super::commit::Committer;
use crate::dedup::{DedupStore, Holding};
use crate::failpoint;
use crate::lake::expire::{Expired, History};
use crate::lake::merge::Merged;
use crate::lake::orphans::Orphans;
use crate::lake::tables::{SALES_HEADER, TABLES};

/// The store's record that it holds the keys of every `sales_header` commit before snapshot `start`.
pub fn history_marker(start: i64) -> String {
    format!("poslake/history-from/{start}")
}

/// What one maintenance did, per table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Maintenance {
    pub merged: Vec<(&'static str, Merged)>,
    pub expired: Vec<(&'static str, Expired)>,
}

impl Maintenance {
    /// Snapshots expired, over every table.
    pub fn snapshots(&self) -> u64 {
        self.expired.iter().map(|(_, e)| e.snapshots).sum()
    }
}

impl Committer {
    /// Merges each table's small manifests once there are `merge_at` of them (0: never), then expires the snapshots
    /// older than the newest `keep` whose commits are complete (0: none; see the module docs). `ledger_mark` is the
    /// ledger snapshot the file index holds every file of.
    pub async fn maintain(
        &self,
        keep: usize,
        merge_at: usize,
        ledger_mark: Option<i64>,
    ) -> Result<Maintenance, IngestError> {
        let mut report = Maintenance::default();
        for def in TABLES.iter().filter(|_| merge_at > 0) {
            if let Some(merged) = self.warehouse().merge_manifests(def.name, merge_at).await? {
                report.merged.push((def.name, merged));
            }
        }
        if keep > 0 {
            self.expire(keep, ledger_mark, &mut report).await?;
        }
        Ok(report)
    }

    async fn expire(&self, keep: usize, ledger_mark: Option<i64>, report: &mut Maintenance) -> Result<(), IngestError> {
        // Histories first, intents second: a commit still in progress when its snapshot was read had written its
        // intent before committing any table, and removes it only once complete, so the listing below sees it.
        let mut histories: Vec<(&'static str, History)> = Vec::new();
        for def in TABLES {
            histories.push((def.name, self.warehouse().history(def.name).await?));
        }
        let in_progress: HashSet<String> = self.warehouse().pending_intent_ids()?.into_iter().collect();

        let candidates = |name: &str, h: &History| -> Vec<usize> {
            let n = h.snapshots.len();
            let floor = (name == "file_ledger")
                .then(|| ledger_mark.and_then(|id| h.snapshots.iter().find(|s| s.id == id)).map(|s| s.sequence))
                .flatten();
            (0..n.saturating_sub(keep))
                .take_while(|&i| floor.is_none_or(|f| h.snapshots[i].sequence < f))
                .take_while(|&i| h.snapshots[i].commit.as_ref().is_none_or(|c| !in_progress.contains(c)))
                .collect()
        };
        let mut asked: Vec<String> = Vec::new();
        for (name, h) in &histories {
            for i in candidates(name, h) {
                asked.extend(h.snapshots[i].commit.clone());
            }
        }
        asked.sort();
        asked.dedup();
        let applied: HashSet<String> = if asked.is_empty() {
            HashSet::new()
        } else {
            let marks = self.dedup().applied(&asked).await?;
            asked.into_iter().zip(marks).filter_map(|(id, done)| done.then_some(id)).collect()
        };

        for (name, h) in &histories {
            let ids: Vec<i64> = candidates(name, h)
                .into_iter()
                .take_while(|&i| h.snapshots[i].commit.as_ref().is_none_or(|c| applied.contains(c)))
                .map(|i| h.snapshots[i].id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            if *name == SALES_HEADER.name {
                let start = h.snapshots[ids.len()].id;
                self.dedup().mark_applied(&[history_marker(start)], Holding::Everything).await?;
                failpoint::hit("expire-marker");
            }
            let expired = self.warehouse().expire_snapshots(name, &ids).await?;
            failpoint::hit("expire-table");
            report.expired.push((name, expired));
        }
        if report.snapshots() > 0 {
            tracing::info!(
                snapshots = report.snapshots(),
                manifests_merged = report.merged.iter().map(|(_, m)| m.manifests).sum::<u64>(),
                keep,
                "expired old snapshots whose commits are complete"
            );
        }
        Ok(())
    }

    /// Deletes, in every table, the files no snapshot references that were last modified before `older_than`,
    /// except the data files of pending intents (see `lake::orphans`).
    pub async fn remove_orphans(
        &self,
        older_than: std::time::SystemTime,
    ) -> Result<Vec<(&'static str, Orphans)>, IngestError> {
        let mut protected = HashSet::new();
        for intent in self.warehouse().pending_intents().await? {
            for t in &intent.tables {
                protected.extend(t.files.iter().map(|f| f.file_path().to_owned()));
            }
        }
        let mut out = Vec::new();
        for def in TABLES {
            out.push((def.name, self.warehouse().remove_orphans(def.name, older_than, &protected).await?));
        }
        Ok(out)
    }
}
