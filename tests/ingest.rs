//! The main job end to end on embedded defaults: a generated multi-vendor corpus with planted duplicates (re-sent
//! files, repeated transactions, rollback mirrors) and malformed files goes through the actor pipeline into a
//! real Iceberg warehouse, landing exactly the manifest's unique keys; malformed files land in the dead letters;
//! a second ingest adds nothing.
#![cfg(feature = "lake")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

mod common;

use arrow_array::StringArray;
use common::{column, header_keys, ledger_paths, pipeline};
use poslake::config::DedupConfig;
use poslake::generate::{FileKind, GenerateArgs, Report, generate, read_manifest};
use poslake::ingest::{IngestPaths, IngestSetup, IngestSummary, ingest};
use poslake::lake::Warehouse;
use poslake_actors::Progress;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_with_planted_duplicates_lands_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = generate(&GenerateArgs {
        out: staging.clone(),
        seed: 3,
        sites: 6,
        days: 2,
        files_per_day: 3,
        min_transactions: 20,
        max_transactions: 40,
        duplicate_file_rate: 0.15,
        duplicate_transaction_rate: 0.05,
        malformed_rate: 0.1,
        gzip_rate: 0.2,
        rollback_rate: 0.05,
        ..GenerateArgs::default()
    })
    .expect("generate");
    assert!(report.resent_files > 0 && report.repeated_transactions > 0 && report.malformed_files > 0);
    let manifest = read_manifest(&staging).expect("manifest");
    let paths = IngestPaths { staging: staging.clone(), lake: dir.path().join("lake"), archive: None, catalog: None };

    let summary =
        ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await.expect("ingest");
    assert_eq!(summary.files, report.files);
    assert_eq!(summary.dead_letters, report.malformed_files);
    assert_eq!(summary.new_transactions, report.unique_keys);

    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let got = header_keys(&wh).await;
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no key twice");
    let want: BTreeSet<String> =
        manifest.iter().filter(|m| m.kind != FileKind::Malformed).flat_map(|m| m.keys.iter().cloned()).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "exactly the manifest's unique keys");
    assert_eq!(wh.row_count("bronze_transaction").await.expect("count"), report.unique_keys);
    assert_eq!(wh.row_count("file_ledger").await.expect("count"), report.files);
    // Values outside the transactions land too, in the file's ledger row: Verifone's `openedTime` (its business
    // date), NAXML's transmission header (its site). A dead letter's row has none.
    let rows = common::strings(
        &wh,
        "SELECT concat(dialect, ' ', site, ' ', outcome, ' ', coalesce(envelope, 'none')) FROM file_ledger",
    )
    .await;
    let (mut verifone, mut naxml) = (0, 0);
    for row in &rows {
        let mut parts = row.splitn(4, ' ');
        let (dialect, site, outcome, envelope) =
            (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or("none"));
        if outcome != Some("ingested") {
            assert_eq!(envelope, "none", "{row}");
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(envelope).unwrap_or(serde_json::Value::Null);
        match dialect {
            Some("verifone-commander") => {
                verifone += 1;
                assert!(
                    value["transSet/openedTime"].is_string()
                        && value["transSet_attr_site"] == serde_json::Value::from(site),
                    "{row}"
                );
            }
            Some("naxml-passport") => {
                naxml += 1;
                let stated = &value["NAXML-POSJournal/TransmissionHeader/StoreLocationID"];
                assert_eq!(*stated, serde_json::Value::from(site), "{row}");
            }
            _ => {}
        }
    }
    assert!(verifone > 0 && naxml > 0, "{rows:?}");

    // SQL answers a join across header and line: every line finds its header, and the headers' line counts add up
    // to the lines.
    let n = common::scalar(
        &wh,
        "SELECT count(*) AS n, count(DISTINCT h.source_hash) AS files FROM sales_line l JOIN sales_header h \
         ON h.site = l.site AND h.business_date = l.business_date AND h.register = l.register \
         AND h.sequence = l.sequence AND h.key_variant = l.key_variant",
    )
    .await;
    assert_eq!(n as u64, wh.row_count("sales_line").await.expect("lines"), "every line joins its header");
    let total = common::scalar(&wh, "SELECT sum(line_count) FROM sales_header").await;
    assert_eq!(total as u64, wh.row_count("sales_line").await.expect("lines"));

    // A filter that casts a column is applied by DataFusion, not pushed into the Iceberg scan (where
    // iceberg-datafusion 0.10 drops the cast and fails, or prunes rows); and SQL cannot write to the lake.
    let above = |k: &String| k.split('|').nth(3).and_then(|s| s.parse::<i64>().ok()).is_some_and(|n| n > 50);
    let want = common::keys_of_table(&wh, "sales_header").await.iter().filter(|k| above(k)).count();
    assert!(want > 0);
    let got = common::scalar(&wh, "SELECT count(*) FROM sales_header WHERE CAST(sequence AS BIGINT) > 50").await;
    assert_eq!(got as usize, want);
    let rows = wh.row_count("dead_letters").await.expect("rows");
    let out = dir.path().join("copy.parquet");
    for statement in [
        "INSERT INTO dead_letters SELECT * FROM dead_letters".to_owned(),
        format!("COPY (SELECT * FROM dead_letters) TO '{}' STORED AS PARQUET", out.display()),
        "CREATE TABLE t AS SELECT 1".to_owned(),
        "DROP TABLE sales_header".to_owned(),
        "SET datafusion.execution.batch_size = 1".to_owned(),
    ] {
        let refused = poslake::lake::query::sql(&wh, &statement).await;
        // Said as such, not as a planner's "not supported".
        assert!(
            matches!(refused, Err(poslake::lake::query::QueryError::ReadOnly(_))),
            "{statement}: SQL does not write: {refused:?}"
        );
    }
    assert!(!out.exists(), "COPY wrote no file");
    // Metadata tables answer projections and counts, not only `SELECT *`.
    let n = common::scalar(&wh, r#"SELECT count(*) FROM "sales_header$snapshots""#).await;
    let ids = poslake::lake::query::sql(&wh, r#"SELECT snapshot_id FROM "sales_header$snapshots""#).await;
    let ids: usize = ids.expect("snapshot ids").iter().map(|b| b.num_rows()).sum();
    assert!(n >= 1 && ids as i64 == n, "{n} snapshots, {ids} ids");
    assert_eq!(wh.row_count("dead_letters").await.expect("rows"), rows);

    // Malformed files are dead letters with their typed reason.
    let mut dead = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let path = column::<StringArray>(&b, "path");
        let kind = column::<StringArray>(&b, "kind");
        dead.extend((0..b.num_rows()).map(|i| (path.value(i).to_owned(), kind.value(i).to_owned())));
    }
    dead.sort();
    let mut want_dead: Vec<String> =
        manifest.iter().filter(|m| m.kind == FileKind::Malformed).map(|m| m.path.clone()).collect();
    want_dead.sort();
    assert_eq!(dead.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), want_dead);
    assert!(dead.iter().all(|(_, k)| matches!(k.as_str(), "truncated" | "malformed" | "decompress")), "{dead:?}");

    // Every raw file is archived under bronze/raw.
    let archived = walkdir(&paths.lake.join("bronze/raw")).len();
    // Re-sent files carry another name, so every file, re-sends included, is archived once.
    assert_eq!(archived, report.files as usize, "the raw archive holds each file once");

    // A second ingest of the same staging folder adds nothing and names every file as already ingested.
    let again =
        ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await.expect("again");
    assert_eq!((again.files, again.already_ingested), (0, report.files));
    assert_eq!(wh.row_count("sales_header").await.expect("count"), report.unique_keys);

    // `poslake verify` finds the lake exact: each key once in header and bronze, lines and discounts as counted,
    // each file ingested once.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["verify", "--json", "--lake"])
        .arg(&paths.lake)
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let checks = verified["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 8, "{verified}");
    for check in checks {
        assert_eq!(check["found"], 0, "{check}");
        // The embedded store is exact: it quarantines nothing, and the quarantine table is never made.
        assert!(check["skipped"].is_null() || check["name"] == "quarantine_to_reconcile", "{check}");
    }
}

/// A real `poslake ingest` process interrupted with SIGINT drains: it exits cleanly, and the lake holds exactly
/// the keys of the files its ledger names (nothing half-written). A second run ingests the rest, each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_the_next_run_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let lake = dir.path().join("lake");
    let report = generate(&GenerateArgs {
        out: staging.clone(),
        seed: 9,
        sites: 12,
        days: 3,
        files_per_day: 8,
        min_transactions: 30,
        max_transactions: 60,
        duplicate_file_rate: 0.0,
        duplicate_transaction_rate: 0.0,
        rollback_rate: 0.0,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["ingest", "--json", "--staging"])
            .arg(&staging)
            .arg("--lake")
            .arg(&lake)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn poslake")
    };

    // Slow on purpose: one file in flight at a time, so the signal lands mid-run.
    let child = run(&["--parsers", "1", "--downloaders", "1", "--max-files-in-flight", "1", "--batch-files", "1"]);
    while !lake.join("catalog.db").exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    // It drains and exits with 130, the code of an interrupted command, and its summary says it stopped early.
    assert_eq!(out.status.code(), Some(130), "an interrupted run drains and exits with 130: {:?}", out.status);
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json summary");
    assert_eq!(first["interrupted"], true);
    eprintln!("first run ingested {} of {} files before the interrupt", first["files"], report.files);

    let wh = Warehouse::open(&lake).await.expect("open");
    let ingested = ledger_paths(&wh).await;
    let want: BTreeSet<String> =
        manifest.iter().filter(|m| ingested.contains(&m.path)).flat_map(|m| m.keys.iter().cloned()).collect();
    let got = header_keys(&wh).await;
    assert_eq!(got.len(), want.len(), "no key twice, none missing");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "exactly the keys of the files in the ledger");
    drop(wh);

    let second = run(&[]).wait_with_output().expect("second run");
    assert!(second.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json summary");
    assert_eq!(summary["interrupted"], false);
    let wh = Warehouse::open(&lake).await.expect("reopen");
    let got = header_keys(&wh).await;
    let all: BTreeSet<String> = manifest.iter().flat_map(|m| m.keys.iter().cloned()).collect();
    assert_eq!(got.len(), all.len());
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), all);
}

/// The real stages wrapped so that a parser panics on some files and the writer panics once: the supervisor
/// restarts them, and every file still lands exactly once.
struct Flaky {
    inner: poslake::ingest::PosStages,
    parse_panics: std::sync::Mutex<BTreeSet<String>>,
    write_panicked: std::sync::atomic::AtomicBool,
    /// Files whose every read fails, as a file still being written or not yet readable would.
    unreadable: BTreeSet<String>,
}

impl poslake_actors::Stages for Flaky {
    type File = poslake::ingest::staging::StagedFile;
    type Fetched = bytes::Bytes;
    type Parsed = poslake::ingest::ParsedItem;
    type Batch = poslake::ingest::PosBatch;
    type BatchInfo = Arc<Vec<poslake::dedup::DedupKey>>;
    type Error = poslake::ingest::IngestError;

    fn size(file: &Self::File) -> u64 {
        file.size
    }
    fn discover(&self) -> futures::stream::BoxStream<'static, Result<Self::File, Self::Error>> {
        self.inner.discover()
    }
    async fn fetch(&self, file: &Self::File) -> Result<Self::Fetched, Self::Error> {
        if self.unreadable.contains(&file.path) {
            let source = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
            return Err(poslake::ingest::staging::StagingError::Io { path: file.path.clone(), source }.into());
        }
        self.inner.fetch(file).await
    }
    fn parse(&self, file: &Self::File, fetched: Self::Fetched) -> Self::Parsed {
        if self.parse_panics.lock().expect("lock").remove(&file.path) {
            panic!("injected parser panic on {}", file.path);
        }
        self.inner.parse(file, fetched)
    }
    async fn archive(&self, parsed: &Self::Parsed) -> Result<(), Self::Error> {
        self.inner.archive(parsed).await
    }
    fn failed(
        &self,
        file: &Self::File,
        stage: &'static str,
        attempts: u32,
        kind: &'static str,
        reason: String,
    ) -> Self::Parsed {
        self.inner.failed(file, stage, attempts, kind, reason)
    }
    async fn dedup(&self, items: Vec<Self::Parsed>) -> Result<Self::Batch, Self::Error> {
        self.inner.dedup(items).await
    }
    fn batch_info(batch: &Self::Batch) -> Self::BatchInfo {
        poslake::ingest::PosStages::batch_info(batch)
    }
    async fn write(&self, batch: &Self::Batch) -> Result<poslake_actors::WriteReport, Self::Error> {
        // Before anything is written: a panic here must lose nothing and duplicate nothing.
        if !self.write_panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected writer panic");
        }
        self.inner.write(batch).await
    }
    async fn finish(&self) -> Result<(), Self::Error> {
        self.inner.finish().await
    }
    fn abandon(&self, info: &Self::BatchInfo) {
        self.inner.abandon(info)
    }
    fn is_retryable(error: &Self::Error) -> bool {
        error.is_retryable()
    }
    fn failure_kind(error: &Self::Error) -> &'static str {
        <poslake::ingest::PosStages as poslake_actors::Stages>::failure_kind(error)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_parser_and_writer_panics_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = generate(&GenerateArgs {
        out: staging.clone(),
        seed: 21,
        sites: 6,
        days: 1,
        files_per_day: 4,
        min_transactions: 10,
        max_transactions: 30,
        duplicate_transaction_rate: 0.05,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");
    let paths = IngestPaths { staging, lake: dir.path().join("lake"), archive: None, catalog: None };
    let inner = poslake::ingest::PosStages::open(&IngestSetup::new(paths.clone()), "flaky".into()).await.expect("open");
    let victims: BTreeSet<String> = manifest.iter().step_by(5).map(|m| m.path.clone()).collect();
    let stages = Arc::new(Flaky {
        inner,
        parse_panics: std::sync::Mutex::new(victims.clone()),
        write_panicked: std::sync::atomic::AtomicBool::new(false),
        unreadable: BTreeSet::new(),
    });
    let snapshot = poslake_actors::run(stages.clone(), pipeline(), Arc::new(Progress::default())).await.expect("run");
    assert!(snapshot.restarts as usize > victims.len(), "each panic restarted an actor: {snapshot:?}");
    assert!(stages.parse_panics.lock().expect("lock").is_empty(), "every victim was parsed (and panicked) once");

    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let got = header_keys(&wh).await;
    let all: BTreeSet<String> = manifest.iter().flat_map(|m| m.keys.iter().cloned()).collect();
    let ledger = ledger_paths(&wh).await;
    let missing: Vec<&String> = manifest.iter().map(|m| &m.path).filter(|p| !ledger.contains(*p)).collect();
    assert!(missing.is_empty(), "files missing from the ledger: {missing:?}; {snapshot:?}");
    if got.len() != all.len() {
        let have: BTreeSet<&String> = got.iter().collect();
        let lost: Vec<&String> = all.iter().filter(|k| !have.contains(k)).collect();
        let files: Vec<&String> =
            manifest.iter().filter(|m| m.keys.iter().any(|k| lost.contains(&k))).map(|m| &m.path).collect();
        let mut rows = Vec::new();
        for b in wh.scan("file_ledger").await.expect("scan") {
            let path = column::<StringArray>(&b, "path");
            let new = column::<arrow_array::Int32Array>(&b, "new_transactions");
            let dup = column::<arrow_array::Int32Array>(&b, "duplicate_transactions");
            for i in 0..b.num_rows() {
                if files.contains(&&path.value(i).to_owned()) {
                    rows.push((path.value(i).to_owned(), new.value(i), dup.value(i)));
                }
            }
        }
        panic!("{} keys lost, from files {files:?}; their ledger rows {rows:?}; {snapshot:?}", lost.len());
    }
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), all);
    assert_eq!(wh.row_count("file_ledger").await.expect("count"), report.files);
    assert_eq!(wh.row_count("dead_letters").await.expect("count"), 0);
}

/// A file whose reads keep failing is dead-lettered with the reason, and its ledger row defers it: the next run
/// lists it again and lands it, while a file refused for what it is stays done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_could_not_be_read_is_tried_again_by_the_next_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    generate(&GenerateArgs {
        out: staging.clone(),
        seed: 23,
        sites: 3,
        days: 1,
        files_per_day: 3,
        min_transactions: 5,
        max_transactions: 10,
        duplicate_file_rate: 0.0,
        malformed_rate: 0.0,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");
    // A FIFO is refused for what it is: a dead letter that stays done.
    let fifo = std::ffi::CString::new(staging.join("pipe.xml").into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let paths = IngestPaths { staging, lake: dir.path().join("lake"), archive: None, catalog: None };
    let inner =
        poslake::ingest::PosStages::open(&IngestSetup::new(paths.clone()), "unreadable".into()).await.expect("open");
    let victim = manifest[2].path.clone();
    let stages = Arc::new(Flaky {
        inner,
        parse_panics: std::sync::Mutex::new(BTreeSet::new()),
        write_panicked: std::sync::atomic::AtomicBool::new(true),
        unreadable: BTreeSet::from([victim.clone()]),
    });
    let snapshot = poslake_actors::run(stages, pipeline(), Arc::new(Progress::default())).await.expect("run");
    assert_eq!(snapshot.totals.dead_letters, 2, "{snapshot:?}");
    assert_eq!(snapshot.totals.deferred, 1, "the FIFO is final, the unreadable file deferred: {snapshot:?}");
    assert!(snapshot.retries >= 2, "the reads were retried before giving up: {snapshot:?}");
    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let mut dead = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let (path, stage, kind) =
            (column::<StringArray>(&b, "path"), column::<StringArray>(&b, "stage"), column::<StringArray>(&b, "kind"));
        dead.extend(
            (0..b.num_rows()).map(|i| (path.value(i).to_owned(), stage.value(i).to_owned(), kind.value(i).to_owned())),
        );
    }
    dead.sort();
    assert_eq!(
        dead,
        [
            ("pipe.xml".to_owned(), "download".to_owned(), "not_a_file".to_owned()),
            (victim.clone(), "download".to_owned(), "gave_up".to_owned()),
        ]
    );
    let without: BTreeSet<String> =
        manifest.iter().filter(|m| m.path != victim).flat_map(|m| m.keys.iter().cloned()).collect();
    assert_eq!(header_keys(&wh).await.into_iter().collect::<BTreeSet<_>>(), without);
    drop(wh);

    let second =
        ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await.expect("second");
    assert_eq!((second.files, second.dead_letters), (1, 0), "only the deferred file is taken again: {second:?}");
    let wh = Warehouse::open(&paths.lake).await.expect("reopen");
    let all: BTreeSet<String> = manifest.iter().flat_map(|m| m.keys.iter().cloned()).collect();
    let got = header_keys(&wh).await;
    assert_eq!(got.len(), all.len(), "each key once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), all);
}

/// An archive copy that cannot be written is tried `max_attempts` times in all, then the file is deferred to the next
/// run; one whose every archive name holds other bytes is a dead letter of kind `name_taken` at once. Until session
/// 27 the archiver sent a failed file back to the download, where it was fetched, parsed and archived again: each of
/// `max_attempts` rounds tried `max_attempts` writes (9 writes, 8 retries a file at the default 3), and a taken name,
/// which no retry can free, ended as a deferred `gave_up` after three rounds, to be taken again by every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_copy_is_tried_max_attempts_times_and_a_taken_name_is_a_dead_letter_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    generate(&GenerateArgs {
        out: staging.clone(),
        seed: 27,
        sites: 4,
        days: 1,
        files_per_day: 2,
        min_transactions: 3,
        max_transactions: 5,
        duplicate_file_rate: 0.0,
        malformed_rate: 0.0,
        gzip_rate: 0.0,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");
    let lake = dir.path().join("lake");
    let raw = lake.join("bronze/raw");
    // Every file of one vendor fails its archive copy: that vendor's folder is a regular file.
    let blocked = manifest[0].dialect;
    std::fs::create_dir_all(&raw).expect("raw");
    std::fs::write(raw.join(format!("vendor={}", blocked.id())), b"not a folder").expect("block");
    let unwritable: BTreeSet<String> =
        manifest.iter().filter(|m| m.dialect == blocked).map(|m| m.path.clone()).collect();
    // One file of another vendor finds each of its three archive names holding other bytes.
    let taken = manifest.iter().find(|m| m.dialect != blocked).expect("a second vendor");
    let bytes = std::fs::read(staging.join(&taken.path)).expect("read");
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let folder = raw.join(format!("vendor={}/business_date={}", taken.dialect.id(), taken.business_date));
    std::fs::create_dir_all(&folder).expect("folder");
    let base = taken.path.rsplit('/').next().expect("name");
    for name in [base.to_owned(), format!("{}.{base}", &hash[..16]), format!("{hash}.{base}")] {
        std::fs::write(folder.join(name), b"other bytes").expect("occupy");
    }

    let paths = IngestPaths { staging, lake, archive: None, catalog: None };
    let summary =
        ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await.expect("ingest");
    let n = unwritable.len() as u64;
    assert!(n >= 1);
    assert_eq!((summary.dead_letters, summary.deferred), (n + 1, n), "{summary:?}");
    // Two retries a file at the default three tries, and none for the taken name.
    assert_eq!(summary.retries, 2 * n, "{summary:?}");
    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let mut dead = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let (path, stage, kind) =
            (column::<StringArray>(&b, "path"), column::<StringArray>(&b, "stage"), column::<StringArray>(&b, "kind"));
        let attempts = column::<arrow_array::Int32Array>(&b, "attempts");
        dead.extend((0..b.num_rows()).map(|i| {
            (path.value(i).to_owned(), stage.value(i).to_owned(), kind.value(i).to_owned(), attempts.value(i))
        }));
    }
    dead.sort();
    let mut want: Vec<(String, String, String, i32)> =
        unwritable.iter().map(|p| (p.clone(), "archive".to_owned(), "gave_up".to_owned(), 3)).collect();
    want.push((taken.path.clone(), "archive".to_owned(), "name_taken".to_owned(), 1));
    want.sort();
    assert_eq!(dead, want);
    // The others landed, whole; the archive's other bytes were left as they were.
    let landed: BTreeSet<String> = manifest
        .iter()
        .filter(|m| !unwritable.contains(&m.path) && m.path != taken.path)
        .flat_map(|m| m.keys.iter().cloned())
        .collect();
    assert_eq!(header_keys(&wh).await.into_iter().collect::<BTreeSet<_>>(), landed);
    assert_eq!(std::fs::read(folder.join(base)).expect("kept"), b"other bytes");
    // A replay filter names the values no dead letter has (a typo would select nothing, silently).
    let filter = poslake::ingest::replay::ReplayFilter {
        stages: vec!["archive".into(), "archvie".into()],
        kinds: vec!["name_taken".into(), "taken".into()],
        path_prefix: None,
    };
    let absent = poslake::ingest::replay::absent_values(&wh, &filter).await.expect("absent");
    assert_eq!(
        absent,
        [
            "no dead letter of this lake has stage \"archvie\" (its stages: archive)",
            "no dead letter of this lake has kind \"taken\" (its kinds: gave_up, name_taken)",
        ]
    );
}

/// A file that can never be read is deferred by `max_deferred_runs` - 1 runs, then given up as a dead letter that
/// says so: it does not add ledger and dead-letter rows to every run forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deferred_by_as_many_runs_as_allowed_is_given_up() {
    deferred_runs_are_counted(DedupConfig::default()).await;
}

/// The same with the deferrals counted in a Redis store's file index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deferred_by_as_many_runs_as_allowed_is_given_up_with_redis() {
    let server = common::redis::RedisServer::start();
    deferred_runs_are_counted(server.bitmap()).await;
}

async fn deferred_runs_are_counted(dedup: DedupConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    generate(&GenerateArgs {
        out: staging.clone(),
        seed: 24,
        sites: 2,
        days: 1,
        files_per_day: 2,
        min_transactions: 3,
        max_transactions: 5,
        duplicate_file_rate: 0.0,
        malformed_rate: 0.0,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");
    let victim = manifest[1].path.clone();
    let paths = IngestPaths { staging, lake: dir.path().join("lake"), archive: None, catalog: None };
    let setup = IngestSetup { max_deferred_runs: 3, dedup, ..IngestSetup::new(paths.clone()) };
    let mut outcomes = Vec::new();
    for run in 0..4 {
        let inner = poslake::ingest::PosStages::open(&setup, format!("run-{run}")).await.expect("open");
        let stages = Arc::new(Flaky {
            inner,
            parse_panics: std::sync::Mutex::new(BTreeSet::new()),
            write_panicked: std::sync::atomic::AtomicBool::new(true),
            unreadable: BTreeSet::from([victim.clone()]),
        });
        let s = poslake_actors::run(stages, pipeline(), Arc::new(Progress::default())).await.expect("run");
        outcomes.push((s.totals.files, s.totals.dead_letters, s.totals.deferred));
    }
    // Run 1 takes every file; runs 2 and 3 only the victim, deferred twice in all, then given up; run 4 nothing.
    assert_eq!(outcomes, [(manifest.len() as u64, 1, 1), (1, 1, 1), (1, 1, 0), (0, 0, 0)]);
    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let mut ledger = Vec::new();
    for b in wh.scan("file_ledger").await.expect("scan") {
        let (path, outcome) = (column::<StringArray>(&b, "path"), column::<StringArray>(&b, "outcome"));
        ledger.extend((0..b.num_rows()).filter(|&i| path.value(i) == victim).map(|i| outcome.value(i).to_owned()));
    }
    ledger.sort();
    assert_eq!(ledger, ["dead_letter", "deferred", "deferred"]);
    let mut reasons = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let reason = column::<StringArray>(&b, "reason");
        reasons.extend((0..b.num_rows()).map(|i| reason.value(i).to_owned()));
    }
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.contains("deferred by 2 earlier runs")).count(), 1, "{reasons:?}");
}

/// Dead letters are done for `ingest`, but `replay` takes them again once what refused them is fixed: a corrected
/// file re-sent under the same name and size (read from staging, which `ingest` skips as seen), and files refused
/// under a lower limit and gone from staging since, or replaced there by a folder (read from the bronze archive). A
/// dead letter retired by a corrected copy of another size is not taken; a file that lands is not taken again; one
/// that can be read from nowhere is a dead letter again, with the reason; a second replay at once is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_dead_letters_again_once_what_refused_them_is_fixed() {
    use poslake::ingest::replay::ReplayFilter;
    use poslake::ingest::{dead_letters, replay};
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let (fixed, fixed_keys) = poslake::generate::generate_file(poslake::Dialect::ArtsPoslog, 31, 4);
    let (gone, gone_keys) = poslake::generate::generate_file(poslake::Dialect::VerifoneCommander, 32, 4);
    let (folder, folder_keys) = poslake::generate::generate_file(poslake::Dialect::XstorePoslog, 33, 3);
    let (resized, _) = poslake::generate::generate_file(poslake::Dialect::NaxmlPassport, 34, 3);
    let (resized_again, resized_keys) = poslake::generate::generate_file(poslake::Dialect::NaxmlPassport, 35, 5);
    assert_ne!(resized.len(), resized_again.len());
    // Broken at the same size: the root's closing `>` overwritten.
    let end = fixed.rfind('>').expect("a closing tag");
    let broken = format!("{}!{}", &fixed[..end], &fixed[end + 1..]);
    assert_eq!(broken.len(), fixed.len());
    std::fs::write(staging.join("fixed.xml"), &broken).expect("write");
    std::fs::write(staging.join("gone.xml"), &gone).expect("write");
    std::fs::write(staging.join("folder.xml"), &folder).expect("write");
    std::fs::write(staging.join("resized.xml"), &resized).expect("write");
    let fifo = std::ffi::CString::new(staging.join("pipe.xml").into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let paths = IngestPaths { staging: staging.clone(), lake: dir.path().join("lake"), archive: None, catalog: None };
    let defaults = IngestSetup::new(paths.clone());
    // Every value longer than 8 bytes refused: every XML file is a dead letter of the parser.
    let mut strict = defaults.clone();
    strict.parse.max_text_bytes = 8;
    let first = ingest(&strict, pipeline(), Arc::new(Progress::default())).await.expect("first");
    assert_eq!((first.files, first.dead_letters, first.new_transactions), (5, 5, 0), "{first:?}");

    std::fs::write(staging.join("fixed.xml"), &fixed).expect("rewrite");
    std::fs::remove_file(staging.join("gone.xml")).expect("remove");
    std::fs::remove_file(staging.join("pipe.xml")).expect("remove");
    // A folder now where the file was: the archive still has the file.
    std::fs::remove_file(staging.join("folder.xml")).expect("remove");
    std::fs::create_dir(staging.join("folder.xml")).expect("mkdir");
    // Re-sent corrected at another size: a new file, which the ingest takes, and which retires the old one.
    std::fs::write(staging.join("resized.xml"), &resized_again).expect("rewrite");
    let second = ingest(&defaults, pipeline(), Arc::new(Progress::default())).await.expect("second");
    assert_eq!((second.files, second.already_ingested), (1, 1), "ingest skips the corrected file: {second:?}");

    // What a replay would take, narrowed by stage and by path.
    let parse_only = ReplayFilter { stages: vec!["parse".into()], ..ReplayFilter::default() };
    let selected = dead_letters(&paths.lake, None, &parse_only).await.expect("select");
    let names: Vec<&str> = selected.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["fixed.xml", "folder.xml", "gone.xml"], "resized.xml is retired by its corrected copy");
    assert!(selected.iter().all(|f| f.kind == "text_too_large" && f.content_hash.len() == 64), "{selected:?}");
    assert_eq!(selected[2].bytes, gone.len() as u64);
    // The command line says the same, and changes nothing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["replay", "--dry-run", "--stage", "parse", "--staging"])
        .arg(&staging)
        .arg("--lake")
        .arg(&paths.lake)
        .output()
        .expect("replay --dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<&str> = text.lines().filter_map(|l| l.split('\t').next().filter(|_| l.contains('\t'))).collect();
    assert_eq!(listed, ["fixed.xml", "folder.xml", "gone.xml"], "{text}");
    assert!(text.contains("parse/text_too_large"), "{text}");
    assert!(text.contains("3 dead-lettered files"), "{text}");
    let by_path = ReplayFilter { path_prefix: Some("pipe".into()), ..ReplayFilter::default() };
    let selected = dead_letters(&paths.lake, None, &by_path).await.expect("select");
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_eq!((selected[0].stage.as_str(), selected[0].kind.as_str()), ("download", "not_a_file"));

    let third =
        replay(&defaults, &ReplayFilter::default(), pipeline(), Arc::new(Progress::default())).await.expect("replay");
    assert_eq!(third.replayed, Some(4), "{third:?}");
    assert_eq!((third.files, third.dead_letters), (4, 1), "{third:?}");
    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let want: BTreeSet<String> =
        fixed_keys.iter().chain(&gone_keys).chain(&folder_keys).chain(&resized_keys).cloned().collect();
    let got = header_keys(&wh).await;
    assert_eq!(got.len(), want.len(), "each key once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    let mut dead = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let (path, kind, reason) =
            (column::<StringArray>(&b, "path"), column::<StringArray>(&b, "kind"), column::<StringArray>(&b, "reason"));
        dead.extend(
            (0..b.num_rows())
                .filter(|&i| kind.value(i) == "missing")
                .map(|i| (path.value(i).to_owned(), reason.value(i).to_owned())),
        );
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "pipe.xml");
    assert!(dead[0].1.contains("no longer in staging"), "{dead:?}");
    drop(wh);

    // One replay of a lake at a time: a second one is refused while the first holds its lock.
    let held = std::fs::File::open(paths.lake.join("replay.lock")).expect("the replay's lock file");
    held.lock().expect("lock");
    let refused = replay(&defaults, &ReplayFilter::default(), pipeline(), Arc::new(Progress::default())).await;
    let refused = refused.map(|s| s.files).expect_err("a second replay at once");
    assert!(
        matches!(
            &refused,
            poslake::ingest::IngestRunError::Open(poslake::ingest::IngestError::ReplayRunning(lake))
                if lake.ends_with("lake")
        ),
        "{refused:?}"
    );
    drop(held);

    // Only the file that is still a dead letter is taken again, and lands nothing.
    let fourth = replay(&defaults, &ReplayFilter::default(), pipeline(), Arc::new(Progress::default()))
        .await
        .expect("replay again");
    assert_eq!((fourth.replayed, fourth.files, fourth.dead_letters, fourth.new_transactions), (Some(1), 1, 1, 0));
    let wh = Warehouse::open(&paths.lake).await.expect("reopen");
    assert_eq!(wh.row_count("sales_header").await.expect("count"), want.len() as u64);
    drop(wh);

    // With the staging folder itself gone, a replay still runs (from the archive, which has no FIFO).
    std::fs::remove_dir_all(&staging).expect("remove staging");
    assert!(ingest(&defaults, pipeline(), Arc::new(Progress::default())).await.is_err(), "an ingest needs staging");
    let fifth = replay(&defaults, &ReplayFilter::default(), pipeline(), Arc::new(Progress::default()))
        .await
        .expect("replay without staging");
    assert_eq!((fifth.replayed, fifth.files, fifth.dead_letters), (Some(1), 1, 1));
}

/// A replay asks staging whether a file refused as too large from its listed size is still there (a file gone is
/// `missing`, as for any other, not `too_large` again), and does not look a name that is not UTF-8 up by the
/// ledger's lossy copy of it (the file seemed gone while staging still held it): it stays `unusable_name`, with what
/// to do. Both found by an audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_tells_a_file_gone_from_one_it_cannot_address() {
    use poslake::ingest::replay;
    use poslake::ingest::replay::ReplayFilter;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let (file, _) = poslake::generate::generate_file(poslake::Dialect::ArtsPoslog, 41, 4);
    for name in ["gone.xml", "kept.xml"] {
        std::fs::write(staging.join(name), &file).expect("write");
    }
    std::fs::write(staging.join(std::ffi::OsStr::from_bytes(b"bad\xff.xml")), &file).expect("write");
    let paths = IngestPaths { staging: staging.clone(), lake: dir.path().join("lake"), archive: None, catalog: None };
    let mut small = IngestSetup::new(paths.clone());
    small.parse.max_decompressed_bytes = 100;
    let first = ingest(&small, pipeline(), Arc::new(Progress::default())).await.expect("ingest");
    assert_eq!((first.files, first.dead_letters), (3, 3), "{first:?}");

    std::fs::remove_file(staging.join("gone.xml")).expect("remove");
    let again = replay(&small, &ReplayFilter::default(), pipeline(), Arc::new(Progress::default())).await;
    assert_eq!(again.expect("replay").dead_letters, 3);
    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let mut kinds: Vec<(String, String)> = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let (path, kind) = (column::<StringArray>(&b, "path"), column::<StringArray>(&b, "kind"));
        kinds.extend((0..b.num_rows()).map(|i| (path.value(i).to_owned(), kind.value(i).to_owned())));
    }
    kinds.sort();
    let want = [
        ("bad\u{FFFD}.xml", "unusable_name"),
        ("bad\u{FFFD}.xml", "unusable_name"),
        ("gone.xml", "missing"),
        ("gone.xml", "too_large"),
        ("kept.xml", "too_large"),
        ("kept.xml", "too_large"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(p, k)| (p.to_string(), k.to_string())).collect();
    assert_eq!(kinds, want);
    drop(wh);

    // Removed from staging, that name is missing, not unusable (whose advice, to rename it, no longer applies).
    std::fs::remove_file(staging.join(std::ffi::OsStr::from_bytes(b"bad\xff.xml"))).expect("remove");
    replay(&small, &ReplayFilter::default(), pipeline(), Arc::new(Progress::default())).await.expect("replay again");
    let wh = Warehouse::open(&paths.lake).await.expect("open");
    let missing = common::scalar(&wh, "SELECT count(*) FROM dead_letters WHERE kind = 'missing' AND path LIKE 'bad%'");
    assert_eq!(missing.await, 1);
}

/// As a service (`ingest --every 1s`), poslake takes each file as it arrives, printing one JSON line a run, and
/// SIGTERM (what `docker stop` sends) ends it cleanly: exit 0, every file landed once, and a JSON log stays JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_service_each_run_takes_what_arrived_and_sigterm_ends_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, lake) = (dir.path().join("staging"), dir.path().join("lake"));
    std::fs::create_dir_all(&staging).expect("staging");
    let mut keys = BTreeSet::new();
    // Written under a hidden name, then renamed: a run never sees half a file.
    let mut arrive = |seeds: std::ops::Range<u64>| {
        for seed in seeds {
            let (xml, k) = poslake::generate::generate_file(poslake::Dialect::NaxmlPassport, seed, 3);
            std::fs::write(staging.join(".partial"), xml).expect("write");
            std::fs::rename(staging.join(".partial"), staging.join(format!("{seed}.xml"))).expect("rename");
            keys.extend(k);
        }
    };
    arrive(0..3);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--every", "1s", "--json", "--log-format", "json", "--staging"])
        .arg(&staging)
        .arg("--lake")
        .arg(&lake)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn poslake");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).expect("read the log"));
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let run = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object a line: {e}: {line}"));
            if tx.send(run).is_err() {
                break;
            }
        }
    });
    let next_run_with_files = || loop {
        let run = rx.recv_timeout(Duration::from_secs(120)).expect("a run's summary");
        if run["files"] != 0 {
            return run;
        }
    };
    let first = next_run_with_files();
    assert_eq!((first["files"].as_u64(), first["new_transactions"].as_u64()), (Some(3), Some(9)), "{first}");
    arrive(3..5);
    let later = next_run_with_files();
    assert_eq!((later["files"].as_u64(), later["already_ingested"].as_u64()), (Some(2), Some(3)), "{later}");
    assert_eq!(later["new_transactions"].as_u64(), Some(6), "{later}");

    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "SIGTERM ends a service cleanly: {status:?}");
    // With `--log-format json`, the log is one JSON object a line, the notice of the signal included.
    let log = log.join().expect("log reader");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}")))
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("stopping"))), "{log}");
    // Said once, not at every run: an idle service would log it every interval.
    assert_eq!(lines.iter().filter(|l| l["fields"]["message"] == "dedup store").count(), 1, "{log}");
    let wh = Warehouse::open(&lake).await.expect("open");
    let got = header_keys(&wh).await;
    assert_eq!(got.len(), keys.len(), "each key once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), keys);
    assert_eq!(ledger_paths(&wh).await.len(), 5);
}

/// `--every 0` runs once: it turns off the service interval a configuration file sets (`every_secs`), so that an
/// operator can run one ingest with a service's configuration.
#[test]
fn every_zero_runs_once_over_a_configured_service_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, lake, config) = (dir.path().join("staging"), dir.path().join("lake"), dir.path().join("c.toml"));
    std::fs::create_dir_all(&staging).expect("staging");
    let (xml, keys) = poslake::generate::generate_file(poslake::Dialect::NaxmlPassport, 7, 2);
    std::fs::write(staging.join("7.xml"), xml).expect("write");
    std::fs::write(&config, "every_secs = 600\n").expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--every", "0", "--json", "--config"])
        .arg(&config)
        .arg("--staging")
        .arg(&staging)
        .arg("--lake")
        .arg(&lake)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn poslake");
    let status = common::exit_within(&mut child, Duration::from_secs(120))
        .expect("still running after 120 s: --every 0 did not run once");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out).expect("read");
    assert_eq!(status.code(), Some(0), "{out}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("one JSON summary");
    assert_eq!(summary["new_transactions"].as_u64(), Some(keys.len() as u64), "{summary}");
}

/// A service that cannot start (its staging folder is missing, or is the lake) says so at once rather than failing
/// every run; one whose runs keep failing once started (here, its staging folder went away) gives up after
/// `max_failed_runs` in a row, with the cause, so that an orchestrator sees it.
#[test]
fn a_service_that_cannot_start_says_so_and_one_whose_runs_keep_failing_exits_with_the_cause() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = |staging: &std::path::Path, lake: &std::path::Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        command.args(["ingest", "--every", "1s", "--json", "--staging"]).arg(staging).arg("--lake").arg(lake);
        command.env("RUST_LOG", "error");
        command
    };
    let (staging, lake) = (dir.path().join("staging"), dir.path().join("lake"));
    // A staging folder inside the lake's own files (here its warehouse) would take them for POS files.
    let inside = dir.path().join("warehouse");
    std::fs::create_dir_all(&inside).expect("a lake's warehouse folder");
    for (staging, lake, cause) in [
        (&staging, &lake, "no such folder"),
        (&dir.path().to_path_buf(), &dir.path().to_path_buf(), "is the lake folder too"),
        (&inside, &dir.path().to_path_buf(), "lies inside the lake"),
    ] {
        let out = service(staging, lake).output().expect("run poslake");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("the service cannot start") && stderr.contains(cause), "{stderr}");
        assert!(!stderr.contains("the run failed"), "no run was tried: {stderr}");
        // With --json the failure is on stdout too, as one JSON object.
        let stdout: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        let error = stdout["error"].as_str().expect("an error");
        assert!(error.contains("the service cannot start") && error.contains(cause), "{stdout}");
    }

    std::fs::create_dir_all(&staging).expect("staging");
    let mut child = service(&staging, &lake)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn poslake");
    let mut runs = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = runs.next().expect("a first run").expect("its summary");
    assert!(first.contains("\"files\""), "{first}");
    std::fs::remove_dir_all(&staging).expect("remove staging");
    let later: Vec<String> = runs.map(|line| line.expect("a line")).collect();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("3 runs in a row failed") && stderr.contains("no such folder"), "{stderr}");
    assert_eq!(stderr.matches("the run failed; the next one tries again").count(), 2, "{stderr}");
    // Stdout stays JSON Lines, one line a run: each failed run's error, the last one with why the service ended.
    let failed: Vec<serde_json::Value> =
        later.iter().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|f| f["error"].as_str().is_some_and(|e| e.contains("no such folder"))), "{failed:?}");
    assert!(failed[2]["error"].as_str().is_some_and(|e| e.contains("3 runs in a row failed")), "{failed:?}");
}

/// An error that quotes a name from outside (here the staging folder's) shows its control characters escaped: a
/// terminal never runs an escape sequence, nor prints a NUL, from a file or folder name.
#[test]
fn errors_escape_control_characters_of_names_they_quote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--staging"])
        .arg(dir.path().join("gone\u{1b}[31mred\u{202e}lmx.exe"))
        .arg("--lake")
        .arg(dir.path().join("lake"))
        .output()
        .expect("run poslake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gone\\u{1b}[31mred") && stderr.contains("no such folder"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // A right-to-left override would show the rest of the line reversed.
    assert!(stderr.contains("red\\u{202e}lmx") && !stderr.contains('\u{202e}'), "{stderr:?}");
}

/// A file whose values parse but do not fit the tables (a total beyond decimal(18, 4)) is a dead letter with the
/// reason, found while its rows are built on the parser pool; the other files of the run land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_tables_cannot_hold_dead_letters_only_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let (good, good_keys) = poslake::generate::generate_file(poslake::Dialect::VerifoneCommander, 11, 5);
    let (bad, _) = poslake::generate::generate_file(poslake::Dialect::VerifoneCommander, 12, 5);
    let start = bad.find("<trTotWTax>").expect("a total") + "<trTotWTax>".len();
    let end = start + bad[start..].find('<').expect("its end");
    let bad = format!("{}123456789012345678.5{}", &bad[..start], &bad[end..]);
    std::fs::write(staging.join("good.xml"), good).expect("write");
    std::fs::write(staging.join("bad.xml"), bad).expect("write");
    let paths = IngestPaths { staging, lake: dir.path().join("lake"), archive: None, catalog: None };

    let summary =
        ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await.expect("ingest");
    assert_eq!((summary.files, summary.dead_letters), (2, 1));
    assert_eq!(summary.new_transactions, good_keys.len() as u64);

    let wh = Warehouse::open(&paths.lake).await.expect("open");
    assert_eq!(wh.row_count("sales_header").await.expect("count"), good_keys.len() as u64);
    let mut dead = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let (path, kind, reason) =
            (column::<StringArray>(&b, "path"), column::<StringArray>(&b, "kind"), column::<StringArray>(&b, "reason"));
        dead.extend(
            (0..b.num_rows()).map(|i| (path.value(i).to_owned(), kind.value(i).to_owned(), reason.value(i).to_owned())),
        );
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].0.ends_with("bad.xml"), "{dead:?}");
    assert_eq!(dead[0].1, "schema");
    // The reason says which way the value does not fit, and in which transaction.
    assert!(dead[0].2.contains("is too large for decimal(18, 4)"), "{dead:?}");
    assert!(dead[0].2.contains("(transaction site ") && dead[0].2.contains(", sequence "), "{dead:?}");
}

/// The embedded dedup store lost between runs (its directory deleted) is refilled at the next start from the
/// committed batches, so copies of every file under new names land nothing new: no key twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_embedded_store_is_refilled_and_re_sent_files_land_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = clean_corpus(&staging, 11, (3, 2, 2), (10, 20));
    let lake = dir.path().join("lake");
    let first = run_ingest(&staging, &lake).await;
    assert_eq!(first.new_transactions, report.unique_keys);

    std::fs::remove_dir_all(lake.join("dedup/store")).expect("lose the store");
    resent_files_land_nothing(&staging, dir.path(), &lake, &report).await;
}

/// A commit with more keys than the embedded store takes through its memtable (10,000) is added as a sorted table
/// of its own: `poslake dedup stats` counts each key once, and the same files re-sent under new names land nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_commit_is_added_as_a_table_and_the_next_run_lands_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = clean_corpus(&staging, 12, (5, 3, 10), (75, 80));
    assert!(report.unique_keys >= 10_000, "{} keys: too few for a table add", report.unique_keys);
    let lake = dir.path().join("lake");
    let first = run_ingest(&staging, &lake).await;
    assert_eq!(first.new_transactions, report.unique_keys);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["dedup", "stats", "--lake"])
        .arg(&lake)
        .output()
        .expect("dedup stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let tables: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("sorted tables: ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no table count in:\n{text}"));
    assert!(tables >= 1, "{text}");
    let adds: u64 = text
        .lines()
        .find(|l| l.starts_with("all "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no partition row in:\n{text}"));
    assert_eq!(adds, report.unique_keys, "{text}");

    // `poslake tables`: sales_header's row count, snapshots and manifests, as the lake has them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["tables", "--lake"])
        .arg(&lake)
        .output()
        .expect("tables");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("sales_header "))
        .map(|l| l.split_whitespace().skip(2).filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| panic!("no sales_header row in:\n{text}"));
    let wh = Warehouse::open(&lake).await.expect("open");
    let table = wh.load("sales_header").await.expect("load");
    let snapshots = table.metadata().snapshots().count() as u64;
    assert_eq!(
        row,
        vec![snapshots, snapshots, report.unique_keys],
        "snapshots, manifests (one per commit), rows: {text}"
    );
    drop(wh);

    resent_files_land_nothing(&staging, dir.path(), &lake, &report).await;
}

/// Staging that grows between runs: each run skips exactly the files earlier runs ingested. The third run's start
/// brings the on-disk file index up to date from only the ledger files added since the second run's start; with
/// the index's record of that removed (a lost store), the whole ledger is read again and the answer is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_skips_exactly_the_files_earlier_runs_ingested() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = dir.path().join("corpus");
    let report = clean_corpus(&corpus, 13, (3, 3, 2), (5, 10));
    let mut files: Vec<_> = walkdir(&corpus)
        .into_iter()
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).unwrap_or_default().starts_with("manifest."))
        .collect();
    files.sort();
    assert_eq!(files.len() as u64, report.files);
    let third = files.len() / 3;
    let (staging, lake) = (dir.path().join("staging"), dir.path().join("lake"));
    let mut landed = 0u64;
    for (i, upto) in [third, 2 * third, files.len()].into_iter().enumerate() {
        let before = if i == 0 { 0 } else { [third, 2 * third][i - 1] };
        for f in &files[before..upto] {
            let to = staging.join(f.strip_prefix(&corpus).expect("under the corpus"));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(f, &to).expect("copy");
        }
        let summary = run_ingest(&staging, &lake).await;
        assert_eq!((summary.already_ingested, summary.files), (before as u64, (upto - before) as u64), "run {i}");
        landed += summary.new_transactions;
    }
    assert_eq!(landed, report.unique_keys);

    // A store whose record of the ledger is gone reads the whole ledger again.
    std::fs::remove_dir_all(lake.join("dedup/store")).expect("lose the store");
    let again = run_ingest(&staging, &lake).await;
    assert_eq!((again.already_ingested, again.files, again.new_transactions), (report.files, 0, 0));
}

/// An archive folder of its own (`archive`), even staging's own folder: every file is archived there and none in
/// the lake, and the next run lists nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_folder_inside_staging_is_not_ingested_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = clean_corpus(&staging, 31, (2, 2, 2), (3, 6));
    let archive = staging.clone();
    let paths = IngestPaths {
        staging: staging.clone(),
        lake: dir.path().join("lake"),
        archive: Some(archive.clone()),
        catalog: None,
    };
    let first = ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await.expect("run");
    assert_eq!((first.files, first.new_transactions), (report.files, report.unique_keys));
    let archived = walkdir(&archive.join("bronze/raw"));
    assert_eq!(archived.len() as u64, report.files, "every file archived in the folder");
    assert!(!paths.lake.join("bronze").exists(), "and none in the lake");
    let second = ingest(&IngestSetup::new(paths), pipeline(), Arc::new(Progress::default())).await.expect("run");
    assert_eq!((second.files, second.already_ingested), (0, report.files), "nothing listed from the archive");
}

/// Ingests copies of every generated file under new names into a lake that already holds them: nothing new lands,
/// every transaction is a duplicate, and `sales_header` still holds each key once.
async fn resent_files_land_nothing(
    staging: &std::path::Path,
    dir: &std::path::Path,
    lake: &std::path::Path,
    report: &Report,
) {
    let second = run_ingest(&resend(staging, dir), lake).await;
    assert_eq!(second.files, report.files);
    assert_eq!(second.new_transactions, 0, "{second:?}");
    assert_eq!(second.duplicate_transactions, report.unique_keys);
    let wh = Warehouse::open(lake).await.expect("open");
    assert_eq!(wh.row_count("sales_header").await.expect("count"), report.unique_keys);
}

/// Copies every generated file (not the manifest) under a new name into `<dir>/resent`, as a station re-sending its
/// files would.
fn resend(staging: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let resent = dir.join("resent");
    std::fs::create_dir_all(&resent).expect("mkdir");
    let mut copied = 0u64;
    for entry in walkdir(staging) {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.starts_with("manifest.") {
            continue;
        }
        std::fs::copy(&entry, resent.join(format!("again-{copied}-{name}"))).expect("copy");
        copied += 1;
    }
    assert!(copied > 0, "nothing to re-send in {}", staging.display());
    resent
}

/// One ingest of `staging` into `lake` on embedded defaults.
async fn run_ingest(staging: &std::path::Path, lake: &std::path::Path) -> IngestSummary {
    let paths = IngestPaths { staging: staging.to_path_buf(), lake: lake.to_path_buf(), archive: None, catalog: None };
    ingest(&IngestSetup::new(paths), pipeline(), Arc::new(Progress::default())).await.expect("ingest")
}

/// A corpus with no planted duplicates or malformed files.
fn clean_corpus(out: &std::path::Path, seed: u64, files: (u32, u32, u32), transactions: (u32, u32)) -> Report {
    let (sites, days, files_per_day) = files;
    generate(&GenerateArgs {
        out: out.to_path_buf(),
        seed,
        sites,
        days,
        files_per_day,
        min_transactions: transactions.0,
        max_transactions: transactions.1,
        duplicate_file_rate: 0.0,
        duplicate_transaction_rate: 0.0,
        malformed_rate: 0.0,
        ..GenerateArgs::default()
    })
    .expect("generate")
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// While discovery is held back by credits, a census counts the listing beside it, so that the run's size (and its
/// time left) is known before discovery reaches the end: until session 35 the progress bar showed `listing…` for
/// nearly the whole run. Discovery reports the files it passed over as already ingested, which tells how far into the
/// listing it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_census_counts_the_listing_while_discovery_is_held_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let corpus = |name: &str, seed: u64| {
        generate(&GenerateArgs {
            out: staging.join(name),
            seed,
            sites: 3,
            days: 2,
            files_per_day: 4,
            min_transactions: 5,
            max_transactions: 10,
            malformed_rate: 0.1,
            ..GenerateArgs::default()
        })
        .expect("generate")
    };
    let first = corpus("a", 61);
    let paths = IngestPaths { staging: staging.clone(), lake: dir.path().join("lake"), archive: None, catalog: None };
    let setup = IngestSetup { census_after: Duration::ZERO, ..IngestSetup::new(paths) };
    ingest(&setup, pipeline(), Arc::new(Progress::default())).await.expect("first ingest");
    let second = corpus("b", 62);

    // One file in flight at a time: discovery trails the census by far.
    let mut held_back = pipeline();
    held_back.limits.max_files = 1;
    let progress = Arc::new(Progress::default());
    let summary = ingest(&setup, held_back, progress.clone()).await.expect("second ingest");
    assert_eq!(summary.files, second.files);
    let s = progress.snapshot();
    assert_eq!(s.listing_size, Some(first.files + second.files), "the census counted every listed file");
    assert_eq!(s.passed_over, first.files, "discovery passed over the files already ingested");
    assert_eq!(s.discovered, second.files);
}
