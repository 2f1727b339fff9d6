//! Snapshot expiry inside the exactly-once protocol, against a real warehouse and the embedded store: only complete
//! commits go (not one whose keys the store lacks, not one an intent names), what goes takes its manifest list with
//! it, no row is lost, and a store that lost its state is reloaded from every row once the history is truncated.
#![cfg(feature = "lake")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::dialect_fixtures;
use poslake::ParsedFile;
use poslake::config::DedupConfig;
use poslake::dedup::{Dedup, DedupStore};
use poslake::ingest::commit::Committer;
use poslake::ingest::maintain::history_marker;
use poslake::lake::{COMMIT_PROPERTY, LakeWriter, PreparedCommit, Warehouse};

/// One file's rows, written and closed, as commit `id`.
async fn prepared(wh: &Arc<Warehouse>, file: &ParsedFile, id: &str) -> PreparedCommit {
    let mut rows = wh.rows();
    rows.add_file(file).expect("rows");
    let mut writer = LakeWriter::new(wh.clone());
    writer.write(rows).await.expect("write");
    PreparedCommit {
        id: id.to_owned(),
        properties: HashMap::from([(COMMIT_PROPERTY.to_owned(), id.to_owned())]),
        tables: writer.prepare().await.expect("prepare"),
    }
}

async fn commits_in(wh: &Warehouse, table: &str) -> Vec<String> {
    wh.history(table).await.expect("history").snapshots.into_iter().filter_map(|s| s.commit).collect()
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("run/w/{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_takes_only_complete_commits_and_a_lost_store_is_reloaded_from_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = Arc::new(Warehouse::open(dir.path()).await.expect("open"));
    let dedup = Arc::new(Dedup::open(&DedupConfig::default(), wh.root()).await.expect("store"));
    let committer = Committer::new(wh.clone(), dedup.clone());
    let files = dialect_fixtures();
    let id = |i: usize| format!("run/w/{i}");

    // Commits 0-1 complete; 2 committed to every table but its keys never added (a crash before the keys); 3-5
    // complete.
    for i in 0..6 {
        let commit = prepared(&wh, &files[i % files.len()], &id(i)).await;
        if i == 2 {
            wh.apply(commit).await.expect("apply without keys");
        } else {
            committer.commit(commit, &[]).await.expect("commit");
        }
    }
    let rows = wh.row_count("sales_header").await.expect("rows");
    let first = wh.load("sales_header").await.expect("load");
    let first_list =
        first.metadata().snapshots().min_by_key(|s| s.sequence_number()).expect("one").manifest_list().to_owned();
    let local = |uri: &str| std::path::PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    assert!(local(&first_list).exists());

    // Keeping 2 would take 0-3, but 2 is not applied: the prefix stops there.
    let report = committer.expire(2, None).await.expect("expire");
    assert_eq!(commits_in(&wh, "sales_header").await, ids(2..6));
    let header = report.tables.iter().find(|(t, _)| *t == "sales_header").map(|(_, e)| e.snapshots);
    assert_eq!(header, Some(2), "{report:?}");
    let history = wh.history("sales_header").await.expect("history");
    assert!(history.truncated);
    let start = history.starts_at().expect("start");
    assert_eq!(dedup.applied(&[history_marker(start)]).await.expect("marker"), vec![true], "marker before expiry");
    assert!(!local(&first_list).exists(), "an expired snapshot's manifest list is deleted");
    assert_eq!(wh.row_count("sales_header").await.expect("rows"), rows, "expiry drops no data");

    // Recovery adds commit 2's keys.
    let recovery = committer.recover(None).await.expect("recover");
    assert_eq!(recovery.commits_readded, 1);
    // A commit an intent names stays however old: commit 6 is complete in the tables and the store, but its intent
    // is not yet removed (a kill at commit-applied).
    let six = prepared(&wh, &files[0], &id(6)).await;
    wh.write_intent(&six).await.expect("intent");
    wh.apply(six).await.expect("apply");
    dedup.mark_applied(&[id(6)]).await.expect("mark");
    for i in 7..9 {
        committer.commit(prepared(&wh, &files[i % files.len()], &id(i)).await, &[]).await.expect("commit");
    }
    committer.expire(1, None).await.expect("expire");
    assert_eq!(commits_in(&wh, "sales_header").await, ids(6..9));
    // Recovery removes the finished intent; then only the newest stays.
    committer.recover(None).await.expect("recover");
    committer.expire(1, None).await.expect("expire");
    assert_eq!(commits_in(&wh, "sales_header").await, ids(8..9));
    let rows = wh.row_count("sales_header").await.expect("rows");

    // A lost store (its directory gone) knows no marker: recovery reloads every row, not just the kept commit's.
    drop(committer);
    drop(dedup);
    std::fs::remove_dir_all(dir.path().join("dedup")).expect("lose the store");
    let dedup = Arc::new(Dedup::open(&DedupConfig::default(), wh.root()).await.expect("new store"));
    let committer = Committer::new(wh.clone(), dedup.clone());
    let recovery = committer.recover(None).await.expect("recover");
    assert_eq!(recovery.keys_readded, rows, "every row's key, the expired commits' included");
    // With the marker back, the next start re-adds nothing.
    let again = committer.recover(None).await.expect("recover again");
    assert_eq!(again.keys_readded, 0);
}
