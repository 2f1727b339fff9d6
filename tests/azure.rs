//! Staging and the raw archive on Azure Blob Storage, against a real Azurite: a corpus ingested from a container
//! lands exactly as the same corpus ingested from a folder; a second run from the container adds nothing; an archive
//! in a container holds what the lake's own would, immutably, and feeds a replay; staging or an archive poslake
//! cannot use fails at once with the reason.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::azurite::Azurite;
use common::proxy::Proxy;
use common::{counts, header_keys, summary};
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use poslake::generate::Report;
use poslake::lake::Warehouse;

fn ingest(staging: &str, lake: &Path, env: &[(&str, String)]) -> std::process::Output {
    poslake(&["ingest", "--json", "--staging", staging], lake, env)
}

/// `poslake ARGS --lake LAKE` with only the Azure settings in `env`.
fn poslake(args: &[&str], lake: &Path, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(args).arg("--lake").arg(lake).env("RUST_LOG", "warn");
    // Only the Azure settings the test gives: none from the machine running it.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AZURE") || k.starts_with("AZURITE")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run poslake")
}

/// Every file under `dir`, by its path below it, with its bytes.
fn folder_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).expect("below").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    out
}

/// Every blob of `store` under `prefix`, by its path below it, with its bytes.
async fn blob_contents(store: &dyn ObjectStore, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let listed: Vec<_> = store.list(Some(&StorePath::parse(prefix).expect("a valid prefix"))).collect().await;
    let mut out = BTreeMap::new();
    for meta in listed {
        let meta = meta.expect("list");
        let bytes = store.get(&meta.location).await.expect("get").bytes().await.expect("bytes");
        let rel = meta.location.as_ref().strip_prefix(&format!("{prefix}/")).expect("below").to_owned();
        out.insert(rel, bytes.to_vec());
    }
    out
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
    let (staging, report) = common::mixed_corpus(dir, seed, transactions, 0.2);
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
    let dead = dead_letter_column(&azure_lake, "path").await;
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
    let kinds = dead_letter_column(&azure_lake, "kind").await;
    assert!(kinds.iter().all(|k| k != "missing"), "a dead letter read from nowhere: {kinds:?}");
    let wh = Warehouse::open(&azure_lake).await.expect("open");
    assert_eq!(wh.row_count("dead_letters").await.expect("count"), 2 * report.malformed_files);
    assert_eq!(counts(&azure_lake).await[0], counts(&local_lake).await[0], "no transaction added");
}

/// Blob names object_store cannot address as written: it failed a whole list page (5,000 names) at `a//b.xml` or a
/// `..` segment, and its listing ended there; it read `trail.xml/` as `trail.xml`. Each is one dead letter that
/// says so, wherever it lies among the pages, and every other file lands as from a folder; a second run adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_names_the_client_cannot_address_are_refused_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (azurite, staging, report) = corpus(dir.path(), 23, (2, 4));
    let uploaded = azurite.upload_dir(&staging, "landing", "pos/incoming").await as u64;
    // Hidden blobs (never taken) fill the first page: it ends a few corpus files past the first odd name, and the
    // last odd name is on the second page, which the listing reaches from the first page's marker.
    let store = azurite.store("landing");
    let pad = 5_000 - 5;
    futures::stream::iter(0..pad)
        .map(|i| {
            let store = store.clone();
            async move { store.put(&StorePath::from(format!("pos/incoming/.pad/{i:05}")), "x".into()).await }
        })
        .buffer_unordered(32)
        .for_each(|put| async move {
            put.expect("pad");
        })
        .await;
    assert!(uploaded > 10, "the corpus reaches the second page");
    let some_file = std::fs::read(staging.join("manifest.json")).expect("read");
    let odd = [
        "pos/incoming/a//first.xml",
        "pos/incoming/trail.xml/",
        "pos/incoming/x/../up.xml",
        "pos/incoming/zz//second.xml",
    ];
    for name in odd {
        azurite.put_blob_named("landing", name, &some_file);
    }

    let local_lake = dir.path().join("local");
    let local = summary(&ingest(staging.to_str().expect("utf-8"), &local_lake, &[]));
    let lake = dir.path().join("azure");
    let first = summary(&ingest("az://landing/pos/incoming", &lake, &azurite.env()));
    assert_eq!(first["files"], report.files + 4, "every POS file listed, the odd names too: {first}");
    assert_eq!(first["dead_letters"], local["dead_letters"].as_u64().expect("count") + 4, "{first}");
    for field in ["transactions", "new_transactions", "duplicate_transactions"] {
        assert_eq!(first[field], local[field], "{field}");
    }
    let mut from_azure = header_keys(&Warehouse::open(&lake).await.expect("open")).await;
    let mut from_folder = header_keys(&Warehouse::open(&local_lake).await.expect("open")).await;
    from_azure.sort();
    from_folder.sort();
    assert_eq!(from_azure, from_folder, "the same transactions");

    let (paths, kinds, reasons) = (
        dead_letter_column(&lake, "path").await,
        dead_letter_column(&lake, "kind").await,
        dead_letter_column(&lake, "reason").await,
    );
    for name in odd {
        let row = paths.iter().position(|p| p == name).unwrap_or_else(|| panic!("{name} not in {paths:?}"));
        assert_eq!(kinds[row], "unusable_name", "{name}");
        assert!(reasons[row].contains("rename the blob"), "{name}: {}", reasons[row]);
    }

    let again = summary(&ingest("az://landing/pos/incoming", &lake, &azurite.env()));
    assert_eq!((again["files"].clone(), again["already_ingested"].clone()), (0.into(), (report.files + 4).into()));
    // Taken again by a replay, they are refused again for the same reason: not a failed read to defer and retry.
    let args = ["replay", "--json", "--kind", "unusable_name", "--staging", "az://landing/pos/incoming"];
    let replay = summary(&poslake(&args, &lake, &azurite.env()));
    assert_eq!((replay["replayed"].clone(), replay["dead_letters"].clone()), (4.into(), 4.into()), "{replay}");
    assert_eq!(replay["deferred"], 0, "{replay}");
    let kinds = dead_letter_column(&lake, "kind").await;
    assert_eq!(kinds.iter().filter(|k| *k == "unusable_name").count(), 8, "{kinds:?}");
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

    // A prefix under which nothing is (a typo?) is an empty run, with a warning that says so.
    azurite.create_container("landing");
    let out = ingest("az://landing/typo", &lake, &azurite.env());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("staging holds no object under this prefix").count(), 1, "{err}");
}

/// `--archive az://…`: the raw archive in a container of its own holds exactly what the lake's archive holds for the
/// same corpus, byte for byte, and nothing under the lake; a second run writes nothing; a different file of an
/// archived name goes beside it, the first untouched; a replay of a dead letter gone from staging reads it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_in_azure_holds_every_raw_file_once_and_feeds_a_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (azurite, staging, report) = corpus(dir.path(), 29, (4, 12));
    azurite.create_container("archive");
    let staging_arg = staging.to_str().expect("utf-8").to_owned();
    let reference_lake = dir.path().join("reference");
    let reference = summary(&ingest(&staging_arg, &reference_lake, &[]));
    let expected = folder_contents(&reference_lake.join("bronze/raw"));
    assert!(expected.len() as u64 > report.malformed_files, "the corpus archives files");

    let lake = dir.path().join("lake");
    let archive = "az://archive/pos/raw";
    let args = ["ingest", "--json", "--staging", &staging_arg, "--archive", archive];
    let first = summary(&poslake(&args, &lake, &azurite.env()));
    for field in ["files", "new_transactions", "duplicate_transactions", "dead_letters"] {
        assert_eq!(first[field], reference[field], "{field}");
    }
    assert_eq!(counts(&lake).await, counts(&reference_lake).await, "every table as with the lake's archive");
    assert!(!lake.join("bronze").exists(), "nothing archived in the lake");
    let store = azurite.store("archive");
    let archived = blob_contents(store.as_ref(), "pos/raw/bronze/raw").await;
    assert_eq!(archived.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same names");
    assert!(archived == expected, "the same bytes under each name");

    // Again: everything already ingested, nothing written.
    let again = summary(&poslake(&args, &lake, &azurite.env()));
    assert_eq!((again["already_ingested"].clone(), again["new_transactions"].clone()), (report.files.into(), 0.into()));
    assert_eq!(blob_contents(store.as_ref(), "pos/raw/bronze/raw").await, archived);

    // Another file under a name already archived (same transactions, one more comment): kept beside the first.
    let (name, original) = expected.iter().find(|(k, _)| !k.contains("unknown") && k.ends_with(".xml")).expect("one");
    let base = name.rsplit('/').next().expect("name");
    let source = walkdir_find(&staging, base);
    let mut changed = std::fs::read(&source).expect("read");
    changed.extend_from_slice(b"\n<!-- re-sent -->\n");
    std::fs::create_dir_all(staging.join("resent")).expect("mkdir");
    std::fs::write(staging.join("resent").join(base), &changed).expect("write");
    let third = summary(&poslake(&args, &lake, &azurite.env()));
    assert_eq!((third["files"].clone(), third["new_transactions"].clone()), (1.into(), 0.into()), "{third}");
    let now = blob_contents(store.as_ref(), "pos/raw/bronze/raw").await;
    assert_eq!(now.len(), archived.len() + 1, "one more blob");
    assert_eq!(now.get(name), Some(original), "the first copy untouched");
    assert!(now.iter().any(|(k, v)| k != name && k.ends_with(base) && *v == changed), "the second beside it");

    // A malformed file gone from staging is replayed from the archive in Azure: refused again as malformed, not
    // `missing`.
    let dead = dead_letter_column(&lake, "path").await;
    assert!(!dead.is_empty());
    for path in &dead {
        std::fs::remove_file(staging.join(path)).expect("remove from staging");
    }
    let replay = summary(&poslake(
        &["replay", "--json", "--staging", &staging_arg, "--archive", archive],
        &lake,
        &azurite.env(),
    ));
    assert_eq!(replay["replayed"], dead.len(), "{replay}");
    let kinds = dead_letter_column(&lake, "kind").await;
    assert!(kinds.iter().all(|k| k != "missing"), "a dead letter the archive did not give back: {kinds:?}");
    let wh = Warehouse::open(&lake).await.expect("open");
    assert_eq!(wh.row_count("dead_letters").await.expect("count"), 2 * dead.len() as u64);
}

/// An archive in staging's own container, below its prefix and named in another URL form (the prefix with a letter
/// that paths encode): the next run lists none of the archived copies. And a lake rebuilt from that archive (staging
/// inside the archive's files, the archive setting left as it was) takes every archived file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_inside_the_staging_container_is_not_ingested_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (azurite, staging, report) = corpus(dir.path(), 31, (2, 4));
    azurite.upload_dir(&staging, "landing", "pos-münchen").await;
    let lake = dir.path().join("lake");
    let archive = "https://devstoreaccount1.blob.core.windows.net/landing/pos-münchen";
    let args = ["ingest", "--json", "--staging", "az://landing/pos-münchen", "--archive", archive];
    let first = summary(&poslake(&args, &lake, &azurite.env()));
    assert_eq!(first["files"], report.files);
    let archived = blob_contents(azurite.store("landing").as_ref(), "pos-münchen/bronze/raw").await;
    assert!(archived.len() as u64 > report.malformed_files, "archived below the staging prefix");
    let again = summary(&poslake(&args, &lake, &azurite.env()));
    assert_eq!((again["files"].clone(), again["already_ingested"].clone()), (0.into(), report.files.into()), "{again}");

    let rebuild = ["ingest", "--json", "--staging", "az://landing/pos-münchen/bronze/raw", "--archive", archive];
    let rebuilt = summary(&poslake(&rebuild, &dir.path().join("rebuilt"), &azurite.env()));
    assert_eq!(rebuilt["files"], archived.len(), "every archived file taken: {rebuilt}");
    assert_eq!(rebuilt["new_transactions"], first["new_transactions"], "{rebuilt}");
}

/// One string column of the lake's `dead_letters`, every row.
async fn dead_letter_column(lake: &Path, name: &str) -> Vec<String> {
    let wh = Warehouse::open(lake).await.expect("open");
    let mut out = Vec::new();
    for b in wh.scan("dead_letters").await.expect("scan") {
        let column = common::column::<arrow_array::StringArray>(&b, name);
        out.extend((0..b.num_rows()).map(|i| column.value(i).to_owned()));
    }
    out
}

/// The path of the file named `base` somewhere under `dir`.
fn walkdir_find(dir: &Path, base: &str) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_str() == Some(base) {
                return e.path();
            }
        }
    }
    panic!("{base} not under {}", dir.display())
}

/// An archive poslake cannot write to stops the run at its start, with the reason, before any file is taken.
#[test]
fn an_archive_that_cannot_be_used_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::write(staging.join("a.xml"), "<POSLog/>").expect("write");
    let staging_arg = staging.to_str().expect("utf-8");
    let lake = dir.path().join("lake");
    let out = poslake(&["ingest", "--json", "--staging", staging_arg, "--archive", "s3://bucket/raw"], &lake, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("archive s3://bucket/raw") && err.contains("not supported") && err.contains("az://"), "{err}");

    let azurite = Azurite::start();
    let out = poslake(
        &["ingest", "--json", "--staging", staging_arg, "--archive", "az://nowhere/raw"],
        &lake,
        &azurite.env(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a container that does not exist is refused");
    assert!(err.contains("archive az://nowhere/raw") && err.contains("ContainerNotFound"), "{err}");
    // Refused before anything was taken: no ledger row, so the next run with a usable archive takes the file.
    let ledger = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async { Warehouse::open(&lake).await.expect("open").row_count("file_ledger").await.expect("count") });
    assert_eq!(ledger, 0);
}

/// A Redis dedup store that comes back mid-run without its last writes (an append-only file that lost its last
/// second, a replica that took over) may lose what the run's start added to the file index. Files listed after that
/// which earlier runs ingested must still be skipped: the index is read again from the ledger before its answers are
/// taken, as its mark, read after each lookup, no longer vouches for them. Until session 29 they were ingested
/// again: their transactions quarantined as duplicates, and a second ledger row each. A container lists in name
/// order, so the files ingested before (under `z-old/`) come after the new ones (`a-new/`), past the first pages the
/// run looks up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_ingested_before_are_skipped_after_the_dedup_store_loses_its_last_writes_mid_run() {
    use common::redis::RedisServer;
    use poslake::generate::{GenerateArgs, generate};
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().to_path_buf();
    let azurite = Azurite::start();
    azurite.create_container("landing");
    let mut redis = RedisServer::start();
    let url = redis.url();
    let lake = dir.path().join("lake");
    let small = |out: std::path::PathBuf, seed: u64, sites: u32, files_per_day: u32| {
        generate(&GenerateArgs {
            out,
            seed,
            sites,
            days: 2,
            files_per_day,
            min_transactions: 1,
            max_transactions: 2,
            duplicate_file_rate: 0.0,
            duplicate_transaction_rate: 0.0,
            malformed_rate: 0.0,
            rollback_rate: 0.0,
            ..GenerateArgs::default()
        })
        .expect("generate")
    };
    let run = |lake: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(["ingest", "--json", "--staging", "az://landing/pos", "--commit-files", "20"])
            .args(["--dedup", "redis-bitmap", "--redis-url", &url, "--lake"])
            .arg(lake)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AZURE") || k.starts_with("POSLAKE")) {
            cmd.env_remove(k);
        }
        for (k, v) in azurite.env() {
            cmd.env(k, v);
        }
        cmd.spawn().expect("run poslake")
    };
    let old = small(dir.path().join("old"), 41, 4, 3);
    azurite.upload_dir(&dir.path().join("old"), "landing", "pos/z-old").await;
    let first = summary(&run(&lake).wait_with_output().expect("first run"));
    assert_eq!(first["files"], old.files, "{first}");

    let new = small(dir.path().join("new"), 42, 10, 35);
    assert!(new.files >= 600, "more new files than one page of lookups: {}", new.files);
    azurite.upload_dir(&dir.path().join("new"), "landing", "pos/a-new").await;
    // The store as the first run left it: the second run's start brings the file index up to the ledger after this.
    let copy = redis.copy_data();
    let marks = |redis: &RedisServer| redis.integer(&["SCARD", "poslake:{dedup}:applied"]);
    let before = marks(&redis);
    let second = run(&lake);
    // Once the second run's first commit is marked applied, the store comes back without what it took since the copy.
    let started = std::time::Instant::now();
    while marks(&redis) <= before {
        assert!(started.elapsed() < Duration::from_secs(120), "no commit of the second run");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill_and_restore(copy.path());
    redis.restart();
    let second = summary(&second.wait_with_output().expect("second run"));
    assert_eq!(second["files"], new.files, "{second}");
    assert_eq!(second["already_ingested"], old.files, "every file ingested before is skipped: {second}");
    // The two corpora share sites and days, so some new transactions carry keys the old ones landed.
    let keys = |dir: &str| -> std::collections::BTreeSet<String> {
        let manifest = poslake::generate::read_manifest(&dir_path.join(dir)).expect("manifest");
        manifest.into_iter().flat_map(|m| m.keys).collect()
    };
    let (old_keys, new_keys) = (keys("old"), keys("new"));
    let landed_new = new_keys.difference(&old_keys).count() as u64;
    assert_eq!(second["new_transactions"], landed_new, "{second}");
    let wh = Warehouse::open(&lake).await.expect("lake");
    assert_eq!(wh.row_count("file_ledger").await.expect("ledger"), old.files + new.files, "one ledger row a file");
    let quarantined = wh.row_count("sales_duplicates").await.expect("quarantine");
    assert_eq!(quarantined, new_keys.len() as u64 - landed_new, "only the new files' keys the old ones landed");
    let landed = header_keys(&wh).await;
    assert_eq!(landed.len(), old_keys.union(&new_keys).count(), "every key once");
}
