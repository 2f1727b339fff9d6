//! Dedup against a real `redis-server` (started by the test on a free port): exact keys with planted duplicates
//! within files, across files and across runs; a saturated filter that loses nothing (quarantine + reconcile);
//! Redis stopped, restarted and wiped mid-run; Redis down past the limit; the filter rebuilt from the lake.
#![cfg(feature = "lake")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::RedisServer;
use common::{header_keys, keys_of_table, ledger_paths, pipeline};
use poslake::config::{DedupBackend, DedupConfig, DedupPeriod};
use poslake::dedup::bench::random_keys;
use poslake::dedup::{Dedup, DedupError, DedupKey, DedupStore, FileIndex, Holding, LedgerMark, SyncMark, Vouch};
use poslake::generate::{
    FileKind, GenerateArgs, ManifestFile as ManifestEntry, Report as GenerateReport, generate, read_manifest,
};
use poslake::ingest::{CommitPolicy, IngestPaths, IngestSetup, IngestSummary, ingest};
use poslake::lake::Warehouse;
use poslake_actors::{FlowLimits, PipelineConfig, Progress};

fn corpus(dir: &Path, seed: u64, files_per_day: u32) -> (PathBuf, GenerateReport, Vec<ManifestEntry>) {
    generated(GenerateArgs {
        out: dir.join(format!("staging-{seed}")),
        seed,
        sites: 6,
        days: 2,
        files_per_day,
        min_transactions: 10,
        max_transactions: 25,
        duplicate_file_rate: 0.15,
        duplicate_transaction_rate: 0.05,
        malformed_rate: 0.05,
        gzip_rate: 0.2,
        rollback_rate: 0.05,
        ..GenerateArgs::default()
    })
}

/// A generated corpus, its report and its manifest of expected keys.
fn generated(args: GenerateArgs) -> (PathBuf, GenerateReport, Vec<ManifestEntry>) {
    let report = generate(&args).expect("generate");
    let manifest = read_manifest(&args.out).expect("manifest");
    (args.out, report, manifest)
}

fn unique_keys(manifest: &[ManifestEntry]) -> BTreeSet<String> {
    manifest.iter().filter(|m| m.kind != FileKind::Malformed).flat_map(|m| m.keys.iter().cloned()).collect()
}

fn setup(staging: &Path, lake: &Path, dedup: DedupConfig) -> IngestSetup {
    IngestSetup {
        dedup,
        policy: CommitPolicy { files: 8, interval: Duration::from_secs(10), ..CommitPolicy::default() },
        ..IngestSetup::new(IngestPaths {
            staging: staging.to_path_buf(),
            lake: lake.to_path_buf(),
            archive: None,
            catalog: None,
        })
    }
}

async fn run(setup: &IngestSetup) -> IngestSummary {
    ingest(setup, pipeline(), Arc::new(Progress::default())).await.expect("ingest")
}

/// The lake's silver keys are exactly `want`, each once.
async fn assert_exact(lake: &Path, want: &BTreeSet<String>) {
    let wh = Warehouse::open(lake).await.expect("open");
    let got = header_keys(&wh).await;
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no key twice");
    let got: BTreeSet<String> = got.into_iter().collect();
    let missing: Vec<&String> = want.difference(&got).take(5).collect();
    let extra: Vec<&String> = got.difference(want).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}");
    assert_eq!(wh.row_count("bronze_transaction").await.expect("count"), want.len() as u64);
}

/// Copies of some ingested files under new names: re-sends from another day's upload.
fn resend(from: &Path, manifest: &[ManifestEntry], to: &Path, every: usize) -> Vec<ManifestEntry> {
    std::fs::create_dir_all(to).expect("mkdir");
    let picked: Vec<ManifestEntry> =
        manifest.iter().filter(|m| m.kind != FileKind::Malformed).step_by(every).cloned().collect();
    for m in &picked {
        let name = Path::new(&m.path).file_name().expect("name").to_string_lossy().into_owned();
        std::fs::copy(from.join(&m.path), to.join(format!("resent-{name}"))).expect("copy");
    }
    picked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bitmap_lands_exact_keys_within_across_files_and_across_runs() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 3, 3);
    assert!(report.resent_files > 0 && report.repeated_transactions > 0);

    let summary = run(&setup(&staging, &lake, server.bitmap())).await;
    assert!(summary.dedup.starts_with("redis-bitmap"), "{}", summary.dedup);
    assert_eq!(summary.new_transactions, report.unique_keys);
    assert_eq!(summary.dead_letters, report.malformed_files);
    let want = unique_keys(&manifest);
    assert_exact(&lake, &want).await;
    // What the filter called seen (re-sends of files committed earlier in the run) are true duplicates: their keys
    // landed from the original. (The filter is nearly empty, so a false positive is all but impossible here.)
    let wh = Warehouse::open(&lake).await.expect("open");
    let quarantined: BTreeSet<String> = keys_of_table(&wh, "sales_duplicates").await.into_iter().collect();
    assert!(quarantined.len() as u64 <= summary.quarantined_transactions);
    assert!(quarantined.is_subset(&want), "only true duplicates are quarantined");
    drop(wh);

    // Across runs: re-sent copies under new names find every key in Redis, and are quarantined, not landed.
    let again = dir.path().join("staging-resent");
    let picked = resend(&staging, &manifest, &again, 4);
    let resent_tx: u64 = picked.iter().map(|m| m.keys.len() as u64).sum();
    let second = run(&setup(&again, &lake, server.bitmap())).await;
    assert_eq!(second.files, picked.len() as u64);
    assert_eq!(second.new_transactions, 0, "a re-send adds nothing");
    assert!(second.quarantined_transactions > 0 && second.quarantined_transactions <= resent_tx);
    assert_exact(&lake, &want).await;

    // reconcile confirms them all as duplicates: none promoted, nothing changes.
    let rec = poslake::ingest::reconcile::reconcile(&lake, None, &server.bitmap()).await.expect("reconcile");
    assert_eq!(rec.promoted, 0);
    assert_eq!(rec.quarantined, summary.quarantined_transactions + second.quarantined_transactions);
    assert!(rec.confirmed_duplicates > 0);
    assert_exact(&lake, &want).await;

    // The filter reports its partitions: one per month the corpus spans, holding about the keys added.
    let store = Dedup::open(&server.bitmap(), &lake).await.expect("open store");
    let stats = store.stats().await.expect("stats");
    let adds: u64 = stats.iter().map(|s| s.adds).sum();
    assert_eq!(adds, report.unique_keys, "each new key added once");
    let estimated: f64 = stats.iter().map(|s| s.estimated_keys).sum();
    assert!((estimated / report.unique_keys as f64 - 1.0).abs() < 0.05, "estimated {estimated}");
}

/// A run against a filter that claims too much: every unique key lands or is quarantined whole, and `reconcile`
/// promotes every false positive. Returns the keys wanted and those quarantined.
async fn lands_or_quarantines_then_reconciles(
    staging: &Path,
    lake: &Path,
    tiny: &DedupConfig,
    report: &GenerateReport,
    manifest: &[ManifestEntry],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let summary = run(&setup(staging, lake, tiny.clone())).await;
    assert!(summary.quarantined_transactions > 0, "false positives happened: {summary:?}");
    assert!(summary.new_transactions < report.unique_keys);
    let wh = Warehouse::open(lake).await.expect("open");
    let landed: BTreeSet<String> = header_keys(&wh).await.into_iter().collect();
    let quarantined: BTreeSet<String> = keys_of_table(&wh, "sales_duplicates").await.into_iter().collect();
    let want = unique_keys(manifest);
    assert_eq!(landed.union(&quarantined).cloned().collect::<BTreeSet<_>>(), want, "every key landed or quarantined");
    drop(wh);
    let rec = poslake::ingest::reconcile::reconcile(lake, None, tiny).await.expect("reconcile");
    assert_eq!(rec.promoted, report.unique_keys - summary.new_transactions, "every false positive promoted");
    assert_exact(lake, &want).await;
    (want, quarantined)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_filter_loses_nothing_and_reconcile_promotes_its_false_positives() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 5, 2);
    // Sized for 20 keys at 20%: one 512-bit block per month, saturated after the first few hundred keys.
    let tiny = DedupConfig { expected_keys_per_period: 20, false_positive_rate: 0.2, ..server.bitmap() };
    // Keys reach the filter at each commit (every 8 files), so the later files meet a full one.
    let (want, quarantined) = lands_or_quarantines_then_reconciles(&staging, &lake, &tiny, &report, &manifest).await;
    let wh = Warehouse::open(&lake).await.expect("open");
    let lines = wh.row_count("sales_line").await.expect("lines");
    let total = common::scalar(&wh, "SELECT sum(line_count) FROM sales_header").await as u64;
    assert_eq!(total, lines, "promoted transactions brought their lines");
    // And each voiding record (a rollback mirror), landed or promoted, its one `sales_voids` row.
    let voiding =
        common::scalar(&wh, "SELECT count(*) FROM sales_header WHERE key_variant IN ('rollback', 'post_void')").await;
    assert!(voiding > 0, "the corpus holds rollback mirrors");
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_voids").await, voiding);
    drop(wh);

    // Exactly once: a second reconcile finds nothing more to promote.
    let again = poslake::ingest::reconcile::reconcile(&lake, None, &tiny).await.expect("reconcile again");
    assert_eq!(again.promoted, 0);
    assert_eq!(again.confirmed_duplicates, quarantined.len() as u64);
    assert_exact(&lake, &want).await;
}

/// `poslake reconcile` beside an ingest that lands the same keys (the quarantine's false positives, re-sent after the
/// filter was rebuilt under a new prefix, so that it lacks them): each key lands once. A commit that holds a key the
/// reconcile promotes stops before any table (the reconcile fence), and the reconcile leaves out what commits in
/// progress landed. Until session 20 both landed every such key (audit: 4 of 4 rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_beside_an_ingest_of_the_same_keys_lands_each_key_once() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, lake, want, fresh) = quarantined_then_forgotten(&server, dir.path(), 9).await;
    let wh = Warehouse::open(&lake).await.expect("open");
    let store = Dedup::open(&fresh, &lake).await.expect("store");
    let landed: BTreeSet<String> = header_keys(&wh).await.into_iter().collect();
    let absent: Vec<&String> = want.difference(&landed).collect();
    assert!(!absent.is_empty());

    // With the fence up over those keys, the ingest commits nothing that holds one, and says why.
    let fenced: Vec<DedupKey> = quarantined_keys(&wh).await;
    store.fence(&fenced, Duration::from_secs(60)).await.expect("fence");
    let err = ingest(&setup(&staging, &lake, fresh.clone()), pipeline(), Arc::new(Progress::default()))
        .await
        .expect_err("a commit holding fenced keys stops");
    assert!(err.to_string().contains("reconcile"), "{err}");
    let now: BTreeSet<String> = header_keys(&wh).await.into_iter().collect();
    assert!(absent.iter().all(|k| !now.contains(*k)), "no fenced key landed");
    store.unfence().await.expect("unfence");

    // Now for real: the ingest and a reconcile at once. Whichever lands a key first, it lands once.
    let ingesting = tokio::spawn({
        let setup = setup(&staging, &lake, fresh.clone());
        async move { ingest(&setup, pipeline(), Arc::new(Progress::default())).await.map(|s| s.new_transactions) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rec = poslake::ingest::reconcile::reconcile(&lake, None, &fresh).await.expect("reconcile");
    let ingested = ingesting.await.expect("join");
    // A run stopped by the fence leaves its files to the next one; a reconcile after it promotes what is left.
    if ingested.is_err() {
        run(&setup(&staging, &lake, fresh.clone())).await;
    }
    let last = poslake::ingest::reconcile::reconcile(&lake, None, &fresh).await.expect("last reconcile");
    assert!(rec.promoted > 0 || ingested.as_ref().is_ok_and(|n| *n > 0), "{rec:?} {ingested:?}");
    assert_exact(&lake, &want).await;
    // Each report's figures add up: its distinct quarantined keys are those confirmed, promoted and left (an audit
    // saw a reconcile beside an ingest report 385 rows, 209 confirmed and 203 promoted).
    let keys = quarantined_keys(&wh).await.into_iter().map(|k| k.digest).collect::<BTreeSet<_>>().len() as u64;
    assert_eq!(last.confirmed_duplicates + last.promoted + last.left, keys, "{last:?}");
    assert_eq!((last.promoted, last.left), (0, 0), "{last:?}");
    assert!(rec.quarantined <= last.quarantined && rec.confirmed_duplicates + rec.promoted + rec.left <= keys);
}

/// An ingest that died after its commit passed the reconcile fence, before its tables: reconcile finishes that
/// commit (the dead process's, which would land its keys at the next start) before it promotes, so the keys it lands
/// are not promoted too. (Here the process dies before reconcile starts, and reconcile's first recovery finishes
/// it; a death during reconcile's wait for commits in progress is finished by the recovery after that wait, which
/// the re-audit of session 20 found missing: 48,500 keys twice in 3 of 3 rounds. That ordering is not reproduced
/// deterministically here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finishes_a_dead_ingests_commit_before_it_promotes() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, lake, want, fresh) = quarantined_then_forgotten(&server, dir.path(), 13).await;

    // The re-sent files' first commit holds quarantined keys the fresh filter lacks; the process dies once its
    // intent is made (past the fence), before any table.
    let config = dir.path().join("fresh.toml");
    std::fs::write(
        &config,
        "commit_files = 1000\n[dedup]\nbackend = \"redis-bitmap\"\nkey_prefix = \"fresh\"\n\
         expected_keys_per_period = 200000\nmax_shard_mib = 1\n",
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--json", "--redis-url", &server.url(), "--config"])
        .arg(&config)
        .arg("--staging")
        .arg(&staging)
        .arg("--lake")
        .arg(&lake)
        .env("POSLAKE_KILL_AT", "commit-intent:1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run poslake");
    assert!(!out.status.success(), "killed at its first commit");
    assert!(std::fs::read_dir(lake.join("commits")).expect("commits").count() > 0, "its intent is left");

    poslake::ingest::reconcile::reconcile(&lake, None, &fresh).await.expect("reconcile");
    run(&setup(&staging, &lake, fresh.clone())).await;
    poslake::ingest::reconcile::reconcile(&lake, None, &fresh).await.expect("last reconcile");
    assert_exact(&lake, &want).await;
}

/// A lake whose saturated filter quarantined false positives, then a new filter (prefix `fresh`) rebuilt from
/// `sales_header`, which lacks them, and every file again under another name: (staging, lake, every unique key, the
/// new filter's configuration).
async fn quarantined_then_forgotten(
    server: &RedisServer,
    dir: &Path,
    seed: u64,
) -> (PathBuf, PathBuf, BTreeSet<String>, DedupConfig) {
    let lake = dir.join("lake");
    let (staging, _, manifest) = corpus(dir, seed, 2);
    let tiny = DedupConfig { expected_keys_per_period: 20, false_positive_rate: 0.2, ..server.bitmap() };
    let first = run(&setup(&staging, &lake, tiny)).await;
    assert!(first.quarantined_transactions > 0, "{first:?}");
    let fresh = DedupConfig { key_prefix: "fresh".into(), ..server.bitmap() };
    let wh = Arc::new(Warehouse::open(&lake).await.expect("open"));
    let store = Arc::new(Dedup::open(&fresh, &lake).await.expect("store"));
    poslake::ingest::commit::Committer::new(wh, store).rebuild().await.expect("rebuild");
    resend(&staging, &manifest, &staging.join("again"), 1);
    (staging, lake, unique_keys(&manifest), fresh)
}

/// The dedup keys of the quarantine's rows.
async fn quarantined_keys(wh: &Warehouse) -> Vec<DedupKey> {
    let mut keys = Vec::new();
    for b in wh.scan("sales_duplicates").await.expect("scan") {
        keys.extend(poslake::ingest::commit::keys_of(std::slice::from_ref(&b)).expect("keys"));
    }
    keys
}

/// A pipeline slow enough that a Redis outage lands mid-run.
fn slow_pipeline() -> PipelineConfig {
    PipelineConfig {
        downloaders: 2,
        parsers: 1,
        archivers: 1,
        batch_files: 2,
        flush_interval: Duration::from_millis(20),
        limits: FlowLimits { max_files: 2, max_bytes: 1 << 20 },
        ..PipelineConfig::default()
    }
}

/// Runs an ingest while `outage` acts on the server once `after` files are done; also returns how many files
/// were done when the outage began.
async fn ingest_with_outage(
    setup: &IngestSetup,
    server: Arc<Mutex<RedisServer>>,
    after: u64,
    outage: impl FnOnce(&mut RedisServer) + Send + 'static,
) -> (Result<IngestSummary, poslake::ingest::IngestRunError>, u64) {
    let progress = Arc::new(Progress::default());
    let watcher = {
        let progress = progress.clone();
        tokio::spawn(async move {
            while progress.snapshot().done < after {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let done = progress.snapshot().done;
            let mut s = server.lock().expect("server");
            outage(&mut s);
            done
        })
    };
    let result = ingest(setup, slow_pipeline(), progress).await;
    (result, watcher.await.expect("outage ran"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_restarted_or_wiped_mid_run_loses_and_duplicates_nothing() {
    let server = Arc::new(Mutex::new(RedisServer::start()));
    let config = server.lock().expect("server").bitmap();
    let dir = tempfile::tempdir().expect("tempdir");

    // Stopped and restarted with its data (append-only file): the pipeline pauses and resumes.
    let lake = dir.path().join("lake-restart");
    let (staging, report, manifest) = corpus(dir.path(), 7, 3);
    let (result, at) = ingest_with_outage(&setup(&staging, &lake, config.clone()), server.clone(), 12, |s| {
        s.stop();
        std::thread::sleep(Duration::from_millis(1500));
        s.restart();
    })
    .await;
    let summary = result.expect("the run survives the outage");
    assert!(at < report.files, "the outage began mid-run ({at} of {} files)", report.files);
    assert_eq!(summary.files, report.files);
    assert_exact(&lake, &unique_keys(&manifest)).await;

    // Killed and back empty: the lost state is detected and every committed batch's keys are re-added, so
    // re-sends after the outage are still caught.
    server.lock().expect("server").kill_and_wipe();
    server.lock().expect("server").restart();
    let lake = dir.path().join("lake-wiped");
    let (staging, report, manifest) = corpus(dir.path(), 8, 3);
    let (result, at) = ingest_with_outage(&setup(&staging, &lake, config.clone()), server.clone(), 12, |s| {
        s.kill_and_wipe();
        s.restart();
    })
    .await;
    let summary = result.expect("the run survives losing the filter");
    assert!(at < report.files, "the outage began mid-run ({at} of {} files)", report.files);
    assert_eq!(summary.files, report.files);
    assert!(summary.recovery.keys_readded > 0, "the lost keys were re-added: {:?}", summary.recovery);
    let want = unique_keys(&manifest);
    assert_exact(&lake, &want).await;
    let again = dir.path().join("resent-8");
    resend(&staging, &manifest, &again, 3);
    let second = run(&setup(&again, &lake, config)).await;
    assert_eq!(second.new_transactions, 0, "the rebuilt filter still knows every key");
    assert_exact(&lake, &want).await;
}

/// A Redis that comes back without its last writes but with its generation (an append-only file that lost its last
/// second, a replica that took over before it received them) has lost some commits' keys together with their applied
/// marks. The run, having seen the outage, re-checks its commits before it trusts a check again and re-adds the keys
/// of every commit whose mark is gone: every key lands once, and re-sends afterwards are caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_back_without_its_last_writes_has_them_re_added_before_a_check_is_trusted() {
    let server = Arc::new(Mutex::new(RedisServer::start()));
    let config = server.lock().expect("server").bitmap();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 19, 8);
    let lost = Arc::new(Mutex::new(0u64));
    let marks_lost = lost.clone();
    let (result, at) = ingest_with_outage(&setup(&staging, &lake, config.clone()), server.clone(), 12, move |s| {
        let marks = |s: &RedisServer| s.integer(&["SCARD", "poslake:{dedup}:applied"]);
        // Copied first: a commit marked between the two is lost but not counted, which the test allows.
        let copy = s.copy_data();
        let before = marks(s);
        // Until the server has taken a commit's keys and mark since the copy: those are the writes it loses.
        let started = std::time::Instant::now();
        while marks(s) == before && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        *marks_lost.lock().expect("lost") = marks(s) - before;
        s.kill_and_restore(copy.path());
        s.restart();
    })
    .await;
    let summary = result.expect("the run survives the outage");
    let lost = *lost.lock().expect("lost");
    assert!(at < report.files, "the outage began mid-run ({at} of {} files)", report.files);
    assert!(lost > 0, "commits were marked in the writes the server lost");
    assert!(
        summary.recovery.commits_readded >= lost,
        "every commit whose mark was lost had its keys re-added: {:?}, {lost} marks lost",
        summary.recovery
    );
    let want = unique_keys(&manifest);
    assert_exact(&lake, &want).await;
    let again = dir.path().join("resent-19");
    resend(&staging, &manifest, &again, 3);
    let second = run(&setup(&again, &lake, config)).await;
    assert_eq!(second.new_transactions, 0, "the store knows every key again");
    assert_exact(&lake, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_past_the_limit_fails_clearly_and_the_next_run_completes() {
    let server = Arc::new(Mutex::new(RedisServer::start()));
    let config = DedupConfig { unavailable_limit_secs: 2, ..server.lock().expect("server").bitmap() };
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, _, manifest) = corpus(dir.path(), 11, 3);
    let (result, _) =
        ingest_with_outage(&setup(&staging, &lake, config.clone()), server.clone(), 8, |s| s.stop()).await;
    let error = format!("{:#}", result.expect_err("the run fails once Redis stays down past the limit"));
    assert!(error.contains("unreachable"), "a clear error: {error}");

    server.lock().expect("server").restart();
    run(&setup(&staging, &lake, config)).await;
    assert_exact(&lake, &unique_keys(&manifest)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_filter_is_rebuilt_from_sales_header() {
    let server = RedisServer::start();
    let config = server.bitmap();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 13, 2);
    run(&setup(&staging, &lake, config.clone())).await;

    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    let wh = Arc::new(Warehouse::open(&lake).await.expect("open"));
    let store = Arc::new(Dedup::open(&config, wh.root()).await.expect("store"));
    let added = poslake::ingest::commit::Committer::new(wh, store.clone()).rebuild().await.expect("rebuild");
    assert_eq!(added, report.unique_keys);
    let stats = store.stats().await.expect("stats");
    let estimated: f64 = stats.iter().map(|s| s.estimated_keys).sum();
    assert!((estimated / report.unique_keys as f64 - 1.0).abs() < 0.05, "estimated {estimated}");

    let again = dir.path().join("resent");
    resend(&staging, &manifest, &again, 2);
    let second = run(&setup(&again, &lake, config)).await;
    assert_eq!(second.new_transactions, 0, "the rebuilt filter knows every key");
    assert_exact(&lake, &unique_keys(&manifest)).await;
}

/// With the history expired (and manifests merged) as the run goes, a wiped Redis cannot be refilled from the
/// commits still in the history: the next start finds no history marker and reloads every row of `sales_header`, so
/// re-sends of files whose snapshots are long gone are still caught. A Redis that kept its data is not reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_filter_under_an_expired_history_is_reloaded_from_every_row() {
    let server = RedisServer::start();
    let config = server.bitmap();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 17, 3);
    let expiring = |staging: &Path| {
        let mut s = setup(staging, &lake, config.clone());
        s.policy.keep_snapshots = 2;
        s.policy.min_manifests_to_merge = 3;
        s
    };
    let first = run(&expiring(&staging)).await;
    assert_eq!(first.new_transactions, report.unique_keys);
    let wh = Warehouse::open(&lake).await.expect("open");
    let history = wh.history("sales_header").await.expect("history");
    assert!(history.truncated && history.snapshots.len() <= 2, "{} snapshots", history.snapshots.len());
    drop(wh);

    // Redis kept its data: nothing to reload.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert_eq!(run(&expiring(&empty)).await.recovery.keys_readded, 0);

    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    let again = dir.path().join("resent");
    let picked = resend(&staging, &manifest, &again, 2);
    let second = run(&expiring(&again)).await;
    assert_eq!(second.recovery.keys_readded, report.unique_keys, "every row's key, not only the kept commits'");
    assert_eq!(second.files, picked.len() as u64);
    assert_eq!(second.new_transactions, 0, "a re-send adds nothing");
    assert_exact(&lake, &unique_keys(&manifest)).await;
}

/// The file index in Redis is exact past its design capacity (buckets leave the compact encoding, nothing is
/// lost), keeps the bucket count it was created with, moves its ledger mark only forward, and forgets the mark when
/// the store's generation changes (a Redis that lost its data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_file_index_is_exact_and_its_mark_only_moves_forward() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = server.bitmap();
    let store = Arc::new(Dedup::open(&config, dir.path()).await.expect("open"));
    store.generation().await.expect("generation");
    // Sized for 1,000 files: 16 buckets; 5,000 files overflow them.
    let files = FileIndex::open(store.clone(), 1_000).await.expect("index");
    let ids: Vec<u128> = random_keys(10_000, 5).iter().map(|k| k.digest).collect();
    let (held, other) = ids.split_at(5_000);
    files.add(held.to_vec()).await.expect("add");
    files.add(held[..100].to_vec()).await.expect("add again");
    let found = files.contain(ids.clone()).await.expect("contain");
    assert!(found[..5_000].iter().all(|&f| f), "every added file is held");
    assert!(found[5_000..].iter().all(|&f| !f), "no other file is: {}", found[5_000..].iter().filter(|&&f| f).count());
    assert_eq!(other.len(), 5_000);
    let stats = files.stats().await.expect("stats").expect("a Redis index has stats");
    assert_eq!((stats.files, stats.buckets, stats.capacity, stats.synced_to), (5_000, 16, 1_600, None));

    assert!(files.finish_sync(Vec::new(), &sync_mark(&files, 11, 5).await).await.expect("mark"));
    assert_eq!(files.synced_to().await.expect("mark"), Some(11));
    // A worker that finishes an older sync later does not move the mark back.
    assert!(files.finish_sync(Vec::new(), &sync_mark(&files, -9, 3).await).await.expect("older mark"));
    assert_eq!(files.synced_to().await.expect("mark"), Some(11));
    assert!(files.finish_sync(Vec::new(), &sync_mark(&files, -12, 6).await).await.expect("later mark"));
    assert_eq!(files.synced_to().await.expect("mark"), Some(-12));

    // Another worker configured for more files uses the layout the index was created with.
    let other_worker = FileIndex::open(store.clone(), 1_000_000).await.expect("index");
    assert_eq!(other_worker.stats().await.expect("stats").expect("stats").buckets, 16);
    assert!(other_worker.contain(held[..10].to_vec()).await.expect("contain").iter().all(|&f| f));

    // Lookups carry what vouches for them: the mark, read after them, in the store's generation.
    let generation = store.generation().await.expect("generation");
    let (found, vouch) = files.contain_vouched(held[..10].to_vec()).await.expect("contain");
    assert!(found.iter().all(|&f| f));
    assert_eq!(vouch, Some(Vouch::Mark { generation: generation.clone(), sequence: 6 }));
    // Back without its last writes (the mark of sequence 6 and some files lost): an older mark vouches for less.
    let copy = server.copy_data();
    assert!(
        files.finish_sync(other[..10].to_vec(), &sync_mark(&files, 21, 9).await).await.expect("later files and mark")
    );
    assert_eq!(
        files.contain_vouched(other[..10].to_vec()).await.expect("contain").1,
        Some(Vouch::Mark { generation: generation.clone(), sequence: 9 })
    );
    let mut server = server;
    server.kill_and_restore(copy.path());
    server.restart();
    let (found, vouch) = files.contain_vouched(other[..10].to_vec()).await.expect("contain");
    assert!(found.iter().all(|&f| !f), "the later files are lost");
    assert_eq!(vouch, Some(Vouch::Mark { generation: generation.clone(), sequence: 6 }), "and the mark with them");
    // Flushed: nothing vouches for an answer, which reads every file as new.
    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    let (found, vouch) = files.contain_vouched(held[..10].to_vec()).await.expect("contain");
    assert!(found.iter().all(|&f| !f));
    assert_eq!(vouch, Some(Vouch::Nothing { generation: None }));
    files.add(held.to_vec()).await.expect("add");
    store.renew_generation().await.expect("renew");
    assert!(files.finish_sync(Vec::new(), &sync_mark(&files, 21, 9).await).await.expect("mark"));

    // A server back without a sync's adds before the sync's mark (restarted from a copy taken before them): the
    // mark is made on the restarted server, in the same generation, but the sync learns that a round trip failed
    // meanwhile and says the mark does not stand, so that its caller adds the files again first.
    let copy = server.copy_data();
    let late: Vec<u128> = random_keys(50, 77).iter().map(|k| k.digest).collect();
    let mark = sync_mark(&files, 30, 12).await;
    files.add(late.clone()).await.expect("add");
    server.kill_and_restore(copy.path());
    server.restart();
    assert!(!files.finish_sync(Vec::new(), &mark).await.expect("mark"), "a mark made across a restart does not stand");
    assert!(files.contain(late.clone()).await.expect("contain").iter().all(|&f| !f), "the adds were lost");
    let mark = sync_mark(&files, 30, 12).await;
    assert!(files.finish_sync(late.clone(), &mark).await.expect("the same files again"));
    assert!(files.contain(late).await.expect("contain").iter().all(|&f| f));

    // A store with a new generation (it lost its data) has no mark the index may trust.
    assert!(server.command(&["DEL", "poslake:{dedup}:generation"]).starts_with(":1"));
    let reopened = Arc::new(Dedup::open(&config, dir.path()).await.expect("open"));
    reopened.generation().await.expect("generation");
    let files = FileIndex::open(reopened, 1_000).await.expect("index");
    assert_eq!(files.synced_to().await.expect("mark"), None);
}

/// What a sync of the file index up to this ledger snapshot marks.
async fn sync_mark(files: &FileIndex, snapshot_id: i64, sequence: i64) -> SyncMark {
    files.start_sync(LedgerMark { snapshot_id, sequence }).await.expect("start a sync")
}

/// Workers that share a lake and Redis share the file index: a run skips the files earlier runs ingested, reading
/// only the ledger's new snapshots, and a Redis that lost everything is brought back from the whole ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_sharing_redis_skip_exactly_the_files_the_ledger_holds() {
    let server = RedisServer::start();
    let config = server.bitmap();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 21, 2);
    let first = run(&setup(&staging, &lake, config.clone())).await;
    assert_eq!((first.already_ingested, first.files), (0, report.files));

    let index = |config: DedupConfig| {
        let lake = lake.clone();
        async move {
            let store = Arc::new(Dedup::open(&config, &lake).await.expect("open"));
            store.generation().await.expect("generation");
            let files = FileIndex::open(store, config.expected_files).await.expect("index");
            files.stats().await.expect("stats").expect("a Redis index has stats")
        }
    };
    // The index is brought up to date at the start of a run: the second run's start holds the first run's files.
    let picked = resend(&staging, &manifest, &staging.join("resent"), 3);
    let second = run(&setup(&staging, &lake, config.clone())).await;
    assert_eq!(
        (second.already_ingested, second.files, second.new_transactions),
        (report.files, picked.len() as u64, 0)
    );
    let stats = index(config.clone()).await;
    assert_eq!(stats.files, report.files, "the first run's files, added at the second run's start");
    assert!(stats.synced_to.is_some());

    let wh = Warehouse::open(&lake).await.expect("open");
    let ledger_rows = wh.row_count("file_ledger").await.expect("count");
    assert_eq!(ledger_rows, report.files + picked.len() as u64);
    drop(wh);
    let third = run(&setup(&staging, &lake, config.clone())).await;
    assert_eq!((third.already_ingested, third.files), (ledger_rows, 0));
    assert_eq!(index(config.clone()).await.files, ledger_rows);

    // Redis lost everything: the keys come back from the commits, the file index from the whole ledger.
    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    let fourth = run(&setup(&staging, &lake, config.clone())).await;
    assert_eq!((fourth.already_ingested, fourth.files, fourth.new_transactions), (ledger_rows, 0, 0));
    assert_eq!(index(config).await.files, ledger_rows);
    assert_exact(&lake, &unique_keys(&manifest)).await;
}

/// Checks each chunk and adds the keys found new, as the ingest does; returns those keys.
async fn check_then_add(store: &Dedup, keys: &[DedupKey]) -> Vec<DedupKey> {
    let mut added = Vec::new();
    for chunk in keys.chunks(500) {
        let seen = store.contains(chunk).await.expect("contains");
        let new: Vec<DedupKey> = chunk.iter().zip(seen).filter(|(_, s)| !s).map(|(k, _)| *k).collect();
        store.add(&new).await.expect("add");
        added.extend(new);
    }
    added
}

/// An add sets only the bits its check did not see set. On a filter filled to its capacity (where most keys share
/// bits with earlier ones) every added key is still found by another process, which remembers nothing; and after
/// the store lost its state between a check and its add, the add sets every bit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_that_skip_bits_seen_set_leave_every_key_present() {
    let server = RedisServer::start();
    let config = DedupConfig { expected_keys_per_period: 20_000, ..server.bitmap() };
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Dedup::open(&config, dir.path()).await.expect("store");
    let added = check_then_add(&worker, &random_keys(20_000, 1)).await;
    assert!(added.len() > 19_000, "a filter at capacity still takes most keys as new: {}", added.len());
    let other = Dedup::open(&config, dir.path()).await.expect("second store");
    let found = other.contains(&added).await.expect("contains");
    assert_eq!(found.iter().filter(|f| !**f).count(), 0, "every added key is present");

    // Checked (bits seen set), then the store is wiped before the add: the add must not trust what it saw.
    let keys = random_keys(5_000, 2);
    let seen = worker.contains(&keys).await.expect("contains");
    let new: Vec<DedupKey> = keys.iter().zip(seen).filter(|(_, s)| !s).map(|(k, _)| *k).collect();
    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    let lost = worker.contains(&keys[..10]).await;
    assert!(matches!(lost, Err(DedupError::StateLost { .. })), "the wipe is noticed: {lost:?}");
    worker.renew_generation().await.expect("renew");
    worker.add(&new).await.expect("add after the wipe");
    let fresh = Dedup::open(&config, dir.path()).await.expect("third store");
    let found = fresh.contains(&new).await.expect("contains");
    assert_eq!(found.iter().filter(|f| !**f).count(), 0, "every key added after the wipe is present");
}

/// Keys checked as new long before their commit are checked again: those another process added meanwhile (a
/// reconcile whose fence has expired, another worker) are counted, so that the commit stops instead of landing them
/// twice. A recent check costs no round trip, and the embedded store, which no other process shares, never asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_checked_long_ago_are_checked_again_before_their_commit() {
    use std::time::{Duration, Instant};
    let server = RedisServer::start();
    let config = DedupConfig { expected_keys_per_period: 100_000, ..server.bitmap() };
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Dedup::open(&config, dir.path()).await.expect("store");
    let keys = random_keys(2_000, 3);
    let checked = Instant::now();
    let seen = worker.contains(&keys).await.expect("contains");
    assert_eq!(seen.iter().filter(|s| **s).count(), 0, "all new at the check");
    let other = Dedup::open(&config, dir.path()).await.expect("second store");
    other.add(&keys[..700]).await.expect("another process adds some");

    let counted = worker.added_since(&keys, checked, Duration::ZERO).await.expect("recheck");
    // 700 added, and possibly a false positive or two among the other 1,300 (0.1% by design).
    assert!((700..=705).contains(&counted), "{counted}");
    let fresh = worker.added_since(&keys, checked, Duration::from_secs(3_600)).await.expect("recent");
    assert_eq!(fresh, 0, "a check younger than the limit is trusted");
    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    assert!(worker.added_since(&keys, checked, Duration::from_secs(3_600)).await.is_ok(), "no round trip");

    let embedded = Dedup::open(&DedupConfig::default(), &dir.path().join("embedded")).await.expect("embedded");
    embedded.add(&keys).await.expect("add");
    assert_eq!(embedded.added_since(&keys, checked, Duration::ZERO).await.expect("embedded"), 0);
}

/// A pooled connection in steady use goes back out without a round trip to check it (deadpool-redis's manager sent
/// `UNWATCH` and `PING` on every checkout: one extra round trip per pipeline); one that has idled past a few seconds
/// is pinged first, so that a connection a server or proxy closed in a quiet spell is replaced before it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_pinged_only_after_idling() {
    let server = RedisServer::start();
    let config = DedupConfig { expected_keys_per_period: 100_000, ..server.bitmap() };
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Dedup::open(&config, dir.path()).await.expect("store");
    let pings = || {
        let stats = server.command(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
            .map_or(0, |rest| rest.split(',').next().and_then(|n| n.parse::<u64>().ok()).expect("calls"))
    };
    let keys = random_keys(5_000, 4);
    let before = pings();
    for chunk in keys.chunks(250) {
        worker.contains(chunk).await.expect("contains");
    }
    assert_eq!(pings(), before, "20 checks in a row, and no PING among them");

    tokio::time::sleep(Duration::from_secs(6)).await;
    worker.contains(&keys[..10]).await.expect("contains after a quiet spell");
    assert!(pings() > before, "a connection idle for 6 s is pinged before it is used again");
}

/// The `redis-bloom` tests need a server with the `BF.*` commands (Redis 8, Redis Stack, valkey-bloom), which
/// Debian's redis-server lacks: run them with `POSLAKE_TEST_REDIS_BLOOM_URL=redis://…` (scripts/test then includes
/// them). Each works under a key prefix of its own and deletes nothing else, so the server may be a shared one.
fn bloom_config() -> DedupConfig {
    let url = std::env::var("POSLAKE_TEST_REDIS_BLOOM_URL").expect("POSLAKE_TEST_REDIS_BLOOM_URL");
    DedupConfig {
        backend: DedupBackend::RedisBloom,
        redis_url: url,
        key_prefix: format!("poslake-test-{}", uuid::Uuid::new_v4()),
        expected_keys_per_period: 100_000,
        ..DedupConfig::default()
    }
}

/// One command to the `redis-bloom` tests' server, its answer as a `redis` value.
async fn bloom_command(config: &DedupConfig, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(config.redis_url.as_str()).expect("Redis URL");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.expect("command")
}

/// `BF.INFO`'s numeric fields, by name.
async fn bloom_info(config: &DedupConfig, key: &str) -> std::collections::HashMap<String, i64> {
    let redis::Value::Array(info) = bloom_command(config, &["BF.INFO", key]).await else { panic!("BF.INFO {key}") };
    info.chunks(2)
        .filter_map(|pair| match pair {
            [redis::Value::SimpleString(k), redis::Value::Int(v)] => Some((k.clone(), *v)),
            [redis::Value::BulkString(k), redis::Value::Int(v)] => Some((String::from_utf8_lossy(k).into_owned(), *v)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis with BF.* commands: set POSLAKE_TEST_REDIS_BLOOM_URL"]
async fn redis_bloom_lands_exact_keys() {
    let config = bloom_config();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 17, 3);
    let summary = run(&setup(&staging, &lake, config.clone())).await;
    assert!(summary.dedup.starts_with("redis-bloom"), "{}", summary.dedup);
    assert_eq!(summary.new_transactions, report.unique_keys);
    let want = unique_keys(&manifest);
    assert_exact(&lake, &want).await;
    let again = dir.path().join("resent");
    resend(&staging, &manifest, &again, 3);
    let second = run(&setup(&again, &lake, config.clone())).await;
    assert_eq!(second.new_transactions, 0);
    assert_exact(&lake, &want).await;

    // `redis` picks the BF.* store by itself on such a server.
    let auto = DedupConfig { backend: DedupBackend::Redis, ..config };
    let third = run(&setup(&again, &lake, auto)).await;
    assert!(third.dedup.starts_with("redis-bloom"), "{}", third.dedup);
    assert_eq!(third.new_transactions, 0);
}

/// A non-scaling `BF.*` filter refuses new items once it holds its capacity. A period past its design capacity goes
/// on in further filters, each twice as large (until session 26 the first refusal failed the commit, and every run
/// after it): nothing is lost, probable duplicates go to the quarantine, and `reconcile` promotes the false
/// positives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis with BF.* commands: set POSLAKE_TEST_REDIS_BLOOM_URL"]
async fn redis_bloom_filters_past_their_capacity_lose_nothing_and_reconcile_promotes_their_false_positives() {
    // 20 keys at 20% in the first filter: commits of 8 files overflow into further ones, and later checks meet them.
    let tiny = DedupConfig { expected_keys_per_period: 20, false_positive_rate: 0.2, ..bloom_config() };
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 5, 2);
    lands_or_quarantines_then_reconciles(&staging, &lake, &tiny, &report, &manifest).await;

    let label = "2026-01";
    let count = bloom_command(&tiny, &["HGET", &format!("{}:dedup:bloom-filters", tiny.key_prefix), label]).await;
    let filters: u32 = redis::from_redis_value(count).expect("a filter count");
    assert!(filters > 2, "{filters} filters");
    // Each further filter holds twice the keys of the one before.
    let newest = bloom_info(&tiny, &format!("{}:bfm:{{{label}}}:{filters}", tiny.key_prefix)).await;
    assert_eq!(newest.get("Capacity"), Some(&(20 << (filters - 1))), "{newest:?}");
    let store = Dedup::open(&tiny, dir.path()).await.expect("store");
    let stats = store.stats().await.expect("stats");
    assert!(stats.iter().all(|s| s.over_capacity && s.fp_now > 0.2), "{stats:?}");
    let held: u64 = stats.iter().map(|s| s.adds).sum();
    let full = 20 * ((1u64 << (filters - 1)) - 1);
    assert!(held >= full, "the full filters hold their capacity ({full}): {held}");
    let again = poslake::ingest::reconcile::reconcile(&lake, None, &tiny).await.expect("reconcile again");
    assert_eq!(again.promoted, 0);
}

/// Filters lost from Redis are made again in the configured shape when the lake's keys are added back, not in the
/// module's default one (`BF.MADD` on a missing key makes a small scaling filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis with BF.* commands: set POSLAKE_TEST_REDIS_BLOOM_URL"]
async fn redis_bloom_filters_lost_are_made_again_in_their_configured_shape() {
    let config = DedupConfig { expected_keys_per_period: 5_000, false_positive_rate: 0.01, ..bloom_config() };
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 13, 2);
    run(&setup(&staging, &lake, config.clone())).await;
    let key = format!("{}:bfm:{{2026-01}}", config.key_prefix);
    assert_eq!(bloom_info(&config, &key).await.get("Capacity"), Some(&5_000));

    // A store that has made its filter once, and then loses it (a wipe of this store's keys alone: the server may
    // be shared), adds the lake's keys back.
    let wh = Arc::new(Warehouse::open(&lake).await.expect("open"));
    let store = Arc::new(Dedup::open(&config, wh.root()).await.expect("store"));
    let committer = poslake::ingest::commit::Committer::new(wh, store.clone());
    assert_eq!(committer.rebuild().await.expect("rebuild"), report.unique_keys);
    let redis::Value::Array(keys) = bloom_command(&config, &["KEYS", &format!("{}:*", config.key_prefix)]).await else {
        panic!("KEYS")
    };
    for k in keys {
        let k: String = redis::from_redis_value(k).expect("key name");
        bloom_command(&config, &["DEL", &k]).await;
    }
    // As an ingest heals (`StateLost`): a new generation, then every key again.
    assert!(matches!(
        committer.rebuild().await,
        Err(poslake::ingest::IngestError::Dedup(DedupError::StateLost { .. }))
    ));
    store.renew_generation().await.expect("new generation");
    let added = committer.rebuild().await.expect("rebuild");
    assert_eq!(added, report.unique_keys);
    let info = bloom_info(&config, &key).await;
    assert_eq!(info.get("Capacity"), Some(&5_000), "{info:?}");
    assert_eq!(info.get("Number of filters"), Some(&1), "{info:?}");
    // An item the filter already claims (a false positive, 1% at most here) is not inserted again.
    let items = info.get("Number of items inserted").copied().unwrap_or(0) as u64;
    assert!(items <= report.unique_keys && items * 100 >= report.unique_keys * 99, "{items} of {}", report.unique_keys);
    drop(store);

    let again = dir.path().join("resent");
    resend(&staging, &manifest, &again, 2);
    let second = run(&setup(&again, &lake, config)).await;
    assert_eq!(second.new_transactions, 0, "the rebuilt filter knows every key");
    assert_exact(&lake, &unique_keys(&manifest)).await;
}

/// The hash slot of a key, by the server's own count.
fn key_slot(node: &RedisServer, key: &str) -> u64 {
    node.integer(&["CLUSTER", "KEYSLOT", key])
}

/// The primary that serves `slot` in a cluster whose primaries split the slots evenly (see [`redis_cluster`]).
fn serving(primaries: usize, slot: u64) -> usize {
    (0..primaries).find(|&i| (slot as usize) < 16_384 * (i + 1) / primaries).expect("a primary")
}

fn keys_held(node: &RedisServer) -> u64 {
    node.integer(&["DBSIZE"])
}

/// `n` random keys over `days` consecutive business dates (from 2026-11-01), a period each with `DedupPeriod::Day`.
fn keys_over_days(n: u64, seed: u64, days: u64) -> Vec<DedupKey> {
    let first = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("date");
    random_keys(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, k)| DedupKey { date: first + chrono::Days::new(i as u64 % days), ..k })
        .collect()
}

/// The primary (of `primaries` splitting the slots evenly) that serves a key's period with `DedupPeriod::Day`.
fn period_home(node: &RedisServer, primaries: usize, key: &DedupKey) -> usize {
    serving(primaries, key_slot(node, &key.date.format("%Y-%m-%d").to_string()))
}

/// A node of a Redis Cluster whose slots several primaries share is used through a cluster connection. With a hash
/// tag in the key prefix every key lands in the tag's slot, on the primary that serves it, even when the URL names
/// another node (redirects are followed). Without one, each period's keys go to the period's own slot, spread over
/// the primaries (refused until session 29). A one-node cluster is one endpoint, and works whatever the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_holds_poslakes_keys_in_one_slot_with_a_hash_tag_and_spreads_its_periods_without() {
    let nodes = common::redis::cluster(2, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    // No hash tag: spread by period, through either node, with either backend setting.
    let keys = keys_over_days(2_000, 9, 20);
    let homes: BTreeSet<usize> = keys.iter().map(|k| period_home(&nodes[0], 2, k)).collect();
    assert_eq!(homes.len(), 2, "20 periods fall on both primaries");
    for (backend, via) in [(DedupBackend::RedisBitmap, &nodes[0]), (DedupBackend::Redis, &nodes[1])] {
        let config = DedupConfig {
            backend,
            period: DedupPeriod::Day,
            key_prefix: format!("spread-{via}", via = via.port),
            ..via.bitmap()
        };
        let store = Dedup::open(&config, dir.path()).await.expect("a cluster without a hash tag");
        assert!(store.describe().starts_with("redis-bitmap"), "{}", store.describe());
        let held_before: Vec<u64> = nodes.iter().map(keys_held).collect();
        assert_eq!(check_then_add(&store, &keys).await.len(), keys.len());
        assert!(store.contains(&keys).await.expect("check").iter().all(|s| *s));
        let stats = store.stats().await.expect("stats");
        assert_eq!(stats.len(), 20, "one partition per day");
        assert_eq!(stats.iter().map(|s| s.adds).sum::<u64>(), keys.len() as u64);
        // Each partition names the primary that serves it: the one its key slot says.
        for s in &stats {
            let date = chrono::NaiveDate::parse_from_str(&s.partition, "%Y-%m-%d").expect("a day");
            let home = period_home(&nodes[0], 2, &DedupKey { digest: 0, date });
            assert_eq!(s.primary.as_deref(), Some(format!("127.0.0.1:{}", nodes[home].port).as_str()));
        }
        for (node, before) in nodes.iter().zip(held_before) {
            assert!(keys_held(node) > before, "both primaries hold periods");
        }
        store.mark_applied(&["run/w/1".to_owned()], Holding::Keys(&keys)).await.expect("mark");
        let marked = store.applied(&["run/w/1".to_owned(), "run/w/2".to_owned()]).await.expect("applied");
        assert_eq!(marked, [true, false]);
        // Another process, which never touched these periods, finds every key.
        let other = Dedup::open(&config, dir.path()).await.expect("reopen");
        assert!(other.contains(&keys).await.expect("check").iter().all(|s| *s));
        assert!(other.contains(&keys_over_days(500, 10, 20)).await.expect("check").iter().all(|s| !s));
    }
    let leases = poslake::ingest::slot_leases::SlotLeases::join(&nodes[0].bitmap(), Duration::from_secs(3), None)
        .await
        .expect("slot leases keep to their own hash tag");
    // Gone before the flush below, so that no heartbeat writes after it.
    leases.leave().await.expect("leave");
    drop(leases);

    // With a hash tag, through the node that does not serve the tag's slot.
    let slot = key_slot(&nodes[0], "poslake");
    let (home, other) = match serving(2, slot) {
        0 => (&nodes[0], &nodes[1]),
        _ => (&nodes[1], &nodes[0]),
    };
    assert!(home.command(&["FLUSHALL"]).starts_with("+OK") && other.command(&["FLUSHALL"]).starts_with("+OK"));
    let tagged = DedupConfig { key_prefix: "{poslake}".into(), period: DedupPeriod::Day, ..other.bitmap() };
    let store = Dedup::open(&tagged, dir.path()).await.expect("a cluster with a hash-tagged prefix");
    assert_eq!(check_then_add(&store, &keys).await.len(), keys.len());
    assert!(store.contains(&keys).await.expect("check").iter().all(|s| *s));
    let stats = store.stats().await.expect("stats");
    assert!(stats.iter().map(|s| s.adds).sum::<u64>() == keys.len() as u64);
    assert!(stats.iter().all(|s| s.primary.is_none()), "in one slot, partitions name no primary");
    assert!(keys_held(home) > 0, "the keys are on the primary that serves slot {slot}");
    assert_eq!(keys_held(other), 0, "and none on the node the URL names");
    let leases = poslake::ingest::slot_leases::SlotLeases::join(&tagged, Duration::from_secs(3), None).await;
    assert!(leases.is_ok(), "slot leases work there too: {:?}", leases.err());

    let whole = RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
    assert!(whole.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]).starts_with("+OK"));
    let started = std::time::Instant::now();
    while !whole.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
        assert!(started.elapsed() < Duration::from_secs(20), "the one-node cluster never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let store = Dedup::open(&whole.bitmap(), dir.path()).await.expect("a cluster of one node is one endpoint");
    let keys = random_keys(1_000, 9);
    assert_eq!(check_then_add(&store, &keys).await.len(), keys.len());
    assert!(store.contains(&keys).await.expect("check").iter().all(|s| *s));
}

/// Spread by period, one primary loses its periods' state (flushed: a restart without persistence) while the
/// others keep theirs. No process takes those periods' keys for new: not one that checked them before, nor one that
/// never touched them; their commits read as not applied. The first to heal gives the store a new generation, which
/// every other process then notices, even at a check of a period that kept its state. Losing the shared slot's
/// state (the store's generation and the commits' period lists) is noticed at the next mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_that_lost_its_state_on_a_spread_cluster_is_noticed_by_every_process() {
    let nodes = common::redis::cluster(2, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = DedupConfig { period: DedupPeriod::Day, ..nodes[0].bitmap() };
    let shared = serving(2, key_slot(&nodes[0], "dedup"));
    let victim = 1 - shared;
    let keys = keys_over_days(2_000, 21, 20);
    let (lost, kept): (Vec<DedupKey>, Vec<DedupKey>) =
        keys.iter().partition(|k| period_home(&nodes[0], 2, k) == victim);
    assert!(!lost.is_empty() && !kept.is_empty(), "periods on both primaries");
    let stale = |r: Result<Vec<bool>, DedupError>| matches!(r, Err(DedupError::StateLost { .. }));

    let a = Dedup::open(&config, dir.path()).await.expect("open");
    let c = Dedup::open(&config, dir.path()).await.expect("open");
    let first = a.generation().await.expect("generation");
    assert_eq!(check_then_add(&a, &keys).await.len(), keys.len());
    let ids = ["run/a/1".to_owned()];
    a.mark_applied(&ids, Holding::Keys(&keys)).await.expect("mark");
    assert_eq!(a.applied(&ids).await.expect("applied"), [true]);

    assert!(nodes[victim].command(&["FLUSHALL"]).starts_with("+OK"));
    assert!(stale(c.contains(&lost).await), "a process that never touched the lost periods does not take them as new");
    assert!(stale(a.contains(&lost).await), "nor one that did");
    assert_eq!(a.applied(&ids).await.expect("applied"), [false], "the commit's mark is gone from some periods");
    assert!(a.contains(&kept).await.expect("check").iter().all(|s| *s), "the other periods kept their keys");

    // A heals: a new store generation, then its keys again.
    assert!(matches!(a.generation().await, Err(DedupError::StateLost { .. })));
    let renewed = a.renew_generation().await.expect("renew");
    assert_ne!(renewed, first, "a period lost its state: the store takes a new generation");
    assert!(stale(c.contains(&kept).await), "so every other process notices, wherever it checks");
    a.add(&keys).await.expect("re-add");
    a.mark_applied(&ids, Holding::Keys(&keys)).await.expect("mark");
    assert_eq!(a.applied(&ids).await.expect("applied"), [true]);
    assert_eq!(c.renew_generation().await.expect("renew"), renewed, "an unharmed store: the same generation");
    assert!(c.contains(&keys).await.expect("check").iter().all(|s| *s));

    // The shared slot loses its state: the commits' period lists go with it, and the next mark is refused.
    assert!(nodes[shared].command(&["FLUSHALL"]).starts_with("+OK"));
    assert_eq!(a.applied(&ids).await.expect("applied"), [false]);
    let refused = a.mark_applied(&["run/a/2".to_owned()], Holding::Keys(&kept)).await;
    assert!(matches!(refused, Err(DedupError::StateLost { .. })), "{refused:?}");
    // A new process adopts a new generation and stamps the periods that kept their state (the victim's, this time:
    // the shared slot's primary held the others) as it meets them.
    let d = Dedup::open(&config, dir.path()).await.expect("open");
    assert!(d.contains(&lost).await.expect("check").iter().all(|s| *s));
    assert!(stale(c.contains(&lost).await), "the old generation is gone for every process");
}

/// An ingest spread by period over a Redis Cluster of three primaries (no hash tag, a period a day): one primary
/// holding periods but not the shared slot loses its state mid-run, and the run goes on, every key once. Between
/// runs the same primary, then the shared slot's, lose their state: re-sends are still caught, the lost keys
/// re-added from the commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_spread_by_period_over_a_redis_cluster_survives_primaries_losing_their_state() {
    let mut nodes = common::redis::cluster(3, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, manifest) = nine_days(dir.path(), 23);
    let want = unique_keys(&manifest);
    let day = |key: &str| key.split('|').nth(1).expect("date").to_owned();
    let shared = serving(3, key_slot(&nodes[0], "dedup"));
    let homes: BTreeSet<usize> = want.iter().map(|k| serving(3, key_slot(&nodes[0], &day(k)))).collect();
    let victim = *homes.iter().find(|&&h| h != shared).expect("a primary holding periods, not the shared slot");
    let config = DedupConfig { period: DedupPeriod::Day, ..nodes[0].bitmap() };

    let node = Arc::new(Mutex::new(nodes.remove(victim)));
    let (result, at) =
        ingest_with_outage(&setup(&staging, &lake_of(dir.path()), config.clone()), node.clone(), 12, |s| {
            assert!(s.command(&["FLUSHALL"]).starts_with("+OK"));
        })
        .await;
    let summary = result.expect("the run survives a primary losing its state");
    assert!(at < report.files, "the loss came mid-run ({at} of {} files)", report.files);
    assert_eq!(summary.files, report.files);
    assert_exact(&lake_of(dir.path()), &want).await;
    assert!(keys_held(&node.lock().expect("node")) > 0, "the victim holds periods again");

    let again = dir.path().join("resent");
    resend(&staging, &manifest, &again, 3);
    assert!(node.lock().expect("node").command(&["FLUSHALL"]).starts_with("+OK"));
    let second = run(&setup(&again, &lake_of(dir.path()), config.clone())).await;
    assert_eq!(second.new_transactions, 0, "re-sends are caught after a primary lost its periods");
    assert!(second.recovery.keys_readded > 0, "the lost keys came back from the commits: {:?}", second.recovery);
    assert_exact(&lake_of(dir.path()), &want).await;

    let shared_node = if shared > victim { &nodes[shared - 1] } else { &nodes[shared] };
    assert!(shared_node.command(&["FLUSHALL"]).starts_with("+OK"));
    let third = run(&setup(&again, &lake_of(dir.path()), config)).await;
    assert_eq!(third.new_transactions, 0, "and after the shared slot lost its state");
    assert_exact(&lake_of(dir.path()), &want).await;
}

/// Spread by period over three primaries with a replica each, the primary that holds the most periods (not the
/// shared slot's) is killed mid-ingest: its replica takes over, the run goes on, every key lands once, and re-sends
/// afterwards are caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_spread_by_period_through_a_failover_loses_and_duplicates_nothing() {
    let mut nodes = common::redis::cluster(3, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, manifest) = nine_days(dir.path(), 29);
    let want = unique_keys(&manifest);
    let shared = serving(3, key_slot(&nodes[0], "dedup"));
    let mut periods = [0usize; 3];
    let days: BTreeSet<String> = want.iter().map(|k| k.split('|').nth(1).expect("date").to_owned()).collect();
    for day in &days {
        periods[serving(3, key_slot(&nodes[0], day))] += 1;
    }
    let victim = (0..3).filter(|&i| i != shared).max_by_key(|&i| periods[i]).expect("a primary");
    assert!(periods[victim] > 0, "the victim holds periods");
    let url = nodes[shared].url();
    let replica = nodes.remove(victim + 3);
    let config = DedupConfig { period: DedupPeriod::Day, redis_url: url, ..replica.bitmap() };
    let primary = Arc::new(Mutex::new(nodes.remove(victim)));
    let (result, at) =
        ingest_with_outage(&setup(&staging, &lake_of(dir.path()), config.clone()), primary, 12, |s| s.kill_and_wipe())
            .await;
    let summary = result.expect("the run survives the failover");
    assert!(at < report.files, "the failover began mid-run ({at} of {} files)", report.files);
    assert_eq!(summary.files, report.files);
    assert!(replica.command(&["ROLE"]).contains("master"), "the replica took over");
    assert!(keys_held(&replica) > 0);
    assert_exact(&lake_of(dir.path()), &want).await;

    let again = dir.path().join("resent");
    resend(&staging, &manifest, &again, 3);
    let second = run(&setup(&again, &lake_of(dir.path()), config)).await;
    assert_eq!(second.new_transactions, 0, "the new primary's periods know every key");
    assert!(second.quarantined_transactions > 0);
    assert_exact(&lake_of(dir.path()), &want).await;
}

/// File-index keys a node holds (bucket hashes and group marks).
fn file_index_keys(node: &RedisServer, prefix: &str) -> u64 {
    let pattern = format!("{prefix}:{{files:*");
    node.integer(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", &pattern])
}

/// Spread by period over a Redis Cluster, the file index spreads too: its buckets fall in groups of their own hash
/// tag, on every primary, each group with its own mark beside its buckets. A primary that loses its data loses its
/// groups' files with their marks: lookups there are no longer vouched for (those elsewhere still are), the index
/// reads as not brought up to any snapshot, and the next ingest reads the ledger into it again and skips every file
/// the ledger holds. Until session 30 the whole index sat in the shared slot, on one primary (about 39 GB for two
/// billion files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_index_spreads_over_a_clusters_primaries_and_a_primary_that_lost_its_files_is_read_again() {
    let nodes = common::redis::cluster(3, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = serving(3, key_slot(&nodes[0], "dedup"));
    let victim = (shared + 1) % 3;
    let config = DedupConfig { period: DedupPeriod::Day, key_prefix: "files-test".into(), ..nodes[0].bitmap() };
    let store = Arc::new(Dedup::open(&config, dir.path()).await.expect("open"));
    let generation = store.generation().await.expect("generation");
    // Sized for 100,000 files: 1,024 buckets in 64 groups (a file's group: the low 6 bits of its id).
    let files = FileIndex::open(store.clone(), 100_000).await.expect("index");
    let ids: Vec<u128> = random_keys(6_000, 31).iter().map(|k| k.digest).collect();
    let (held, other) = ids.split_at(5_000);
    assert!(files.finish_sync(held.to_vec(), &sync_mark(&files, 3, 2).await).await.expect("add"));
    for node in &nodes {
        assert!(file_index_keys(node, "files-test") > 0, "every primary holds groups of the index");
    }
    let (found, vouch) = files.contain_vouched(ids.clone()).await.expect("lookup");
    assert!(found[..5_000].iter().all(|&f| f) && found[5_000..].iter().all(|&f| !f));
    assert_eq!(other.len(), 1_000);
    assert_eq!(vouch, Some(Vouch::Mark { generation: generation.clone(), sequence: 2 }));
    assert_eq!(files.synced_to().await.expect("mark"), Some(3));
    let stats = files.stats().await.expect("stats").expect("a Redis index has stats");
    assert_eq!((stats.files, stats.buckets, stats.groups, stats.groups_unmarked), (5_000, 1_024, 64, 0));

    let on_victim = |id: &u128| serving(3, key_slot(&nodes[0], &format!("files:{:x}", *id as u64 & 63))) == victim;
    let (lost, kept): (Vec<u128>, Vec<u128>) = held.iter().partition(|id| on_victim(id));
    assert!(!lost.is_empty() && !kept.is_empty());
    assert!(nodes[victim].command(&["FLUSHALL"]).starts_with("+OK"));
    let (found, vouch) = files.contain_vouched(lost.clone()).await.expect("lookup");
    assert!(found.iter().all(|&f| !f), "the victim's files are gone");
    assert_eq!(vouch, Some(Vouch::Nothing { generation: Some(generation.clone()) }), "and their groups' marks");
    let (found, vouch) = files.contain_vouched(kept.clone()).await.expect("lookup");
    assert!(found.iter().all(|&f| f), "the other primaries' groups kept theirs");
    assert_eq!(vouch, Some(Vouch::Mark { generation: generation.clone(), sequence: 2 }));
    assert_eq!(
        files.contain_vouched(held.to_vec()).await.expect("lookup").1,
        Some(Vouch::Nothing { generation: Some(generation.clone()) })
    );
    assert_eq!(files.synced_to().await.expect("mark"), None, "the index holds no snapshot whole");
    let on_victim_groups = (0..64u128).filter(on_victim).count() as u64;
    let stats = files.stats().await.expect("stats").expect("stats");
    assert_eq!(stats.groups_unmarked, on_victim_groups, "`dedup stats` counts the groups that lost their mark");
    assert!(files.finish_sync(held.to_vec(), &sync_mark(&files, 4, 3).await).await.expect("add again"));
    let (found, vouch) = files.contain_vouched(held.to_vec()).await.expect("lookup");
    assert!(found.iter().all(|&f| f));
    assert_eq!(vouch, Some(Vouch::Mark { generation: generation.clone(), sequence: 3 }));

    // A primary flushed while a sync adds (no round trip fails: a flush is a command, not a restart): the sync's
    // tickets there went with its adds, so its marks do not stand, and the sync adds its files again.
    let mark = sync_mark(&files, 5, 4).await;
    files.add(other.to_vec()).await.expect("add");
    assert!(nodes[victim].command(&["FLUSHALL"]).starts_with("+OK"));
    assert!(!files.finish_sync(Vec::new(), &mark).await.expect("mark"), "a mark over lost adds does not stand");
    let mark = sync_mark(&files, 5, 4).await;
    assert!(files.finish_sync(ids.clone(), &mark).await.expect("the same files again"));
    let (found, vouch) = files.contain_vouched(ids.clone()).await.expect("lookup");
    assert!(found.iter().all(|&f| f));
    assert_eq!(vouch, Some(Vouch::Mark { generation: generation.clone(), sequence: 4 }));

    // An ingest: the first run lands the corpus; the victim loses its data; the second run skips every file.
    let (staging, report, manifest) = nine_days(dir.path(), 37);
    let config = DedupConfig { key_prefix: "files-ingest".into(), ..config };
    let first = run(&setup(&staging, &lake_of(dir.path()), config.clone())).await;
    assert_eq!(first.files, report.files);
    // The second run's start brings the index up to the first run's ledger.
    let second = run(&setup(&staging, &lake_of(dir.path()), config.clone())).await;
    assert_eq!((second.already_ingested, second.files), (report.files, 0));
    assert!(file_index_keys(&nodes[victim], "files-ingest") > 0);
    assert!(nodes[victim].command(&["FLUSHALL"]).starts_with("+OK"));
    let third = run(&setup(&staging, &lake_of(dir.path()), config.clone())).await;
    assert_eq!(
        (third.already_ingested, third.files, third.new_transactions),
        (report.files, 0, 0),
        "every file the ledger holds is skipped after a primary lost its groups"
    );
    // The victim's flush lost periods too, so the store took a new generation, which alone makes every group's
    // mark stale. A loss of the victim's file groups alone leaves the generation as it was: their missing marks must
    // tell.
    assert!(nodes[victim].integer(&["EVAL", DELETE_FILE_KEYS, "0", "files-ingest:{files:*"]) > 0);
    let fourth = run(&setup(&staging, &lake_of(dir.path()), config)).await;
    assert_eq!(
        (fourth.already_ingested, fourth.files, fourth.recovery.keys_readded),
        (report.files, 0, 0),
        "after a loss of file groups alone"
    );
    let wh = Warehouse::open(&lake_of(dir.path())).await.expect("open");
    assert_eq!(wh.row_count("file_ledger").await.expect("count"), report.files, "one ledger row a file");
    drop(wh);
    assert_exact(&lake_of(dir.path()), &unique_keys(&manifest)).await;
}

/// Deletes a node's keys that match `ARGV[1]`; returns how many.
const DELETE_FILE_KEYS: &str = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) \
                                n = n + 1 end return n";

/// A corpus over 9 business days (9 periods of a day), with re-sent files and repeated transactions planted.
fn nine_days(dir: &Path, seed: u64) -> (PathBuf, GenerateReport, Vec<ManifestEntry>) {
    generated(GenerateArgs {
        out: dir.join("staging"),
        seed,
        sites: 4,
        days: 9,
        files_per_day: 2,
        min_transactions: 10,
        max_transactions: 20,
        duplicate_file_rate: 0.15,
        duplicate_transaction_rate: 0.05,
        ..GenerateArgs::default()
    })
}

fn lake_of(dir: &Path) -> PathBuf {
    dir.join("lake")
}

/// An ingest against a Redis Cluster of three primaries with a replica each, whose primary for poslake's slot (the
/// one the URL names) is killed mid-run: its replica takes over, the run pauses and goes on, and every key lands
/// once; re-sends afterwards are caught, through another node's URL. (A replica that takes over without the last
/// writes is the case of `a_redis_back_without_its_last_writes_…`: on loopback a replica has every write its primary
/// sent before it died, even frozen, since the kernel's socket buffers hold them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_through_a_redis_cluster_failover_loses_and_duplicates_nothing() {
    let mut nodes = common::redis::cluster(3, 1);
    let slot = key_slot(&nodes[0], "poslake");
    let home = serving(3, slot);
    let replica = nodes.remove(home + 3);
    let config = DedupConfig { key_prefix: "{poslake}".into(), ..nodes[home].bitmap() };
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let (staging, report, manifest) = corpus(dir.path(), 17, 8);
    let primary = Arc::new(Mutex::new(nodes.remove(home)));
    let (result, at) =
        ingest_with_outage(&setup(&staging, &lake, config.clone()), primary.clone(), 12, |s| s.kill_and_wipe()).await;
    let summary = result.expect("the run survives the failover");
    assert!(at < report.files, "the failover began mid-run ({at} of {} files)", report.files);
    assert_eq!(summary.files, report.files);
    let role = replica.command(&["ROLE"]);
    assert!(role.contains("master"), "the replica took over: {role}");
    assert!(keys_held(&replica) > 0);
    let want = unique_keys(&manifest);
    assert_exact(&lake, &want).await;

    // The URL's node is gone for good: the next run starts from another node's.
    let again = dir.path().join("resent-17");
    resend(&staging, &manifest, &again, 3);
    let config = DedupConfig { redis_url: nodes[0].url(), ..config };
    let second = run(&setup(&again, &lake, config)).await;
    assert_eq!(second.new_transactions, 0, "the new primary knows every key");
    assert!(second.quarantined_transactions > 0);
    assert_exact(&lake, &want).await;
}

/// Two worker processes share one staging area, one lake and one Redis, each taking the files routed to it, and run
/// at the same time: every file is ingested by exactly one of them, every key lands once, and their commits to the
/// shared catalog never collide into a lost or doubled table commit.
#[test]
fn two_worker_processes_split_the_staging_area_and_land_every_key_once() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, manifest) = corpus(dir.path(), 91, 6);
    let lake = dir.path().join("lake");
    // A filter sized for the corpus, as `RedisServer::bitmap` sizes the others.
    let config = dir.path().join("poslake.toml");
    std::fs::write(&config, "[dedup]\nexpected_keys_per_period = 200000\nmax_shard_mib = 1\n").expect("config");
    let spawn = |index: u32| {
        std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["ingest", "--json", "--dedup", "redis-bitmap", "--redis-url", &server.url(), "--config"])
            .arg(&config)
            .args(["--workers", "2", "--worker-index", &index.to_string(), "--commit-files", "4"])
            .arg("--staging")
            .arg(&staging)
            .arg("--lake")
            .arg(&lake)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn poslake")
    };
    let workers = [spawn(0), spawn(1)];
    let mut files = 0;
    for child in workers {
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
        let (mine, others) = (summary["files"].as_u64().expect("files"), summary["other_workers_files"].as_u64());
        assert!(mine > 0, "each worker takes a share: {summary}");
        assert_eq!(Some(report.files - mine), others, "what a worker leaves, the other takes: {summary}");
        files += mine;
    }
    assert_eq!(files, report.files, "every file taken by exactly one worker");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        assert_exact(&lake, &unique_keys(&manifest)).await;
        let wh = Warehouse::open(&lake).await.expect("open");
        assert_eq!(wh.row_count("file_ledger").await.expect("count"), report.files, "one ledger row a file");
        assert_eq!(ledger_paths(&wh).await.len() as u64, report.files);
    });
}

/// A worker stopped (SIGSTOP, as a frozen container) between its check and its commit for longer than
/// `commit_wait_secs`, while another worker lands the same sales (re-sent into the other's share): at its commit it
/// checks its keys again, finds them landed, and commits nothing; its next run quarantines them, and `reconcile`
/// confirms them. Until session 38 only checks older than 7.5 minutes were checked again, and an audit saw a worker
/// resumed after a pause land 111 sales a second time.
#[test]
fn a_worker_resumed_after_a_pause_checks_its_keys_again_before_its_commit() {
    let server = RedisServer::start();
    // Without claims, which since session 39 catch this earlier (a check after the claim: see
    // `a_worker_paused_between_its_check_and_its_claim_lands_nothing_twice`), so that the commit's own check is tried.
    let two = SharedCopies::with_claims(&server, 93, 2, false);
    let (manifest, ingest, poslake, lake) =
        (&two.manifest, |i: &str| two.ingest(i), |a: &[&str]| two.poslake(a), &two.lake);

    // Worker 0 stops right after its first check.
    let (paused, mut reaper) = stopped_at(ingest("0"), "dedup-check:1");
    let stopped = std::time::Instant::now();
    // Worker 1 lands every sale meanwhile.
    let other = ingest("1").output().expect("worker 1");
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let want = unique_keys(manifest);
    let landed: serde_json::Value = serde_json::from_slice(&other.stdout).expect("summary");
    assert_eq!(landed["new_transactions"].as_u64(), Some(want.len() as u64), "{landed}");
    // Past the wait, worker 0 resumes: its commit finds its keys landed by the other and commits nothing.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()));
    assert_eq!(unsafe { libc::kill(paused.id() as i32, libc::SIGCONT) }, 0);
    let resumed = paused.wait_with_output().expect("worker 0");
    reaper.disarm();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success(), "the resumed run commits nothing: {stderr}");
    assert!(stderr.contains("checked as new long before it"), "{stderr}");
    // Its next run finds them all in the filter: quarantined, and confirmed by reconcile.
    let again = ingest("0").output().expect("worker 0 again");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("summary");
    assert_eq!(again["new_transactions"].as_u64(), Some(0), "{again}");
    let reconciled = poslake(&["reconcile"]).output().expect("reconcile");
    assert!(reconciled.status.success(), "{}", String::from_utf8_lossy(&reconciled.stderr));
    let reconciled: serde_json::Value = serde_json::from_slice(&reconciled.stdout).expect("report");
    assert_eq!(reconciled["promoted"].as_u64(), Some(0), "{reconciled}");
    assert_eq!(reconciled["confirmed_duplicates"].as_u64(), Some(want.len() as u64), "{reconciled}");
    tokio::runtime::Runtime::new().expect("runtime").block_on(assert_exact(lake, &want));
}

/// Two workers routed by folder, each with a copy of the same sales in its share, both checking them in one commit
/// window (the gap routing by site closes): the first to check claims them, the other quarantines its copies as
/// `in_flight_elsewhere`, and every sale lands once. Without claims both landed them (a re-audit doubled 135 sales
/// so, with pauses shorter than `commit_wait_secs`).
#[test]
fn copies_taken_by_two_workers_at_once_land_once_through_claims() {
    let server = RedisServer::start();
    // A long wait: worker 0's pause stays well inside it, so its commit does not check its keys again.
    let two = SharedCopies::new(&server, 94, 120);
    let (manifest, ingest, poslake, lake) =
        (&two.manifest, |i: &str| two.ingest(i), |a: &[&str]| two.poslake(a), &two.lake);

    // Worker 0 stops once it has claimed its first batch's keys, long before its commit.
    let (paused, mut reaper) = stopped_at(ingest("0"), "dedup-claim:1");
    // Worker 1 takes its copies meanwhile: those worker 0 claimed are quarantined, the rest land.
    let other = ingest("1").output().expect("worker 1");
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let want = unique_keys(manifest);
    let landed: serde_json::Value = serde_json::from_slice(&other.stdout).expect("summary");
    let (new, quarantined) =
        (landed["new_transactions"].as_u64(), landed["quarantined_transactions"].as_u64().unwrap_or(0));
    assert!(quarantined > 0 && new.is_some_and(|n| n < want.len() as u64), "{landed}");
    // Worker 0 resumes: it lands what it claimed, and finds the rest landed by worker 1.
    assert_eq!(unsafe { libc::kill(paused.id() as i32, libc::SIGCONT) }, 0);
    let resumed = paused.wait_with_output().expect("worker 0");
    reaper.disarm();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout).expect("summary");
    assert_eq!(resumed["new_transactions"].as_u64().zip(new).map(|(a, b)| a + b), Some(want.len() as u64), "{resumed}");
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        assert_exact(lake, &want).await;
        let wh = Warehouse::open(lake).await.expect("open");
        let claimed = common::scalar(&wh, "SELECT count(*) FROM sales_duplicates WHERE reason = 'in_flight_elsewhere'");
        // Besides the corpus's own re-sends that worker 1 found landed (the filter's).
        let claimed = claimed.await as u64;
        assert!(claimed > 0 && claimed <= quarantined, "{claimed} of {quarantined} quarantined by claims");
    });
    // Reconcile confirms every quarantined copy, promotes none; verify finds the lake exact.
    let reconciled = poslake(&["reconcile"]).output().expect("reconcile");
    assert!(reconciled.status.success(), "{}", String::from_utf8_lossy(&reconciled.stderr));
    let reconciled: serde_json::Value = serde_json::from_slice(&reconciled.stdout).expect("report");
    assert_eq!(reconciled["promoted"].as_u64(), Some(0), "{reconciled}");
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["verify", "--lake"])
        .arg(lake)
        .output()
        .expect("verify");
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
}

/// Claims, one by one: a share's claim holds off another share and not itself, however long it is held (a
/// claim that ran out let another worker land copies of a commit paused past it, an audit found), and ends when
/// released. Two periods' keys go to their own hashes, and `dedup stats` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_off_other_shares_until_it_ends() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).expect("lake");
    let store = Dedup::open(&server.bitmap(), &lake).await.expect("open store");
    let keys: Vec<DedupKey> = random_keys(4, 7)
        .into_iter()
        .enumerate()
        .map(|(i, k)| DedupKey { date: chrono::NaiveDate::from_ymd_opt(2026, 1 + i as u32 % 2, 5).expect("date"), ..k })
        .collect();
    // Checked first, as an ingest does: that makes each period's filter, which `stats` lists.
    assert_eq!(store.contains(&keys).await.expect("check"), vec![false; 4]);
    let claim = |share: &'static str| {
        let (store, keys) = (&store, &keys);
        async move { store.claim(keys, &[share; 4]).await.expect("claim") }
    };
    assert_eq!(claim("worker-0-of-2").await, vec![false; 4], "unclaimed: taken");
    assert_eq!(claim("worker-1-of-2").await, vec![true; 4], "held by another share");
    assert_eq!(claim("worker-0-of-2").await, vec![false; 4], "its own share's");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(claim("worker-1-of-3").await, vec![true; 4], "still held, however long");
    store.release_claims(&keys[..2]).await.expect("release");
    assert_eq!(claim("worker-1-of-3").await, vec![false, false, true, true], "released ones are free");
    let client = redis::Client::open(server.url().as_str()).expect("Redis URL");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let hashes: Vec<String> = redis::cmd("KEYS").arg("*claims*").query_async(&mut conn).await.expect("keys");
    assert_eq!(hashes.len(), 2, "a hash per period: {hashes:?}");
    // `poslake dedup stats` counts them per period, until they end.
    let held = |stats: Vec<poslake::dedup::PartitionStats>| stats.iter().map(|p| p.claims).sum::<u64>();
    assert_eq!(held(store.stats().await.expect("stats")), 4);
    store.release_claims(&keys).await.expect("release");
    assert_eq!(held(store.stats().await.expect("stats")), 0);
}

/// A worker paused between its check and its claim, shorter than `commit_wait_secs`, while another worker checks,
/// claims, lands and releases the same sales: its claim then finds them free, and only the check after the claim
/// sees them landed. They are quarantined, not landed twice (an audit held a worker there and saw 599 sales twice).
#[test]
fn a_worker_paused_between_its_check_and_its_claim_lands_nothing_twice() {
    let server = RedisServer::start();
    let two = SharedCopies::new(&server, 96, 120);
    let (paused, mut reaper) = stopped_at(two.ingest("0"), "dedup-check:1");
    let other = two.ingest("1").output().expect("worker 1");
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let want = unique_keys(&two.manifest);
    let landed: serde_json::Value = serde_json::from_slice(&other.stdout).expect("summary");
    assert_eq!(landed["new_transactions"].as_u64(), Some(want.len() as u64), "{landed}");
    assert_eq!(unsafe { libc::kill(paused.id() as i32, libc::SIGCONT) }, 0);
    let resumed = paused.wait_with_output().expect("worker 0");
    reaper.disarm();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout).expect("summary");
    assert_eq!(resumed["new_transactions"].as_u64(), Some(0), "{resumed}");
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        assert_exact(&two.lake, &want).await;
        // Told apart from the filter's own positives.
        let wh = Warehouse::open(&two.lake).await.expect("open");
        let meanwhile = common::scalar(&wh, "SELECT count(*) FROM sales_duplicates WHERE reason = 'landed_meanwhile'");
        assert!(meanwhile.await > 0);
    });
}

/// A worker killed after its commit's first table, before it ended its claims: the next start's recovery lands the
/// commit, adds its keys and ends their claims, so none is left for other workers to meet (an audit counted 529-633
/// left per such kill).
#[test]
fn the_claims_of_a_commit_finished_by_recovery_end_with_it() {
    let server = RedisServer::start();
    let two = SharedCopies::new(&server, 95, 60);
    let killed = two.ingest("0").env("POSLAKE_KILL_AT", "commit-table:1").output().expect("worker 0");
    assert!(!killed.status.success(), "killed mid-commit");
    let again = two.ingest("0").output().expect("worker 0 again");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let stats = two.poslake(&["dedup", "stats"]).output().expect("stats");
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    let partitions = stats["partitions"].as_array().expect("partitions");
    assert!(!partitions.is_empty(), "{stats}");
    let held: u64 = partitions.iter().map(|p| p["claims"].as_u64().expect("claims")).sum();
    assert_eq!(held, 0, "{stats}");
    let want = unique_keys(&two.manifest);
    tokio::runtime::Runtime::new().expect("runtime").block_on(assert_exact(&two.lake, &want));
}

/// Two workers of one lake routed by top folder (`share-N/`), each share holding a copy of one generated corpus,
/// with a Redis store and `commit_wait_secs` as given.
struct SharedCopies {
    _dir: tempfile::TempDir,
    staging: PathBuf,
    lake: PathBuf,
    config: PathBuf,
    manifest: Vec<ManifestEntry>,
}

impl SharedCopies {
    fn new(server: &RedisServer, seed: u64, commit_wait_secs: u64) -> Self {
        Self::with_claims(server, seed, commit_wait_secs, true)
    }

    /// [`Self::new`], with `dedup.claim_in_flight` as given.
    fn with_claims(server: &RedisServer, seed: u64, commit_wait_secs: u64, claims: bool) -> Self {
        use poslake::ingest::route::Route;
        let dir = tempfile::tempdir().expect("tempdir");
        let (all, _report, manifest) = corpus(dir.path(), seed, 2);
        let route_by = "share-([0-9]+)/";
        let share_of = |index: u32| {
            let route = Route::new(2, index, Some(route_by)).expect("route");
            (0..).map(|n| format!("share-{n}")).find(|s| route.takes(&format!("{s}/f.xml"))).expect("a share")
        };
        let staging = dir.path().join("staging");
        for index in [0, 1] {
            copy_tree(&all, &staging.join(share_of(index)));
        }
        let config = dir.path().join("poslake.toml");
        std::fs::write(
            &config,
            format!(
                "workers = 2\nroute_by = '{route_by}'\ncommit_wait_secs = {commit_wait_secs}\ncommit_files = 4\n\n\
                 [dedup]\nbackend = \"redis-bitmap\"\nredis_url = \"{}\"\nexpected_keys_per_period = 200000\n\
                 max_shard_mib = 1\nclaim_in_flight = {claims}\n",
                server.url()
            ),
        )
        .expect("config");
        let lake = dir.path().join("lake");
        SharedCopies { _dir: dir, staging, lake, config, manifest }
    }

    /// `poslake <args> --json` on the lake, with the configuration, its output captured.
    fn poslake(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(args).arg("--json").arg("--config").arg(&self.config).arg("--lake").arg(&self.lake);
        cmd.env_remove("POSLAKE_KILL_AT").env_remove("POSLAKE_STOP_AT").env("RUST_LOG", "warn");
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd
    }

    fn ingest(&self, index: &str) -> std::process::Command {
        let mut cmd = self.poslake(&["ingest", "--worker-index", index]);
        cmd.arg("--staging").arg(&self.staging);
        cmd
    }
}

/// Starts `command` with `POSLAKE_STOP_AT=point` and waits until the process has stopped itself there; the child,
/// and a guard that kills it if the test fails before it is resumed and reaped.
fn stopped_at(mut command: std::process::Command, point: &str) -> (std::process::Child, common::KillOnDrop) {
    let child = command.env("POSLAKE_STOP_AT", point).spawn().expect("spawn");
    let reaper = common::KillOnDrop(Some(child.id()));
    let started = std::time::Instant::now();
    let state = || std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    while !state().rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')) {
        assert!(started.elapsed() < Duration::from_secs(60), "the process never reached {point}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, reaper)
}

/// Copies every file under `from` to the same place under `to`.
fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let target = to.join(entry.path().strip_prefix(from).expect("inside"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(entry.path(), target).expect("copy");
    }
}

/// `workers = "auto"`, in one process for a close look: two workers' claims split the slots with none shared; a
/// lease taken from a worker behind its back is reported lost before its next commit and no longer routed to it;
/// a worker that leaves hands its whole share to the other's next claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_route_slots_are_held_by_one_worker_each_and_a_lost_lease_is_noticed() {
    use poslake::ingest::slot_leases::{SLOTS, SlotLeases};
    let server = RedisServer::start();
    let config = server.bitmap();
    let ttl = Duration::from_secs(3);
    let a = SlotLeases::join(&config, ttl, None).await.expect("a joins");
    let b = SlotLeases::join(&config, ttl, None).await.expect("b joins");
    let (ca, cb) = (a.claim().await.expect("a claims"), b.claim().await.expect("b claims"));
    assert_eq!((ca.workers, cb.workers), (2, 2));
    assert_eq!((ca.held, cb.held), (ca.preferred, cb.preferred), "nothing was leased before");
    assert_eq!(ca.held + cb.held, SLOTS, "every slot has a holder");
    assert!(ca.held > 0 && cb.held > 0, "{ca:?} {cb:?}");
    assert!((0..SLOTS).all(|s| a.holds(s) != b.holds(s)), "no slot held by both");

    // What `poslake dedup stats` shows: both live, each with its slots.
    let (fleet, free) = poslake::ingest::slot_leases::fleet(&config).await.expect("fleet");
    assert_eq!(free, 0);
    let slots: Vec<(bool, u32)> = fleet.iter().map(|m| (m.live, m.slots)).collect();
    let mut want = vec![(true, ca.held), (true, cb.held)];
    if fleet[0].id != a.id() {
        want.reverse();
    }
    assert_eq!(slots, want, "{fleet:?}");

    // b's claim under the same membership takes nothing of a's.
    let mine = a.held();
    assert!(b.claim().await.expect("b claims again").held == cb.held && mine == a.held());

    // A worker that routes another way would take some of the same files: it is refused, and the others leave
    // it out of their shares.
    let odd = SlotLeases::join(&config, ttl, Some("site=([^/]+)")).await.expect("joins");
    let refused = odd.claim().await.expect_err("another route").to_string();
    assert!(refused.contains("route the same way") && refused.contains("site="), "{refused}");
    assert!(odd.held().is_empty());
    let again = b.claim().await.expect("b claims");
    assert_eq!((again.held, again.workers), (cb.held, 2), "the odd worker is no member of the fleet");
    odd.leave().await.expect("leave");
    drop(odd);

    // One of a's leases expires and another worker takes it: a finds out at its next commit's check.
    let stolen = mine[0];
    let key = format!("poslake:{{route}}:slot:{stolen}");
    assert!(server.command(&["SET", &key, "someone-else"]).starts_with("+OK"));
    assert_eq!(a.confirm().await.expect("confirm"), vec![stolen]);
    assert!(!a.holds(stolen), "no more files of a lost slot are taken");
    assert!(server.command(&["GET", &key]).contains("someone-else"), "a lost lease is not taken back mid-run");
    assert_eq!(a.confirm().await.expect("confirm"), vec![stolen], "the run stays refused until the next claim");
    server.command(&["DEL", &key]);

    // a's run ends and a leaves: b's next claim takes every slot.
    a.release().await.expect("release");
    a.leave().await.expect("leave");
    let all = b.claim().await.expect("b claims");
    assert_eq!((all.held, all.workers), (SLOTS, 1), "{all:?}");
    assert!(a.held().is_empty());
    b.release().await.expect("release");
}

/// A worker alone at its first claim waits a beat, so that workers starting beside it share the first run instead of
/// leaving it all to whichever claimed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_together_share_their_first_run() {
    use poslake::ingest::slot_leases::{SLOTS, SlotLeases};
    let server = RedisServer::start();
    let config = server.bitmap();
    // A beat of 2 s: room for the second worker to join while the first waits, on a busy machine too.
    let ttl = Duration::from_secs(6);
    let a = SlotLeases::join(&config, ttl, None).await.expect("a joins");
    let first = {
        let a = a.clone();
        tokio::spawn(async move { a.claim().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = SlotLeases::join(&config, ttl, None).await.expect("b joins");
    let ca = first.await.expect("task").expect("a claims");
    let cb = b.claim().await.expect("b claims");
    assert_eq!((ca.workers, cb.workers), (2, 2), "{ca:?} {cb:?}");
    assert!(ca.held < SLOTS && ca.held + cb.held == SLOTS, "{ca:?} {cb:?}");
}

/// A worker whose leases are taken from it mid-run (here: every slot key overwritten as soon as it is claimed, as
/// when a worker cut off from Redis has its leases expire and taken) commits nothing: its run ends with the cause,
/// its uncommitted work abandoned. Once it holds its slots again, a run lands every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_leases_commits_nothing_and_the_next_run_lands_everything_once() {
    use poslake::ingest::route::Route;
    use poslake::ingest::slot_leases::{SLOTS, SlotLeases};
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, _, manifest) = corpus(dir.path(), 17, 3);
    let lake = dir.path().join("lake");
    let config = server.bitmap();
    // A long lease: this worker's own renewals (every 10 s) come after its run's commit.
    let leases = SlotLeases::join(&config, Duration::from_secs(30), Some("site=([^/]+)")).await.expect("join");
    let setup = IngestSetup {
        route: Route::leased(Some("site=([^/]+)"), leases.clone()).expect("route"),
        ..setup(&staging, &lake, config)
    };
    let stealing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let thief = {
        let (stealing, port) = (stealing.clone(), server.port);
        std::thread::spawn(move || {
            let server = common::redis::Client { port };
            while stealing.load(std::sync::atomic::Ordering::SeqCst) {
                for slot in 0..SLOTS {
                    server.command(&["SET", &format!("poslake:{{route}}:slot:{slot}"), "thief", "XX"]);
                }
            }
        })
    };
    let err = ingest(&setup, pipeline(), Arc::new(Progress::default())).await.expect_err("the commit is refused");
    stealing.store(false, std::sync::atomic::Ordering::SeqCst);
    thief.join().expect("thief");
    assert!(format!("{err:#}").contains("route slots mid-run"), "{err:#}");
    let wh = Warehouse::open(&lake).await.expect("open");
    assert!(header_keys(&wh).await.is_empty(), "nothing committed");
    assert!(ledger_paths(&wh).await.is_empty(), "no file recorded");

    for slot in 0..SLOTS {
        server.command(&["DEL", &format!("poslake:{{route}}:slot:{slot}")]);
    }
    let summary = run(&setup).await;
    assert_eq!(summary.route_slots, Some(SLOTS), "alone, this worker holds every slot");
    assert_exact(&lake, &unique_keys(&manifest)).await;
}

/// Files of 32 stations' folders arriving in staging (written under a hidden name, then renamed), and the keys
/// they carry.
fn arrive(staging: &Path, seeds: std::ops::Range<u64>, keys: &mut BTreeSet<String>) {
    for seed in seeds {
        let site = staging.join(format!("site={}", seed % 32));
        std::fs::create_dir_all(&site).expect("mkdir");
        let (xml, k) = poslake::generate::generate_file(poslake::Dialect::NaxmlPassport, seed, 3);
        std::fs::write(site.join(".partial"), xml).expect("write");
        std::fs::rename(site.join(".partial"), site.join(format!("{seed}.xml"))).expect("rename");
        keys.extend(k);
    }
}

/// Service workers with `workers = "auto"` (3 s leases, a run every second) on one staging area, lake and Redis;
/// each run's JSON summary is sent to `runs` with the worker's number.
struct AutoWorkers {
    dir: tempfile::TempDir,
    url: String,
    runs: std::sync::mpsc::Sender<(usize, serde_json::Value)>,
}

impl AutoWorkers {
    fn new(server: &RedisServer, extra_config: &str) -> (Self, std::sync::mpsc::Receiver<(usize, serde_json::Value)>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("staging")).expect("staging");
        std::fs::write(
            dir.path().join("poslake.toml"),
            format!(
                "workers = \"auto\"\nroute_lease_secs = 3\n{extra_config}\n[dedup]\nexpected_keys_per_period = 200000\n\
                 max_shard_mib = 1\n"
            ),
        )
        .expect("config");
        let (runs, rx) = std::sync::mpsc::channel();
        (AutoWorkers { dir, url: server.url(), runs }, rx)
    }

    fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn log(&self, worker: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{worker}.log"))
    }

    fn spawn(&self, worker: usize, extra: &[&str]) -> std::process::Child {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["ingest", "--every", "1s", "--json", "--dedup", "redis-bitmap", "--redis-url", &self.url])
            .args(["--route-by", "site=([^/]+)", "--config"])
            .arg(self.dir.path().join("poslake.toml"))
            .arg("--staging")
            .arg(self.staging())
            .arg("--lake")
            .arg(self.lake())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(self.log(worker)).expect("log"))
            .spawn()
            .expect("spawn poslake");
        let (stdout, runs) = (child.stdout.take().expect("stdout"), self.runs.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let run: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}"));
                // A failed run's line holds its error, not a summary: the worker's log says why.
                if run.get("error").is_some() {
                    continue;
                }
                if runs.send((worker, run)).is_err() {
                    break;
                }
            }
        });
        child
    }

    /// Stops worker `worker` with SIGTERM: it drains and exits 0. Returns its log.
    fn stop(&self, mut child: std::process::Child, worker: usize) -> String {
        let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(status.expect("kill").success());
        let code = child.wait().expect("wait").code();
        let log = std::fs::read_to_string(self.log(worker)).expect("log");
        assert_eq!(code, Some(0), "{log}");
        log
    }

    /// Rows of the lake's file ledger now.
    fn ledger_rows(&self) -> u64 {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async { Warehouse::open(&self.lake()).await.expect("open").row_count("file_ledger").await })
            .expect("count")
    }

    /// Each key of `keys` once in `sales_header`, and one ledger row for each of `files` files.
    fn assert_exact(&self, keys: &BTreeSet<String>, files: usize) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let wh = Warehouse::open(&self.lake()).await.expect("open");
            let got = header_keys(&wh).await;
            assert_eq!(got.len(), keys.len(), "each key once");
            assert_eq!(&got.into_iter().collect::<BTreeSet<_>>(), keys);
            assert_eq!(ledger_paths(&wh).await.len(), files);
            assert_eq!(wh.row_count("file_ledger").await.expect("count"), files as u64, "one ledger row a file");
        });
    }
}

/// Adds each summary's files to its worker's count until the counts reach `total`, within two minutes (services
/// report a run every second, so a wait per summary alone could last for ever).
fn count_runs(rx: &std::sync::mpsc::Receiver<(usize, serde_json::Value)>, taken: &mut [u64; 2], total: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while taken.iter().sum::<u64>() < total {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "runs reported {taken:?} of {total} files within two minutes");
        let (worker, run) = rx.recv_timeout(left).expect("a run's summary");
        assert!(run["route_slots"].as_u64().is_some(), "{run}");
        taken[worker] += run["files"].as_u64().expect("files");
    }
    assert_eq!(taken.iter().sum::<u64>(), total, "no file taken twice: {taken:?}");
}

/// `workers = "auto"` with real processes: two service workers share a staging area out among themselves (each
/// taking some of it), one is killed with SIGKILL, and the other takes over its share once its leases expire.
/// Every file lands once and every key once.
#[test]
fn auto_workers_share_staging_and_take_over_a_killed_workers_share() {
    let server = RedisServer::start();
    let (workers, rx) = AutoWorkers::new(&server, "");
    let mut keys = BTreeSet::new();
    arrive(&workers.staging(), 0..64, &mut keys);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let (mut first, second) = (workers.spawn(0, &[]), workers.spawn(1, &["--metrics-addr", &metrics.to_string()]));
    let mut taken = [0u64; 2];
    count_runs(&rx, &mut taken, 64);
    arrive(&workers.staging(), 64..128, &mut keys);
    count_runs(&rx, &mut taken, 128);
    arrive(&workers.staging(), 128..160, &mut keys);
    count_runs(&rx, &mut taken, 160);
    assert!(taken[0] > 0 && taken[1] > 0, "each worker took a share: {taken:?}");

    first.kill().expect("SIGKILL");
    first.wait().expect("wait");
    let before = taken[1];
    arrive(&workers.staging(), 160..224, &mut keys);
    count_runs(&rx, &mut taken, 224);
    assert_eq!(taken[1] - before, 64, "the live worker took every new file, the killed one's share too");
    let scraped = common::scrape(metrics).expect("metrics");
    assert!(scraped.contains("poslake_route_workers 1") && scraped.contains("poslake_route_slots 256"), "{scraped}");
    // What an operator sees: one live worker (the killed one gone with its leases), and the filter's adds.
    let stats = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["dedup", "stats", "--json", "--dedup", "redis-bitmap", "--redis-url", &workers.url, "--config"])
        .arg(workers.dir.path().join("poslake.toml"))
        .arg("--lake")
        .arg(workers.lake())
        .output()
        .expect("dedup stats");
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("one JSON object");
    let fleet = stats["workers"].as_array().expect("workers");
    assert_eq!(fleet.iter().filter(|w| w["live"] == true).count(), 1, "{stats}");
    let leased: u64 = fleet.iter().map(|w| w["slots"].as_u64().expect("slots")).sum();
    assert_eq!(leased + stats["slots_leased_by_none"].as_u64().expect("free"), 256, "{stats}");
    let adds: u64 =
        stats["partitions"].as_array().expect("partitions").iter().map(|p| p["adds"].as_u64().unwrap_or(0)).sum();
    assert!(adds >= keys.len() as u64, "every key added: {stats}");

    workers.stop(second, 1);
    workers.assert_exact(&keys, 224);
    assert!(server.command(&["ZCARD", "poslake:{route}:workers"]).contains(":0"), "the stopped worker left");
}

/// A worker paused (SIGSTOP, as a frozen VM) longer than its leases, at several moments of its runs, while the other
/// takes over its share and the files keep arriving: whatever the paused worker had not committed it gives up when
/// it resumes (its leases are gone), and a commit it was making when paused is waited for by the other. Every file
/// lands once and every key once.
#[test]
fn a_worker_paused_past_its_leases_gives_up_its_uncommitted_files_and_nothing_lands_twice() {
    let server = RedisServer::start();
    // Runs long against the pause points: one file at a time, one commit at a run's end. Pauses fail runs: the
    // paused worker's (its leases are gone), and the other's while the paused one is frozen inside a SQLite write
    // (see below). They come 0.15-0.9 s after a resume, so on a loaded machine no run may finish in between, and three
    // failed runs in a row (`max_failed_runs`' default) would end a service before the SIGTERM this test stops it with.
    let (workers, rx) =
        AutoWorkers::new(&server, "max_files_in_flight = 2\ncommit_interval_secs = 600\nmax_failed_runs = 100");
    let slow = ["--parsers", "1", "--downloaders", "1", "--commit-files", "100000"];
    let mut keys = BTreeSet::new();
    let (paused, other) = (workers.spawn(0, &slow), workers.spawn(1, &slow));
    let mut files = 0;
    for (round, pause_after_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let wave = 96 * round as u64..96 * (round as u64 + 1);
        files += 96;
        arrive(&workers.staging(), wave, &mut keys);
        std::thread::sleep(Duration::from_millis(pause_after_ms));
        let pid = paused.id().to_string();
        assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
        std::thread::sleep(Duration::from_secs(7));
        assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    }
    // Every file lands. Runs report most of them; a run of the other worker can fail when the pause froze the
    // paused one inside a write to the SQLite catalog (held past SQLite's 5 s wait), and its files are then landed by
    // the next recovery, which no summary counts: so the ledger is what is waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while workers.ledger_rows() < files as u64 {
        assert!(std::time::Instant::now() < deadline, "{} of {files} files landed", workers.ledger_rows());
        std::thread::sleep(Duration::from_millis(500));
    }
    let paused_log = workers.stop(paused, 0);
    let other_log = workers.stop(other, 1);
    // The other worker kept running (stopped cleanly above) and failed no run for want of the paused one's slots.
    let failed: Vec<&str> = other_log.lines().filter(|l| l.contains("the run failed")).collect();
    assert!(
        failed.iter().all(|l| l.contains("database is locked")),
        "a paused worker fails no run of the other: {failed:?}"
    );
    let mut taken = [0u64; 2];
    while let Ok((worker, run)) = rx.try_recv() {
        taken[worker] += run["files"].as_u64().expect("files");
    }
    assert!(taken.iter().sum::<u64>() <= files as u64, "no file taken twice: {taken:?}");
    workers.assert_exact(&keys, files);
    let noted = |l: &&str| l.contains("lease") || l.contains("the run failed");
    eprintln!("paused worker: {}", paused_log.lines().filter(noted).collect::<Vec<_>>().join("\n"));
}

/// A port nothing listens on: connections to it are refused.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A signal while Redis is unreachable ends the wait at once, not at `unavailable_limit_secs` (300 s here), and the
/// process says why: a single run exits with the signal's code (it did not finish), a service with 0 (as a service
/// stopped by a signal does).
#[test]
fn a_signal_ends_the_wait_for_an_unreachable_redis_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, _, _) = corpus(dir.path(), 21, 1);
    let url = format!("redis://127.0.0.1:{}", closed_port());
    for every in [None, Some("1s")] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        command.args(["ingest", "--dedup", "redis-bitmap", "--redis-url", &url, "--staging"]).arg(&staging);
        command.arg("--lake").arg(dir.path().join(format!("lake-{}", every.unwrap_or("once"))));
        if let Some(every) = every {
            command.args(["--every", every]);
        }
        let (status, _, log) = terminated_while_waiting_for_redis(command);
        let code = if every.is_some() { 0 } else { 143 };
        assert_eq!(status.code(), Some(code), "({every:?}): {log}");
        assert!(log.contains("stopped by a signal while waiting") && log.contains("stopped by SIGTERM"), "{log}");
    }
}

/// The commands that tend the lake and the store stop on a signal too, and say so: before, a SIGTERM while they
/// waited for Redis killed them with nothing on stdout, so a `--json` reader got no answer at all. With
/// `--log-format json` every line of stderr is a JSON object (the error and the stop were plain lines before).
#[test]
fn a_signal_stops_the_commands_that_tend_the_lake_with_an_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, _, _) = corpus(dir.path(), 22, 1);
    let lake = dir.path().join("lake");
    let ingest = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .arg("ingest")
        .arg("--staging")
        .arg(&staging)
        .arg("--lake")
        .arg(&lake)
        .output()
        .expect("run poslake");
    assert!(ingest.status.success(), "{}", String::from_utf8_lossy(&ingest.stderr));
    let url = format!("redis://127.0.0.1:{}", closed_port());
    for args in
        [&["dedup", "stats", "--json"][..], &["reconcile", "--json"], &["maintain", "--json"], &["dedup", "rebuild"]]
    {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        command.args(args).args(["--dedup", "redis-bitmap", "--redis-url", &url, "--log-format", "json", "--lake"]);
        command.arg(&lake);
        let (status, stdout, log) = terminated_while_waiting_for_redis(command);
        assert_eq!(status.code(), Some(143), "{args:?}: {log}");
        assert!(log.contains("stopped by SIGTERM"), "{args:?}: {log}");
        // A JSON log stays one object a line to the end: the notices of the stop and the error go through it too.
        for line in log.lines().filter(|l| !l.is_empty()) {
            assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "{args:?}: not JSON: {line}");
        }
        if args.contains(&"--json") {
            let line: serde_json::Value =
                serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
            assert_eq!(line["stopped_by"], "SIGTERM", "{args:?}: {line}");
            let error = line["error"].as_str().unwrap_or_default();
            // The wait's own error, or the stop's when the signal is seen first.
            assert!(error.contains("stopped by"), "{args:?}: {line}");
        }
    }
}

/// `dedup bench` stopped by a signal midway deletes what it wrote: a bench's filter can be hundreds of MB, and a
/// SIGTERM used to kill it with its keys left in the server. Its calls under way are waited for, not dropped: what a
/// dropped call had sent landed after the deletion and made shard keys again (an audit saw a third of its stops
/// leave some), so the signal comes at several moments of the bench.
#[test]
fn a_bench_stopped_by_a_signal_leaves_no_key_behind() {
    let server = common::redis::RedisServer::start();
    for (round, after) in [0u64, 300, 800, 1500].into_iter().enumerate() {
        server.command(&["FLUSHALL"]);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["dedup", "bench", "--json", "--keys", "2000000", "--dedup", "redis-bitmap", "--redis-url"])
            .arg(server.url())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn poslake");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while server.integer(&["DBSIZE"]) == 0 {
            assert!(std::time::Instant::now() < deadline, "the bench wrote nothing within a minute");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(after));
        let signal = if round % 2 == 0 { "-TERM" } else { "-INT" };
        let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
        assert!(status.expect("kill").success());
        let status = common::exit_within(&mut child, Duration::from_secs(60)).expect("the bench stops");
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Whatever the bench sent before it stopped was answered before its deletion: nothing lands after it.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.integer(&["DBSIZE"]), 0, "round {round}: the bench's keys are deleted: {stderr}");
        if !status.success() {
            assert!(matches!(status.code(), Some(130 | 143)), "round {round}: {stderr}");
            let line: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
            assert!(line["stopped_by"].is_string(), "{line}");
        }
    }
}

/// Runs `command` until it logs that Redis is unreachable, sends it SIGTERM, and returns how it exited (within a
/// minute, or the test fails), its stdout and its stderr.
fn terminated_while_waiting_for_redis(
    mut command: std::process::Command,
) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, Read};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn poslake");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("Redis unreachable")) {
        log.push(rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}: {log:?}")));
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.expect("kill").success());
    let status = common::exit_within(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("still waiting for Redis a minute after SIGTERM: {log:?}"));
    log.extend(rx.iter());
    (status, reader.join().expect("stdout reader"), log.join("\n"))
}

/// A server that takes connections and never answers is given up at `unavailable_limit_secs`, however long the
/// timeout of one round trip: before, a first try alone waited twice the timeout (two minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_given_up_at_the_limit_whatever_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = DedupConfig {
        backend: DedupBackend::RedisBitmap,
        redis_url: format!("redis://127.0.0.1:{port}"),
        timeout_ms: 60_000,
        unavailable_limit_secs: 2,
        ..DedupConfig::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let error = Dedup::open(&config, dir.path()).await.err().expect("a server that never answers is unavailable");
    assert!(matches!(error, DedupError::Unavailable { limit_secs: 2, .. }), "{error}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "gave up after {took:?}, for a limit of 2 s");
}

/// An outage is logged once however many callers it holds up, and its end once: not a line per waiting round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_for_all_the_callers_it_holds_up() {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::set_global_default(subscriber).expect("the test's subscriber");

    let mut server = RedisServer::start();
    let store =
        Arc::new(Dedup::open(&server.bitmap(), tempfile::tempdir().expect("tempdir").path()).await.expect("open"));
    let keys = random_keys(100, 7);
    server.stop();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (store, keys) = (store.clone(), keys.clone());
            tokio::spawn(async move { store.contains(&keys).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    for caller in callers {
        let answer = caller.await.expect("joined");
        // The server kept its data (stopped cleanly), so each caller gets its answer.
        assert_eq!(answer.expect("answered once Redis is back").len(), keys.len());
    }
    let log = String::from_utf8_lossy(&captured.0.lock().expect("log")).into_owned();
    assert_eq!(log.matches("Redis unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("Redis is reachable again").count(), 1, "{log}");
}

/// `poslake dedup stats` only looks. Against a Redis no ingest has used it makes nothing (no generation, no file
/// index); against a store with a period whose plan was lost (its slot lost its data) it does not make the plan
/// again with this process's settings, which would leave that period's filter looking whole to the next ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_stats_makes_nothing_in_redis() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, _) = corpus(dir.path(), 41, 2);
    let stats = |lake: &Path| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["dedup", "stats", "--json", "--dedup", "redis-bitmap", "--redis-url", &server.url(), "--lake"])
            .arg(lake)
            .env_remove("POSLAKE_CONFIG")
            .output()
            .expect("dedup stats");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };

    // A lake landed with the embedded store, and a Redis never used.
    let embedded = dir.path().join("embedded");
    run(&setup(&staging, &embedded, DedupConfig::default())).await;
    let seen = stats(&embedded);
    assert_eq!(seen["partitions"], serde_json::json!([]), "{seen}");
    assert!(seen["file_index"].is_null(), "{seen}");
    assert_eq!(server.integer(&["DBSIZE"]), 0, "looking at a new store made nothing in it");

    // A lake landed through Redis, then one period's plan lost.
    let lake = dir.path().join("lake");
    let by_day = DedupConfig { period: DedupPeriod::Day, ..server.bitmap() };
    let summary = run(&setup(&staging, &lake, by_day)).await;
    let keys = server.command(&["KEYS", "*"]);
    let metas: Vec<&str> = keys.lines().filter(|l| l.ends_with(":meta") && l.contains("bf:")).collect();
    assert!(metas.len() >= 2, "the corpus spans periods: {keys}");
    let seen = stats(&lake);
    assert_eq!(seen["partitions"].as_array().expect("partitions").len(), metas.len(), "{seen}");
    // The index is brought up to the ledger at a run's start: it exists, holding nothing yet.
    assert_eq!(seen["file_index"]["files"], serde_json::json!(0), "{seen}");
    assert!(summary.files > 0);
    assert_eq!(server.integer(&["DEL", metas[0]]), 1);
    let held = server.integer(&["DBSIZE"]);
    let seen = stats(&lake);
    assert_eq!(seen["partitions"].as_array().expect("partitions").len(), metas.len() - 1, "{seen}");
    assert_eq!(server.integer(&["EXISTS", metas[0]]), 0, "the lost plan is not made again by looking");
    assert_eq!(server.integer(&["DBSIZE"]), held, "looking added no key");
    assert!(report.unique_keys > 0);
}

/// Two `poslake ingest` runs of the same worker at once on one lake and Redis (a cron run overlapping the one
/// before it, a manual run beside a service): the second is refused with the reason, and nothing lands twice. An
/// audit saw both take every file, each checking the keys before the other added them: every transaction twice, and
/// nothing quarantined for `reconcile` to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_the_same_worker_at_once_is_refused() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, manifest) = corpus(dir.path(), 47, 6);
    let lake = dir.path().join("lake");
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["ingest", "--json", "--dedup", "redis-bitmap", "--redis-url", &server.url(), "--staging"])
            .arg(&staging)
            .arg("--lake")
            .arg(&lake)
            .env("RUST_LOG", "warn")
            .env_remove("POSLAKE_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (first, second) = (start(), start());
    let outs = [first.wait_with_output().expect("wait"), second.wait_with_output().expect("wait")];
    let refused: Vec<String> =
        outs.iter().filter(|o| !o.status.success()).map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
    assert_eq!(refused.len(), 1, "exactly one of the two runs is refused: {refused:?}");
    assert!(refused[0].contains("runs as worker 0 of 1"), "{}", refused[0]);
    assert_exact(&lake, &unique_keys(&manifest)).await;
    let wh = Warehouse::open(&lake).await.expect("open");
    assert_eq!(wh.row_count("file_ledger").await.expect("ledger"), report.files, "each file once");
}

/// A Redis that may evict any key to make room (`allkeys-…`) is refused with the reason: an evicted filter shard or
/// file index bucket would be lost without a sign (an audit saw transactions and files land again). One that evicts
/// only keys with a time to live, or nothing, is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_evicts_any_key_is_refused() {
    let server = RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, _) = corpus(dir.path(), 48, 1);
    let lake = dir.path().join("lake");
    let refused = ingest(&setup(&staging, &lake, server.bitmap()), pipeline(), Arc::new(Progress::default())).await;
    let err = error_chain(&refused.map(|s| s.files).expect_err("refused"));
    assert!(err.contains("maxmemory-policy allkeys-lru") && err.contains("noeviction"), "{err}");
    assert_eq!(server.integer(&["DBSIZE"]), 0, "nothing written to it");
    for policy in ["volatile-lru", "noeviction"] {
        assert!(server.command(&["CONFIG", "SET", "maxmemory-policy", policy]).contains("OK"));
        let summary = run(&setup(&staging, &lake, server.bitmap())).await;
        assert_eq!(summary.files + summary.already_ingested, report.files, "{policy}");
    }
}

/// A store keeps the business-date period its filters were made with: a worker configured with another one uses the
/// store's, so re-sent files still find their keys (an audit saw them land again after a change from day to month).
/// A store made before the period was kept is read by the periods it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keeps_the_period_it_was_made_with() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report, manifest) = corpus(dir.path(), 49, 3);
    let lake = dir.path().join("lake");
    let by = |period| DedupConfig { period, ..server.bitmap() };
    let first = run(&setup(&staging, &lake, by(DedupPeriod::Day))).await;
    assert_eq!(first.new_transactions, report.unique_keys);
    assert!(server.command(&["GET", "poslake:{dedup}:period"]).contains("day"));
    let again = dir.path().join("resent");
    let picked = resend(&staging, &manifest, &again, 3);
    let second = run(&setup(&again, &lake, by(DedupPeriod::Month))).await;
    assert_eq!(second.files, picked.len() as u64);
    assert_eq!(second.new_transactions, 0, "re-sent files add nothing under another configured period");
    assert_exact(&lake, &unique_keys(&manifest)).await;

    // A store from before: no period kept, its partitions by day. A worker configured by month reads it by day.
    assert_eq!(server.integer(&["DEL", "poslake:{dedup}:period"]), 1);
    let third = dir.path().join("resent-again");
    let picked = resend(&staging, &manifest, &third, 4);
    let summary = run(&setup(&third, &lake, by(DedupPeriod::Month))).await;
    // (A file re-sent under the same name as in the run before is already ingested.)
    assert_eq!((summary.files + summary.already_ingested, summary.new_transactions), (picked.len() as u64, 0));
    assert!(summary.files > 0);
    assert!(server.command(&["GET", "poslake:{dedup}:period"]).contains("day"), "recorded as found");
}

/// A dedup store belongs to one lake, up to the ledger it was brought up to. A lake restored from an older copy (here
/// its catalog.db alone, as lake.md says to restore a lost one), or another lake on the same store, is refused with
/// the reason and what to do: an audit saw both skip, as already ingested, every file the store had seen, their
/// sales lost without a word. Started over as the message says, the restored lake takes those files again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_its_lake_or_of_another_lake_is_refused() {
    for store in ["embedded", "redis"] {
        let server = RedisServer::start();
        let config = if store == "redis" { server.bitmap() } else { DedupConfig::default() };
        let dir = tempfile::tempdir().expect("tempdir");
        let (staging, _, manifest) = corpus(dir.path(), 50, 2);
        let day1 = dir.path().join("day1");
        std::fs::create_dir_all(&day1).expect("mkdir");
        let (first, _) = manifest.split_at(manifest.len() / 2);
        for m in first {
            let to = day1.join(&m.path);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(staging.join(&m.path), to).expect("copy");
        }
        let lake = dir.path().join("lake");
        run(&setup(&day1, &lake, config.clone())).await;
        let backup = dir.path().join("catalog.db.backup");
        std::fs::copy(lake.join("catalog.db"), &backup).expect("backup");
        // Day 2 lands; its commits record in the store how far the ledger reached (no later start has synced the
        // file index: the store holds its keys, not yet its files).
        let second = run(&setup(&staging, &lake, config.clone())).await;
        assert!(second.new_transactions > 0, "{store}");

        std::fs::copy(&backup, lake.join("catalog.db")).expect("restore");
        let restored = setup(&staging, &lake, config.clone());
        let refused = ingest(&restored, pipeline(), Arc::new(Progress::default())).await;
        let err = error_chain(&refused.map(|s| s.files).expect_err("a store ahead of its lake"));
        assert!(err.contains("the lake is older than its store") && err.contains("dedup rebuild"), "{store}: {err}");
        // A rebuild into that store is refused too: it would mix the keys of two states of the lake.
        {
            let wh = Arc::new(Warehouse::open(&lake).await.expect("open"));
            let held = Arc::new(Dedup::open(&config, wh.root()).await.expect("store"));
            let refused = poslake::ingest::commit::Committer::new(wh, held).rebuild().await.expect_err("refused");
            assert!(refused.to_string().contains("older than its store"), "{store}: {refused}");
        }

        let other = dir.path().join("other");
        if store == "redis" {
            // Another lake with a history of its own (in another store), pointed at this one by mistake: refused
            // before it writes anything there (an audit saw its recovery add its commits' keys and marks first, and
            // this lake's next new transactions all quarantined as duplicates).
            let own = DedupConfig { key_prefix: "other".into(), ..config.clone() };
            assert!(run(&setup(&day1, &other, own)).await.new_transactions > 0);
            let before = digest(&server, "poslake*");
            let elsewhere = setup(&staging, &other, config.clone());
            let refused = ingest(&elsewhere, pipeline(), Arc::new(Progress::default())).await;
            let err = error_chain(&refused.map(|s| s.files).expect_err("another lake's store"));
            assert!(err.contains("another lake"), "{err}");
            assert_eq!(digest(&server, "poslake*"), before, "the refused run wrote nothing to the store");
            server.command(&["FLUSHALL"]);
        } else {
            std::fs::rename(lake.join("dedup"), dir.path().join("dedup.aside")).expect("aside");
        }
        // Started over: the restored lake takes what its ledger lacks, and lands every key once.
        let wh = Arc::new(Warehouse::open(&lake).await.expect("open"));
        let fresh = Arc::new(Dedup::open(&config, wh.root()).await.expect("store"));
        let rebuilt = poslake::ingest::commit::Committer::new(wh, fresh).rebuild().await.expect("rebuild");
        assert!(rebuilt > 0, "{store}");
        let summary = run(&setup(&staging, &lake, config.clone())).await;
        assert!(summary.files > 0 && summary.new_transactions > 0, "{store}: {summary:?}");
        assert_exact(&lake, &unique_keys(&manifest)).await;
    }
}

/// A store's record of its lake is never taken over by another lake's: a write naming another ledger table leaves
/// it as it is and names the table it holds (a re-audit saw a heal raise another lake's record with its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_recording_one_lake_keeps_it_against_another() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    for config in [server.bitmap(), DedupConfig::default()] {
        let store = Dedup::open(&config, dir.path()).await.expect("open");
        assert_eq!(store.record_lake("lake-a", 5).await.expect("record"), None);
        assert_eq!(store.record_lake("lake-a", 3).await.expect("record"), None, "a lower one is no refusal");
        assert_eq!(store.record_lake("lake-b", 9).await.expect("record"), Some("lake-a".to_owned()));
        assert_eq!(store.lake_record().await.expect("read"), Some(("lake-a".to_owned(), 5)));
    }
}

/// A digest of every key matching `pattern` and its value (as `DUMP` writes it): what a run changed there.
fn digest(server: &RedisServer, pattern: &str) -> String {
    const SCRIPT: &str = "local keys = redis.call('KEYS', ARGV[1]) table.sort(keys) local acc = '' \
        for _, k in ipairs(keys) do acc = redis.sha1hex(acc .. k .. redis.call('DUMP', k)) end \
        return {#keys, acc}";
    let answer = server.command(&["EVAL", SCRIPT, "0", pattern]);
    assert!(!answer.starts_with('-') && !answer.contains(":0\r\n"), "{answer}");
    answer
}

/// An error with its sources, as the binary prints it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        out += &format!(": {e}");
        source = e.source();
    }
    out
}
