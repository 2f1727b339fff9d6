//! Exactly once under SIGKILL: a real `poslake ingest` process, with the Redis filter or the embedded store, is
//! killed again and again (at every named kill point of the pipeline and the commit protocol,
//! `poslake::failpoint::POINTS`, and at random moments) and restarted each time. The lake it ends with equals that
//! of an uninterrupted run: the same rows in every table, each key once, each file once in the ledger.
#![cfg(feature = "lake")]

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::RedisServer;
use common::{counts, header_keys, ledger_paths};
use poslake::generate::{FileKind, GenerateArgs, generate, read_manifest};
use poslake::lake::Warehouse;
use rand::{Rng, SeedableRng};

/// Small batches and commits, so that kills land between many of them; the Redis filter when `redis` is given,
/// else the embedded store (in the lake). `maintained` expires snapshots after every commit and merges manifests
/// once a table has 4; else neither happens.
fn config_file(dir: &Path, redis: Option<&Store>, prefix: &str, maintained: bool) -> std::path::PathBuf {
    let path = dir.join(format!("{prefix}.toml"));
    let (keep, merge) = if maintained { (2, 4) } else { (0, 0) };
    let mut text = format!(
        "batch_files = 2\nmax_files_in_flight = 4\ncommit_files = 4\nflush_interval_ms = 20\n\
         keep_snapshots = {keep}\nmin_manifests_to_merge = {merge}\n"
    );
    if let Some(store) = redis {
        text += &format!(
            "\n[dedup]\nbackend = \"redis-bitmap\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n\
             expected_keys_per_period = 200000\nmax_shard_mib = 1\nperiod = \"{}\"\n",
            store.url, store.period
        );
    }
    std::fs::write(&path, text).expect("write config");
    path
}

fn ingest(staging: &Path, lake: &Path, config: &Path, kill_at: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(["ingest", "--json", "--config"]).arg(config).arg("--staging").arg(staging).arg("--lake").arg(lake);
    cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
    match kill_at {
        Some(spec) => cmd.env("POSLAKE_KILL_AT", spec),
        None => cmd.env_remove("POSLAKE_KILL_AT"),
    };
    cmd
}

/// A Redis dedup store: its URL, and the business-date period of its filters.
struct Store {
    url: String,
    period: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_kill_point_and_at_random_moments_ends_like_an_uninterrupted_run() {
    let redis = RedisServer::start();
    sigkill_again_and_again(Some(&Store { url: redis.url(), period: "month" })).await;
}

/// The same against a Redis Cluster of three primaries, the corpus's days (a period a day) spread over them: kills
/// land between a commit's marks in its periods and its list in the shared slot too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_again_and_again_with_periods_spread_over_a_redis_cluster_ends_like_an_uninterrupted_run() {
    let nodes = common::redis::cluster(3, 0);
    sigkill_again_and_again(Some(&Store { url: nodes[0].url(), period: "day" })).await;
}

/// The same with the embedded store, whose keys and index of ingested files are restored at each start from what
/// the killed runs committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_again_and_again_with_the_embedded_store_ends_like_an_uninterrupted_run() {
    sigkill_again_and_again(None).await;
}

async fn sigkill_again_and_again(redis: Option<&Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = generate(&GenerateArgs {
        out: staging.clone(),
        seed: 41,
        sites: 10,
        days: 4,
        files_per_day: 6,
        min_transactions: 8,
        max_transactions: 16,
        duplicate_file_rate: 0.1,
        duplicate_transaction_rate: 0.05,
        malformed_rate: 0.03,
        rollback_rate: 0.05,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");

    // The uninterrupted run, into its own lake and its own filter, with no table maintenance.
    let reference = dir.path().join("reference");
    let out = ingest(&staging, &reference, &config_file(dir.path(), redis, "reference", false), None)
        .output()
        .expect("reference run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let lake = dir.path().join("lake");
    // The killed runs merge manifests and expire snapshots as they go, so kills also land mid-merge and mid-expiry,
    // and recovery reads truncated histories with merge snapshots in them.
    let config = config_file(dir.path(), redis, "crashed", true);
    // Every kill point; commit points at several commits; recover-intent right after a kill that leaves an intent.
    let mut specs: Vec<String> = [
        "commit-intent:1",
        "recover-intent:1",
        "commit-table:1",
        "commit-table:4",
        "recover-intent:1",
        "commit-recorded:1",
        "commit-keys:1",
        "commit-applied:1",
        "download:5",
        "archive:6",
        "parse:7",
        "dedup-check:3",
        "write:2",
        "commit-intent:2",
        "commit-table:2",
        "commit-table:6",
        "commit-recorded:2",
        "commit-keys:2",
        "commit-applied:2",
        "write:5",
        "merge:1",
        "merge:3",
        "expire-marker:1",
        "expire-table:2",
        "expire-marker:3",
        "expire-table:9",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for point in poslake::failpoint::POINTS {
        assert!(specs.iter().any(|s| s.starts_with(&format!("{point}:"))), "kill point {point} is exercised");
    }
    specs.extend((0..10).map(|_| "random".to_owned()));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut killed = Vec::new();
    for spec in &specs {
        let status = if spec == "random" {
            let mut child = ingest(&staging, &lake, &config, None).spawn().expect("spawn");
            std::thread::sleep(Duration::from_millis(rng.random_range(150..1200)));
            let _ = child.kill(); // SIGKILL
            child.wait().expect("wait")
        } else {
            let out = ingest(&staging, &lake, &config, Some(spec)).output().expect("run");
            if !out.status.success() && out.status.signal().is_none() {
                panic!("{spec}: poslake failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            out.status
        };
        if status.signal() == Some(9) {
            killed.push(spec.clone());
            if spec.starts_with("commit-intent") || spec.starts_with("commit-table") {
                // Killed mid-commit: the intent that the next start finishes is there.
                let intents = std::fs::read_dir(lake.join("commits")).expect("commits").count();
                assert!(intents > 0, "{spec}: an intent is pending");
            }
        }
    }
    eprintln!("{} kills landed: {killed:?}", killed.len());
    assert!(killed.len() >= 20, "at least 20 kills landed: {killed:?}");

    let done = ingest(&staging, &lake, &config, None).output().expect("final run");
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    assert_eq!(counts(&lake).await, counts(&reference).await, "every table as in the uninterrupted run");
    let wh = Warehouse::open(&lake).await.expect("open");
    let got = header_keys(&wh).await;
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no key twice");
    let want: BTreeSet<String> =
        manifest.iter().filter(|m| m.kind != FileKind::Malformed).flat_map(|m| m.keys.iter().cloned()).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "no key missing");
    assert_eq!(ledger_paths(&wh).await.len() as u64, report.files, "each file once in the ledger");
    assert_eq!(wh.row_count("file_ledger").await.expect("ledger"), report.files);
    // Nothing half-made is left behind.
    let pending: Vec<_> =
        std::fs::read_dir(lake.join("commits")).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(pending.is_empty(), "no intent left: {pending:?}");
    // The crashed lake's history was expired as it went (a kill may have left a few more than 2 since; `poslake
    // expire` takes them); the reference kept all of it.
    let sweep = |confirmed: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(["maintain", "--keep", "2", "--remove-orphans-older-than-hours", "0", "--config"]);
        cmd.arg(&config).arg("--lake").arg(&lake);
        if confirmed {
            cmd.arg("--no-ingest-running");
        }
        cmd.output().expect("maintain")
    };
    // Without grace, a sweep would delete a running ingest's uncommitted files: it must be confirmed.
    let refused = sweep(false);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--no-ingest-running"), "{err}");
    let out = sweep(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kept = wh.history("sales_header").await.expect("history");
    assert!(kept.truncated && kept.snapshots.len() == 2, "{} snapshots kept", kept.snapshots.len());
    // The files the killed runs left unreferenced are gone (no grace: nothing runs now), and every table still
    // reads as the reference does.
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let removed: u64 = report
        .lines()
        .filter(|l| l.contains("orphan files removed"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert!(removed > 0, "the kills mid-write left files no snapshot names: {report}");
    assert_eq!(counts(&lake).await, counts(&reference).await, "every table as in the uninterrupted run");
    let after: BTreeSet<String> = header_keys(&wh).await.into_iter().collect();
    assert_eq!(after, want, "every key still reads");
    let full = Warehouse::open(&reference).await.expect("open").history("sales_header").await.expect("history");
    assert!(!full.truncated && full.snapshots.len() > 10, "{} snapshots in the reference", full.snapshots.len());
}

/// `poslake dedup rebuild` killed after it finished a dead ingest's commit (and before its scan of `sales_header`
/// ended) leaves the store holding that commit's keys: re-sent copies of every file then add nothing. Until session
/// 20 the finished commit was marked applied without its keys, and its transactions landed a second time.
#[test]
fn a_rebuild_killed_midway_leaves_no_key_out_of_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = small_corpus(&staging, 43);
    let lake = dir.path().join("lake");
    let config = config_file(dir.path(), None, "rebuild", false);
    let run = |cmd: &mut Command| cmd.output().expect("run poslake");

    // An ingest killed right after its first commit's intent is written: that commit is left for recovery.
    let out = run(&mut ingest(&staging, &lake, &config, Some("commit-intent:1")));
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", String::from_utf8_lossy(&out.stderr));
    // A rebuild finishes it, then is killed before its scan ends.
    let mut rebuild = Command::new(env!("CARGO_BIN_EXE_poslake"));
    rebuild.args(["dedup", "rebuild", "--config"]).arg(&config).arg("--lake").arg(&lake);
    rebuild.env("POSLAKE_KILL_AT", "rebuild-scan").env("RUST_LOG", "warn");
    let out = run(&mut rebuild);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(poslake::failpoint::COMMAND_POINTS.contains(&"rebuild-scan"));

    let out = run(&mut ingest(&staging, &lake, &config, None));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Every file again, under other names.
    let resent = staging.join("resent");
    std::fs::create_dir_all(&resent).expect("mkdir");
    for f in walk(&staging).into_iter().filter(|p| !p.starts_with(&resent)) {
        let name = f.strip_prefix(&staging).expect("inside").to_string_lossy().replace('/', "_");
        std::fs::copy(&f, resent.join(name)).expect("copy");
    }
    let mut again = ingest(&staging, &lake, &config, None);
    again.stdout(Stdio::piped());
    let out = run(&mut again);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["files"], report.files, "every copy was taken");
    assert_eq!(summary["new_transactions"], 0, "no key may be missing from the store: {summary}");
}

/// A commit left by a killed worker is being recovered by another process (which holds its intent's lock) when a
/// worker starts; that process then dies. The worker, which waited for the commit, finishes it before it reads the
/// ledger, instead of taking its files again (an audit saw their sales land twice once a later start finished it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_recoverer_dies_while_a_worker_waits_is_finished_by_that_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = small_corpus(&staging, 44);
    let lake = dir.path().join("lake");
    let config = config_file(dir.path(), None, "settle", false);
    let out = ingest(&staging, &lake, &config, Some("commit-intent:1")).output().expect("run");
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", String::from_utf8_lossy(&out.stderr));
    let intents: Vec<_> = std::fs::read_dir(lake.join("commits"))
        .expect("commits")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    // The "recovering process": it holds the intent's lock, then dies (its lock released) while the worker waits.
    let held = std::fs::File::open(&intents[0]).expect("open intent");
    held.lock().expect("lock");
    let mut worker = ingest(&staging, &lake, &config, None);
    let worker = worker.stdout(Stdio::piped()).spawn().expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    drop(held);
    let out = worker.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["recovery"]["intents_finished"], 1, "{summary}");
    assert!(std::fs::read_dir(lake.join("commits")).expect("commits").next().is_none(), "no intent left");

    let wh = Warehouse::open(&lake).await.expect("open");
    let keys = header_keys(&wh).await;
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "no key twice");
    assert_eq!(keys.len() as u64, report.unique_keys);
    let rows = wh.row_count("file_ledger").await.expect("ledger");
    assert_eq!((rows, ledger_paths(&wh).await.len() as u64), (report.files, report.files), "each file once");
}

/// A lake restored from a backup under its newer dedup store (which holds keys of commits the restored ledger lacks)
/// is refused, whatever the moment the run after the backup died, and lands every key once when started over as
/// the refusal says; a lake its store is not ahead of goes on and lands every key once. An audit lost sales without
/// a word both ways it found: a run killed between a commit's keys and the store's record of its ledger, and a
/// catalog restored alone under a commit that recovery finished before the check (taking the restored ledger up to
/// the store's record). With the embedded store, whose positives are exact, a key the store holds is dropped.
#[test]
fn a_lake_restored_under_its_store_is_refused_or_lands_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = Halves::new(dir.path(), 45);
    let poslake = |args: &[&str], config: &Path, lake: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(args).arg("--config").arg(config).arg("--lake").arg(lake).env("RUST_LOG", "warn");
        cmd.output().expect("run poslake")
    };
    let mut refused = Vec::new();
    // (case, kill point of the run after the backup, whether the whole lake is restored or its catalog.db alone)
    for (case, kill, whole) in [
        ("table", "commit-table:3", true),
        ("recorded", "commit-recorded:1", true),
        ("keys", "commit-keys:1", true),
        ("applied", "commit-applied:2", true),
        ("catalog", "commit-intent:2", false),
    ] {
        let work = dir.path().join(case);
        let [staging, lake, backup, config] = corpus.kill_past_a_backup(&work, kill, whole);
        restore(&lake, &backup, whole);

        let out = ingest(&staging, &lake, &config, None).output().expect("run");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("the lake is older than its store") && err.contains("dedup rebuild"), "{case}: {err}");
            refused.push(case);
            // As the refusal says: the store aside, a rebuild, an ingest.
            std::fs::rename(lake.join("dedup"), work.join("dedup.aside")).expect("aside");
            let out = poslake(&["dedup", "rebuild"], &config, &lake);
            assert!(out.status.success(), "{case}: rebuild: {}", String::from_utf8_lossy(&out.stderr));
            let out = ingest(&staging, &lake, &config, None).output().expect("run");
            assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        }
        corpus.assert_landed(&lake, case);
    }
    // A run killed before its first commit's record left the store behind the ledger it saw: nothing to refuse.
    assert_eq!(refused, ["recorded", "keys", "applied", "catalog"]);
}

/// A commit in progress has its `sales_header` rows before its ledger. A recovery by another process meanwhile (at
/// `reconcile`, or `dedup rebuild`'s reload of every key) leaves its keys to whoever finishes it: added then, they
/// were in the store ahead of its record of the ledger, and once the committing process died, a lake restored from a
/// backup taken before that commit went on and took its sales for duplicates (a re-audit lost them so).
#[test]
fn a_recovery_beside_a_commit_in_progress_leaves_its_keys_to_whoever_finishes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = Halves::new(dir.path(), 46);
    for (case, recovery) in [("reconcile", &["reconcile"][..]), ("rebuild", &["dedup", "rebuild"])] {
        // Killed after its first table (sales_header): the commit is as a live one is mid-way, and its "process"
        // holds its intent's lock while the other runs.
        let [staging, lake, backup, config] = corpus.kill_past_a_backup(&dir.path().join(case), "commit-table:1", true);
        let (_, held) = hold_intent(&lake);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(recovery).arg("--config").arg(&config).arg("--lake").arg(&lake).env("RUST_LOG", "warn");
        let out = cmd.output().expect("run");
        assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        drop(held);
        // The committing process is gone; the lake is restored from the backup (the store stays).
        restore(&lake, &backup, true);
        let out = ingest(&staging, &lake, &config, None).output().expect("run");
        assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        corpus.assert_landed(&lake, case);
    }
}

/// A commit another process has in progress past a starting worker's wait (its process paused mid-commit; here
/// killed at a kill point, its intent's lock then held by the test) has no keys in the store until it ends. Copies of
/// its sales that the starting worker takes (the files re-sent into its share) are quarantined, not landed: once the
/// commit is finished, every key is in `sales_header` once, and `reconcile` confirms the copies as duplicates. An
/// audit landed 25 sales twice before, with a worker held under a debugger after its first table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_commit_in_progress_elsewhere_are_quarantined_until_it_ends() {
    use poslake::ingest::{IngestPaths, IngestSetup};
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = Halves::new(dir.path(), 47);
    for kill in ["commit-intent:1", "commit-table:1"] {
        let work = dir.path().join(kill.replace(':', "-"));
        let (staging, lake, share) = (work.join("staging"), work.join("lake"), work.join("share"));
        std::fs::create_dir_all(&work).expect("mkdir");
        let config = config_file(&work, None, "killed", false);
        corpus.stage(&staging, true);
        let out = ingest(&staging, &lake, &config, None).output().expect("run");
        assert!(out.status.success(), "{kill}: {}", String::from_utf8_lossy(&out.stderr));
        corpus.stage(&staging, false);
        let out = ingest(&staging, &lake, &config, Some(kill)).output().expect("run");
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{kill}: {}", String::from_utf8_lossy(&out.stderr));
        // Its process "paused": alive, holding its intent's lock.
        let (intent, held) = hold_intent(&lake);
        let in_progress = intent_transactions(&intent);
        assert!(in_progress > 0, "{kill}: the commit in progress holds sales");

        // Another worker's share: the second half re-sent under another folder.
        corpus.stage(&share.join("resent"), false);
        let paths = IngestPaths { staging: share.clone(), lake: lake.clone(), archive: None, catalog: None };
        let setup = IngestSetup { commit_wait: Duration::from_millis(300), ..IngestSetup::new(paths) };
        let other = poslake::ingest::ingest(&setup, common::pipeline(), Default::default()).await.expect("other");
        assert_eq!(other.recovery.intents_finished, 0, "{kill}: the commit in progress is left to its process");
        assert_eq!(
            other.quarantined_transactions, in_progress,
            "{kill}: the copies of the commit in progress are quarantined, and nothing else: {other:?}"
        );
        let wh = Warehouse::open(&lake).await.expect("open");
        let reasons = common::strings(&wh, "SELECT DISTINCT reason FROM sales_duplicates").await;
        assert_eq!(reasons, ["commit_in_progress"], "{kill}");
        drop(wh);

        // The paused process ends (dies here): the next run finishes its commit.
        drop(held);
        let out = ingest(&staging, &lake, &config, None).output().expect("run");
        assert!(out.status.success(), "{kill}: {}", String::from_utf8_lossy(&out.stderr));
        let rec = poslake::ingest::reconcile::reconcile(&lake, None, &Default::default()).await.expect("reconcile");
        assert_eq!((rec.promoted, rec.left), (0, 0), "{kill}: {rec:?}");
        assert_eq!(rec.confirmed_duplicates, in_progress, "{kill}: {rec:?}");

        let wh = Warehouse::open(&lake).await.expect("open");
        let keys = header_keys(&wh).await;
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "{kill}: no key twice");
        let got: BTreeSet<String> = keys.into_iter().collect();
        assert_eq!(got, corpus.want, "{kill}: every key of the corpus");
        let ledger = wh.row_count("file_ledger").await.expect("ledger");
        assert_eq!(ledger, ledger_paths(&wh).await.len() as u64, "{kill}: each file once in the ledger");
    }
}

/// The lake's made intent, locked as the process committing it holds it: a commit in progress, its process alive.
fn hold_intent(lake: &Path) -> (std::path::PathBuf, std::fs::File) {
    let intent = std::fs::read_dir(lake.join("commits"))
        .expect("commits")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".json"))
        .expect("an intent");
    let held = std::fs::File::open(&intent).expect("open intent");
    held.lock().expect("lock");
    (intent, held)
}

/// The transactions an intent's `sales_header` files hold, from their row counts.
fn intent_transactions(intent: &Path) -> u64 {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(intent).expect("read")).expect("intent json");
    let tables = json["tables"].as_array().expect("tables");
    let header = tables.iter().find(|t| t["table"] == "sales_header").expect("sales_header in the intent");
    header["rows"].as_u64().expect("rows")
}

/// [`small_corpus`], its files in two halves by path (a run before a backup, one after), and the keys it lands.
struct Halves {
    all: std::path::PathBuf,
    report: poslake::generate::Report,
    want: BTreeSet<String>,
    files: Vec<std::path::PathBuf>,
}

impl Halves {
    fn new(dir: &Path, seed: u64) -> Self {
        let all = dir.join("all");
        let report = small_corpus(&all, seed);
        let manifest = read_manifest(&all).expect("manifest");
        let want = manifest.into_iter().filter(|m| m.kind != FileKind::Malformed).flat_map(|m| m.keys).collect();
        let mut files = walk(&all);
        files.sort();
        Halves { all, report, want, files }
    }

    /// Copies the first half of the files (or the rest) into `staging`, under their paths.
    fn stage(&self, staging: &Path, first: bool) {
        let (head, tail) = self.files.split_at(self.files.len() / 2);
        for f in if first { head } else { tail } {
            let to = staging.join(f.strip_prefix(&self.all).expect("inside"));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(f, to).expect("copy");
        }
    }

    /// In `work`: the first half ingested into a lake and backed up (see [`back_up`]), then the rest staged and an
    /// ingest killed at `kill`. Returns the staging folder, the lake, the backup and the configuration file.
    fn kill_past_a_backup(&self, work: &Path, kill: &str, whole: bool) -> [std::path::PathBuf; 4] {
        let (staging, lake, backup) = (work.join("staging"), work.join("lake"), work.join("backup"));
        std::fs::create_dir_all(work).expect("mkdir");
        let config = config_file(work, None, "killed", false);
        self.stage(&staging, true);
        let out = ingest(&staging, &lake, &config, None).output().expect("run");
        assert!(out.status.success(), "{work:?}: {}", String::from_utf8_lossy(&out.stderr));
        back_up(&lake, &backup, whole);
        self.stage(&staging, false);
        let out = ingest(&staging, &lake, &config, Some(kill)).output().expect("run");
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{kill}: {}", String::from_utf8_lossy(&out.stderr));
        [staging, lake, backup, config]
    }

    /// Every key of the corpus once in `lake`, and every file once in its ledger.
    fn assert_landed(&self, lake: &Path, case: &str) {
        let (keys, paths, rows) = tokio::runtime::Runtime::new().expect("runtime").block_on(async {
            let wh = Warehouse::open(lake).await.expect("open");
            (header_keys(&wh).await, ledger_paths(&wh).await.len() as u64, wh.row_count("file_ledger").await)
        });
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "{case}: no key twice");
        let got: BTreeSet<String> = keys.into_iter().collect();
        let (missing, extra) = (self.want.difference(&got).count(), got.difference(&self.want).count());
        assert_eq!((missing, extra), (0, 0), "{case}: keys missing and unexpected");
        assert_eq!((paths, rows.expect("ledger")), (self.report.files, self.report.files), "{case}: each file once");
    }
}

/// Whether a lake entry is part of a backup: all but the dedup store (`whole`), or the SQLite catalog alone.
fn backed_up(entry: &std::fs::DirEntry, whole: bool) -> bool {
    (whole && entry.file_name() != "dedup") || entry.file_name().to_string_lossy().starts_with("catalog.db")
}

/// Copies the lake into `backup`: all but its dedup store (`whole`), or its catalog.db alone.
fn back_up(lake: &Path, backup: &Path, whole: bool) {
    std::fs::create_dir_all(backup).expect("mkdir");
    for e in std::fs::read_dir(lake).expect("lake").flatten().filter(|e| backed_up(e, whole)) {
        assert!(Command::new("cp").arg("-a").arg(e.path()).arg(backup).status().expect("cp").success());
    }
}

/// Puts `backup` back in place of what it holds of the lake (the dedup store stays as it is).
fn restore(lake: &Path, backup: &Path, whole: bool) {
    for e in std::fs::read_dir(lake).expect("lake").flatten().filter(|e| backed_up(e, whole)) {
        let path = e.path();
        if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.expect("rm");
    }
    for e in std::fs::read_dir(backup).expect("backup").flatten() {
        assert!(Command::new("cp").arg("-a").arg(e.path()).arg(lake).status().expect("cp").success());
    }
}

/// 24 files of 8-16 transactions, no planted duplicates, at `staging`.
fn small_corpus(staging: &Path, seed: u64) -> poslake::generate::Report {
    generate(&GenerateArgs {
        out: staging.to_path_buf(),
        seed,
        sites: 4,
        days: 2,
        files_per_day: 3,
        min_transactions: 8,
        max_transactions: 16,
        duplicate_file_rate: 0.0,
        duplicate_transaction_rate: 0.0,
        ..GenerateArgs::default()
    })
    .expect("generate")
}

/// Every XML file under `dir` but the manifest.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "xml" || x == "gz") {
                out.push(p);
            }
        }
    }
    out
}
