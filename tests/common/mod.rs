//! Helpers shared by the integration tests: reading keys back from the lake, a small pipeline, and a real
//! `redis-server` and Azurite started on free ports.
#![allow(dead_code)]

pub mod azurite;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod tls;

use std::collections::BTreeSet;
use std::time::Duration;

use arrow_array::{Array, Date32Array, RecordBatch, StringArray};
use poslake::lake::Warehouse;
use poslake_actors::{FlowLimits, PipelineConfig};

pub fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).unwrap_or_else(|| panic!("column {name}"))
}

/// Canonical keys of every row of a table with the key columns (the same text form the manifest uses).
pub async fn keys_of_table(wh: &Warehouse, table: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for b in wh.scan(table).await.expect("scan") {
        let site = column::<StringArray>(&b, "site");
        let date = column::<Date32Array>(&b, "business_date");
        let reg = column::<StringArray>(&b, "register");
        let seq = column::<StringArray>(&b, "sequence");
        let variant = column::<StringArray>(&b, "key_variant");
        for i in 0..b.num_rows() {
            let d = date.value_as_date(i).expect("date");
            let mut k = format!(
                "{}|{}|{}|{}",
                site.value(i),
                d.format("%Y-%m-%d"),
                if reg.is_null(i) { "" } else { reg.value(i) },
                seq.value(i)
            );
            if variant.value(i) != "primary" {
                k.push('|');
                k.push_str(variant.value(i));
            }
            keys.push(k);
        }
    }
    keys
}

/// Canonical keys of every sales_header row.
/// Row counts of every table but the quarantine (which of the duplicates meet the filter rather than the exact
/// in-flight set depends on commit timing; the silver tables do not).
pub async fn counts(lake: &std::path::Path) -> Vec<(&'static str, u64)> {
    counts_of(&Warehouse::open(lake).await.expect("open")).await
}

/// Rows of each table of an open lake.
pub async fn counts_of(wh: &Warehouse) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for t in [
        "sales_header",
        "sales_line",
        "sales_discount",
        "bronze_transaction",
        "sales_voids",
        "dead_letters",
        "file_ledger",
    ] {
        out.push((t, wh.row_count(t).await.expect("count")));
    }
    out
}

/// A corpus of every dialect (6 sites, 2 days, 3 files a day) with re-sent and malformed files and repeated
/// transactions, `gzip_rate` of the files gzipped, generated into `dir/staging`.
pub fn mixed_corpus(
    dir: &std::path::Path,
    seed: u64,
    transactions: (u32, u32),
    gzip_rate: f64,
) -> (std::path::PathBuf, poslake::generate::Report) {
    let staging = dir.join("staging");
    let report = poslake::generate::generate(&poslake::generate::GenerateArgs {
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
        gzip_rate,
        ..poslake::generate::GenerateArgs::default()
    })
    .expect("generate");
    (staging, report)
}

/// The JSON summary a successful `poslake` command printed; a failed one fails the test with its error output.
pub fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "poslake failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

/// A program the tests run: `$env_var` if set, else the first `name` on PATH or in the usual folders.
pub fn find_program(name: &str, env_var: &str, install_hint: &str) -> std::path::PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return p.into();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"]) {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install it ({install_hint}) or run scripts/test, which does");
}

pub async fn header_keys(wh: &Warehouse) -> Vec<String> {
    keys_of_table(wh, "sales_header").await
}

/// Ledger paths (files the lake says it ingested).
pub async fn ledger_paths(wh: &Warehouse) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for b in wh.scan("file_ledger").await.expect("scan") {
        let path = column::<StringArray>(&b, "path");
        out.extend((0..b.num_rows()).map(|i| path.value(i).to_owned()));
    }
    out
}

pub fn pipeline() -> PipelineConfig {
    PipelineConfig {
        downloaders: 4,
        parsers: 2,
        archivers: 2,
        batch_files: 16,
        flush_interval: Duration::from_millis(50),
        // Small budgets: the corpus is many times larger than what may be in flight.
        limits: FlowLimits { max_files: 12, max_bytes: 2 << 20 },
        ..PipelineConfig::default()
    }
}

/// Every hand-written dialect fixture (`tests/fixtures/dialects/<dialect>/`), parsed, in dialect and name order.
pub fn dialect_fixtures() -> Vec<poslake::ParsedFile> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dialects");
    let mut out = Vec::new();
    for d in poslake::Dialect::ALL {
        let mut paths: Vec<_> =
            std::fs::read_dir(root.join(d.id())).expect("dir").flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("read");
            let options = poslake::ParseOptions::default();
            out.push(poslake::parse_file(&p.display().to_string(), &bytes, &options).expect("parses"));
        }
    }
    out
}

/// `GET /metrics` over plain HTTP/1.1 from a poslake started with `--metrics-addr`.
#[allow(dead_code)]
pub fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The rows of a query whose one column is text, sorted.
pub async fn strings(wh: &Warehouse, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in poslake::lake::query::sql(wh, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        let col = b.column(0);
        if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            out.extend(a.iter().map(|v| v.unwrap_or("NULL").to_owned()));
        } else if let Some(a) = col.as_any().downcast_ref::<arrow_array::StringViewArray>() {
            out.extend(a.iter().map(|v| v.unwrap_or("NULL").to_owned()));
        } else {
            panic!("{sql}: the column is {}, not text", col.data_type());
        }
    }
    out.sort();
    out
}

/// The one integer a query answers (a count, a sum).
pub async fn scalar(wh: &Warehouse, sql: &str) -> i64 {
    let batches = poslake::lake::query::sql(wh, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let col = batches[0].column(0).as_any().downcast_ref::<arrow_array::Int64Array>();
    col.unwrap_or_else(|| panic!("{sql}: not an integer")).value(0)
}

/// Waits for `child` to exit, for at most `limit`: its status, or `None` (the child is then killed) if it is still
/// running, so that a process that should have ended fails its test instead of hanging it.
pub fn exit_within(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Holds a read transaction on the lake's SQLite catalog, as another process reading it would: a writer's `COMMIT`
/// then waits for it, and past the busy timeout the database refuses it.
pub async fn hold_catalog_read_lock(lake: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::{ConnectOptions, Executor};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(lake.join("catalog.db"))
        .connect()
        .await
        .expect("connect to the catalog");
    conn.execute("BEGIN").await.expect("begin");
    sqlx::query("SELECT count(*) FROM iceberg_tables").fetch_one(&mut conn).await.expect("read");
    conn
}

/// Kills a child process when dropped, unless disarmed: a test that fails while its child is stopped (SIGSTOP)
/// leaves no stopped process behind.
pub struct KillOnDrop(pub Option<u32>);

impl KillOnDrop {
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: a plain signal to a process this test started and has not reaped.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}
