//! Staging on Azure Blob Storage, against a real Azurite: a corpus ingested from a container lands exactly as the
//! same corpus ingested from a folder; a second run from the container adds nothing; staging poslake cannot read
//! fails at once with the reason.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::azurite::Azurite;
use common::proxy::Proxy;
use common::{counts, header_keys};
use poslake::generate::{GenerateArgs, Report, generate};
use poslake::lake::Warehouse;

fn ingest(staging: &str, lake: &Path, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(["ingest", "--json", "--staging", staging, "--lake"]).arg(lake).env("RUST_LOG", "warn");
    // Only the Azure settings the test gives: none from the machine running it.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AZURE") || k.starts_with("AZURITE")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run poslake")
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

/// A corpus of every dialect with malformed, resent and gzipped files and repeated transactions, generated into
/// `dir/staging`, and an Azurite with an empty `landing` container.
fn corpus(dir: &Path, seed: u64, transactions: (u32, u32)) -> (Azurite, std::path::PathBuf, Report) {
    let azurite = Azurite::start();
    azurite.create_container("landing");
    let staging = dir.join("staging");
    let report = generate(&GenerateArgs {
        out: staging.clone(),
        seed,
        sites: 6,
        days: 2,
        files_per_day: 3,
        min_transactions: transactions.0,
        max_transactions: transactions.1,
        duplicate_file_rate: 0.1,
        duplicate_transaction_rate: 0.05,
        malformed_rate: 0.05,
        gzip_rate: 0.2,
        ..GenerateArgs::default()
    })
    .expect("generate");
    (azurite, staging, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_in_azure_blob_storage_lands_like_the_same_corpus_in_a_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (azurite, staging, report) = corpus(dir.path(), 17, (4, 12));
    assert!(report.malformed_files > 0 && report.resent_files > 0, "the corpus has the cases it is meant to");
    // The manifest files go up too: staging skips them in a container as in a folder.
    let uploaded = azurite.upload_dir(&staging, "landing", "pos/incoming").await;
    assert!(uploaded as u64 > report.files);

    let local_lake = dir.path().join("local");
    let local = summary(&ingest(staging.to_str().expect("utf-8"), &local_lake, &[]));
    let azure_lake = dir.path().join("azure");
    let url = "az://landing/pos/incoming";
    let azure = summary(&ingest(url, &azure_lake, &azurite.env()));

    assert_eq!(azure["files"], report.files, "every POS file listed, nothing else");
    for field in ["files", "bytes", "transactions", "new_transactions", "duplicate_transactions", "dead_letters"] {
        assert_eq!(azure[field], local[field], "{field}");
    }
    assert!(azure["dead_letters"].as_u64() > Some(0));
    assert_eq!(counts(&azure_lake).await, counts(&local_lake).await, "every table as from the folder");
    assert_eq!(counts(&azure_lake).await[0].1, report.unique_keys, "each transaction once");
    let mut from_azure = header_keys(&Warehouse::open(&azure_lake).await.expect("open")).await;
    let mut from_folder = header_keys(&Warehouse::open(&local_lake).await.expect("open")).await;
    // The two listings come in different orders, and so do the rows.
    from_azure.sort();
    from_folder.sort();
    assert_eq!(from_azure, from_folder, "the same transactions");
    // The ledger names files by their path in the container; the raw archive holds each one.
    let paths = common::ledger_paths(&Warehouse::open(&azure_lake).await.expect("open")).await;
    assert_eq!(paths.len() as u64, report.files);
    assert!(paths.iter().all(|p| p.starts_with("pos/incoming/")), "{paths:?}");
    assert_eq!(files_under(&azure_lake.join("bronze/raw")), files_under(&local_lake.join("bronze/raw")));
    assert!(files_under(&azure_lake.join("bronze/raw")) > 0);

    // A second run from the container finds everything ingested, whichever form of URL names it.
    for url in [
        url,
        "abfss://landing@devstoreaccount1.dfs.core.windows.net/pos/incoming",
        "https://devstoreaccount1.blob.core.windows.net/landing/pos/incoming",
    ] {
        let again = summary(&ingest(url, &azure_lake, &azurite.env()));
        assert_eq!(again["already_ingested"], report.files, "{url}");
        assert_eq!(again["new_transactions"], 0, "{url}");
    }
    assert_eq!(counts(&azure_lake).await, counts(&local_lake).await, "nothing added");

    // A replay reads its dead letters from the container, or from the bronze archive once one was deleted there:
    // the malformed files fail again as they did (none is `missing`), and nothing lands.
    let wh = Warehouse::open(&azure_lake).await.expect("open");
    let mut dead = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let path = common::column::<arrow_array::StringArray>(&b, "path");
        dead.extend((0..b.num_rows()).map(|i| path.value(i).to_owned()));
    }
    drop(wh);
    assert_eq!(dead.len() as u64, report.malformed_files, "{dead:?}");
    object_store::ObjectStoreExt::delete(
        azurite.store("landing").as_ref(),
        &object_store::path::Path::from(dead[0].as_str()),
    )
    .await
    .expect("delete");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(["replay", "--json", "--staging", url, "--lake"]).arg(&azure_lake).env("RUST_LOG", "warn");
    let replay = summary(&cmd.envs(azurite.env()).output().expect("replay"));
    assert_eq!(replay["replayed"], report.malformed_files, "{replay}");
    assert_eq!(
        (replay["files"].clone(), replay["dead_letters"].clone()),
        (replay["replayed"].clone(), replay["replayed"].clone())
    );
    let wh = Warehouse::open(&azure_lake).await.expect("open");
    for b in wh.scan("dead_letters").await.expect("scan") {
        let kind = common::column::<arrow_array::StringArray>(&b, "kind");
        assert!((0..b.num_rows()).all(|i| kind.value(i) != "missing"), "a dead letter read from nowhere");
    }
    assert_eq!(wh.row_count("dead_letters").await.expect("count"), 2 * report.malformed_files);
    assert_eq!(counts(&azure_lake).await[0], counts(&local_lake).await[0], "no transaction added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_mid_run_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (azurite, staging, report) = corpus(dir.path(), 23, (20, 40));
    azurite.upload_dir(&staging, "landing", "pos").await;
    let local_lake = dir.path().join("local");
    let local = summary(&ingest(staging.to_str().expect("utf-8"), &local_lake, &[]));

    // Every connection to Azurite is closed once a third of the corpus has come back, and none is let through
    // for two seconds.
    let proxy = Proxy::start(azurite.port, report.bytes / 3, Duration::from_secs(2)).await;
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_owned()),
        ("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{}", proxy.port)),
    ];
    let lake = dir.path().join("azure");
    let run = {
        let lake = lake.clone();
        tokio::task::spawn_blocking(move || ingest("az://landing/pos", &lake, &env)).await.expect("ingest")
    };
    let azure = summary(&run);
    let stats = &proxy.stats;
    assert!(proxy.cut_happened(), "the cut came");
    assert!(stats.reset.load(Ordering::SeqCst) > 0, "it closed connections in use");
    assert!(stats.bytes_after_cut.load(Ordering::SeqCst) > 0, "and the run went on after it");
    for field in ["files", "transactions", "new_transactions", "duplicate_transactions", "dead_letters"] {
        assert_eq!(azure[field], local[field], "{field}");
    }
    assert_eq!(counts(&lake).await, counts(&local_lake).await, "every table as without the cut");
    assert_eq!(counts(&lake).await[0].1, report.unique_keys);
}

#[test]
fn staging_that_cannot_be_read_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let out = ingest("s3://bucket/pos", &lake, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("s3://bucket/pos") && err.contains("not supported") && err.contains("az://"), "{err}");
    assert_eq!(err.matches("not supported").count(), 1, "the reason said once: {err}");

    // No account named anywhere: refused at start, the reason said once.
    let out = ingest("az://landing/pos", &lake, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("Account must be specified").count(), 1, "{err}");

    // A container that does not exist: the listing's error, not an empty run.
    let azurite = Azurite::start();
    let out = ingest("az://nowhere/pos", &lake, &azurite.env());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unreadable container is not an empty one");
    assert!(err.contains("ContainerNotFound") || err.contains("not found"), "{err}");
}
