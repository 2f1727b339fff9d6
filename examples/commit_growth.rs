//! How the cost of one commit grows with the commits before it: the same small commit (one generated file's rows
//! in every table) made again and again into a fresh warehouse. Prints, every `EVERY` commits, the median time
//! of the last ones and the size of `sales_header`'s table metadata and newest manifest list, which Iceberg
//! rewrites whole on each commit. Commits go through the exactly-once protocol (intent, tables, keys in an embedded
//! store); with KEEP > 0 old snapshots are expired every KEEP/4 commits as an ingest does. The median is of the
//! commits alone; the mean includes that maintenance.
//!
//! Usage: commit_growth [COMMITS] [EVERY] [KEEP] [MANIFEST_KIB] (default 1000, 100, 0: no expiry, and the
//! default manifest target size). With KEEP > 0, manifests under MANIFEST_KIB are merged once there are 100.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use poslake::config::DedupConfig;
use poslake::dedup::Dedup;
use poslake::ingest::commit::Committer;
use poslake::lake::{COMMIT_PROPERTY, LakeWriter, PreparedCommit, Warehouse};
use poslake::{Dialect, ParseOptions, parse_file};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let commits: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let every: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100).max(1);
    let keep: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let target_kib: Option<i64> = args.next().and_then(|s| s.parse().ok());
    let dir = tempfile::tempdir()?;
    let mut wh = Warehouse::open(dir.path()).await?;
    if let Some(kib) = target_kib {
        wh.set_manifest_target_bytes(kib << 10);
    }
    let wh = Arc::new(wh);
    let dedup = Arc::new(Dedup::open(&DedupConfig::default(), wh.root()).await?);
    let committer = Committer::new(wh.clone(), dedup);
    let (xml, _) = poslake::generate::generate_file(Dialect::ArtsPoslog, 7, 5);
    let parsed = parse_file("growth.xml", xml.as_bytes(), &ParseOptions::default())?;
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>14} {:>18} {:>10} {:>20}",
        "commits",
        "median ms",
        "mean ms",
        "snapshots",
        "metadata KiB",
        "manifest list KiB",
        "manifests",
        "largest manifest KiB"
    );
    let mut times = Vec::with_capacity(every);
    let mut maintenance = 0.0;
    for i in 1..=commits {
        let mut rows = wh.rows();
        rows.add_file(&parsed)?;
        let mut writer = LakeWriter::new(wh.clone());
        writer.write(rows).await?;
        let id = format!("growth/{i}");
        let properties = HashMap::from([(COMMIT_PROPERTY.to_owned(), id.clone())]);
        let commit = PreparedCommit { id, properties, tables: writer.prepare().await?, counts: None };
        let started = Instant::now();
        committer.commit(commit, &[]).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if keep > 0 && i % (keep / 4).max(1) == 0 {
            let started = Instant::now();
            committer.maintain(keep, 100, None).await?;
            maintenance += started.elapsed().as_secs_f64() * 1000.0;
        }
        if i % every == 0 {
            let mean = (times.iter().sum::<f64>() + maintenance) / times.len() as f64;
            maintenance = 0.0;
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            times.clear();
            let table = wh.load("sales_header").await?;
            let metadata = table.metadata_location().map_or(0, file_size);
            let list = table.metadata().current_snapshot().map_or(0, |s| file_size(s.manifest_list()));
            let snapshots = table.metadata().snapshots().count();
            let (manifests, largest) = match table.metadata().current_snapshot() {
                Some(s) => {
                    let list = table.manifest_list_reader(s).load().await?;
                    let largest = list.entries().iter().map(|m| m.manifest_length).max().unwrap_or(0);
                    (list.entries().len(), largest as u64)
                }
                None => (0, 0),
            };
            println!(
                "{i:>8} {median:>10.1} {mean:>10.1} {snapshots:>10} {:>14.1} {:>18.1} {manifests:>10} {:>20.1}",
                kib(metadata),
                kib(list),
                kib(largest)
            );
        }
    }
    Ok(())
}

fn file_size(location: &str) -> u64 {
    let path = location.strip_prefix("file://").unwrap_or(location);
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}
