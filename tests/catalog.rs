//! The Iceberg catalog in a real PostgreSQL instead of SQLite in the lake (what workers on several hosts share): a
//! corpus lands as with SQLite, through commits, manifest merges and snapshot expiry, every command reads it, and
//! two workers committing at once to the same tables lose nothing. A catalog that holds another lake, or a URL of
//! another kind, is refused with the reason.

mod common;

use std::path::Path;
use std::process::Command;

use common::postgres::Postgres;
use common::redis::RedisServer;
use common::{counts, counts_of, header_keys, summary};
use poslake::lake::Warehouse;

/// `poslake ARGS --lake LAKE [--catalog URL]`.
fn poslake(args: &[&str], lake: &Path, catalog: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(args).arg("--lake").arg(lake).env("RUST_LOG", "warn").env_remove("POSLAKE_CATALOG");
    if let Some(url) = catalog {
        cmd.args(["--catalog", url]);
    }
    cmd.output().expect("run poslake")
}

fn corpus(dir: &Path, seed: u64) -> (std::path::PathBuf, poslake::generate::Report) {
    common::mixed_corpus(dir, seed, (5, 15), 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_with_its_catalog_in_postgres_lands_like_one_with_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report) = corpus(dir.path(), 41);
    let staging = staging.to_str().expect("utf-8").to_owned();
    // Small commits, so that the run also merges manifests and expires snapshots through the catalog.
    let config = dir.path().join("poslake.toml");
    std::fs::write(&config, "commit_files = 4\nkeep_snapshots = 2\nmin_manifests_to_merge = 2\n").expect("write");
    let config = config.to_str().expect("utf-8");
    let pg = Postgres::start();
    let url = pg.url();

    let sqlite_lake = dir.path().join("sqlite");
    let args = ["ingest", "--json", "--config", config, "--staging", &staging];
    let reference = summary(&poslake(&args, &sqlite_lake, None));
    let lake = dir.path().join("pg");
    let first = summary(&poslake(&args, &lake, Some(&url)));
    for field in ["files", "new_transactions", "duplicate_transactions", "dead_letters"] {
        assert_eq!(first[field], reference[field], "{field}");
    }
    assert_eq!(first["new_transactions"], report.unique_keys);
    assert!(!lake.join("catalog.db").exists(), "no SQLite catalog beside the PostgreSQL one");
    let wh = Warehouse::open_with(&lake, Some(&url)).await.expect("open");
    assert_eq!(counts_of(&wh).await, counts(&sqlite_lake).await, "every table as with SQLite");
    let mut keys = header_keys(&wh).await;
    let mut want = header_keys(&Warehouse::open(&sqlite_lake).await.expect("open")).await;
    keys.sort();
    want.sort();
    assert_eq!(keys, want);
    let table = wh.load("sales_header").await.expect("load");
    assert!(table.metadata().snapshots().count() <= 3, "snapshots were expired through the catalog");
    drop(wh);

    // Every command reads it: tables, query, maintain (its merge updates the catalog's row itself), reconcile.
    let out = poslake(&["tables"], &lake, Some(&url));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sales_header"));
    let out = poslake(&["query", "SELECT count(*) AS n FROM sales_header"], &lake, Some(&url));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&report.unique_keys.to_string()), "{out:?}");
    let maintained = poslake(&["maintain", "--json", "--keep", "1"], &lake, Some(&url));
    assert!(maintained.status.success(), "{}", String::from_utf8_lossy(&maintained.stderr));
    assert!(poslake(&["reconcile", "--json"], &lake, Some(&url)).status.success());
    // Without the catalog the lake is not found: its tables are not in the folder, and the error says where to look.
    let out = poslake(&["tables"], &lake, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--catalog"), "{out:?}");

    // Again: nothing new.
    let again = summary(&poslake(&args, &lake, Some(&url)));
    assert_eq!((again["already_ingested"].clone(), again["new_transactions"].clone()), (report.files.into(), 0.into()));
    let wh = Warehouse::open_with(&lake, Some(&url)).await.expect("open");
    assert_eq!(counts_of(&wh).await, counts(&sqlite_lake).await, "nothing added");
    drop(wh);

    // Another database (empty: a wrong name, a restore that failed) given for this lake: an ingest is refused, not
    // made a second history of the same tables in the same folders; `query` says the catalog has no tables.
    let empty = pg.database("empty");
    let forked = poslake(&args, &lake, Some(&empty));
    let err = String::from_utf8_lossy(&forked.stderr);
    assert!(!forked.status.success() && err.contains("committed history") && err.contains("empty"), "{err}");
    for read in [&["tables"][..], &["query", "SELECT 1"]] {
        let out = poslake(read, &lake, Some(&empty));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("committed history"), "{read:?}: {err}");
    }
    // A lake no ingest has written, on that catalog: `query` answers what needs no table.
    let new_lake = dir.path().join("new");
    std::fs::create_dir_all(new_lake.join("warehouse")).expect("mkdir");
    let out = poslake(&["query", "SELECT count(*) FROM sales_header"], &new_lake, Some(&empty));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no tables yet"), "{err}");
    let out = poslake(&["query", "SELECT 41 + 1 AS answer"], &new_lake, Some(&empty));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("42"), "{out:?}");
    // The SQLite lake given a PostgreSQL catalog: refused the same way.
    let forked = poslake(&args, &sqlite_lake, Some(&empty));
    assert!(!forked.status.success(), "{}", String::from_utf8_lossy(&forked.stdout));
    let wh = Warehouse::open_with(&lake, Some(&url)).await.expect("open");
    assert_eq!(counts_of(&wh).await, counts(&sqlite_lake).await, "nothing added by the refused runs");
    drop(wh);

    // The same catalog named for another lake is refused: its tables lie elsewhere.
    let other = poslake(&args, &dir.path().join("other"), Some(&url));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success());
    assert!(err.contains("not under this lake") && err.contains("127.0.0.1"), "{err}");
    // A catalog that is not PostgreSQL is refused before anything starts.
    let wrong = poslake(&args, &dir.path().join("wrong"), Some("mysql://root@127.0.0.1/lake"));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("PostgreSQL"), "{err}");
    // A server that refuses says why, not only that the catalog's pool timed out.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let out = poslake(&args, &dir.path().join("closed"), Some(&format!("postgres://postgres@127.0.0.1:{closed}/x")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot connect") && err.contains("refused"), "{err}");
    let missing = url.rsplit_once('/').map(|(server, _)| format!("{server}/no_such_database")).expect("a path");
    let out = poslake(&args, &dir.path().join("missing"), Some(&missing));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no_such_database") && err.contains("does not exist"), "{err}");
}

/// Two workers (processes) sharing staging, the lake's folder, Redis and a PostgreSQL catalog, committing to the
/// same tables at once: each file lands once and each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_commit_through_one_postgres_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report) = corpus(dir.path(), 43);
    let staging = staging.to_str().expect("utf-8").to_owned();
    let config = dir.path().join("poslake.toml");
    std::fs::write(&config, "commit_files = 3\n").expect("write");
    let pg = Postgres::start();
    let redis = RedisServer::start();
    let lake = dir.path().join("lake");
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_poslake"));
            cmd.args(["ingest", "--json", "--staging", &staging, "--lake"])
                .arg(&lake)
                .arg("--config")
                .arg(&config)
                .args(["--catalog", &pg.url(), "--dedup", "redis-bitmap", "--redis-url", &redis.url()])
                .args(["--workers", "2", "--worker-index", &i.to_string()])
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("start worker")
        })
        .collect();
    let outs: Vec<_> = workers.into_iter().map(|w| w.wait_with_output().expect("worker")).collect();
    let summaries: Vec<_> = outs.iter().map(summary).collect();
    let files: u64 = summaries.iter().map(|s| s["files"].as_u64().expect("files")).sum();
    assert_eq!(files, report.files, "the two shares make the whole: {summaries:?}");
    assert!(summaries.iter().all(|s| s["files"].as_u64() > Some(0)), "each worker took a share: {summaries:?}");

    let wh = Warehouse::open_with(&lake, Some(&pg.url())).await.expect("open");
    let keys = header_keys(&wh).await;
    let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!((keys.len() as u64, distinct.len() as u64), (report.unique_keys, report.unique_keys), "each key once");
    assert_eq!(wh.row_count("file_ledger").await.expect("count"), report.files, "each file once");
}

/// A catalog reached over TLS (what a managed PostgreSQL requires), verified against the server's CA: used; a plain
/// connection to the same server is refused with the server's reason.
#[test]
fn a_catalog_over_tls_is_used_and_a_plain_connection_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (staging, report) = corpus(dir.path(), 47);
    let staging = staging.to_str().expect("utf-8").to_owned();
    let pg = Postgres::start_tls();
    let args = ["ingest", "--json", "--staging", &staging];
    let tls = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pg.ca().display()
    );
    let lake = dir.path().join("lake");
    let run = summary(&poslake(&args, &lake, Some(&tls)));
    assert_eq!(run["new_transactions"], report.unique_keys);
    assert!(!lake.join("catalog.db").exists());

    let plain = format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", pg.port);
    let out = poslake(&args, &dir.path().join("plain"), Some(&plain));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("pg_hba.conf") && err.contains("no encryption"), "{err}");
}
