//! Traces and metrics from real runs: a `poslake ingest` process exports its spans over OTLP/gRPC to a receiver
//! this test serves (tonic, the OTLP trace service), and an in-process run is scraped at its Prometheus endpoint.
#![cfg(feature = "lake")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, StringArray};
use common::{column, scrape};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use poslake::generate::{GenerateArgs, generate};
use poslake::ingest::{CommitPolicy, IngestPaths, IngestSetup, ingest};
use poslake::lake::Warehouse;
use poslake_actors::{FlowLimits, PipelineConfig, Progress};

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("spans");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn small_corpus(out: &std::path::Path, seed: u64) -> poslake::generate::Report {
    generate(&GenerateArgs {
        out: out.to_path_buf(),
        seed,
        sites: 3,
        days: 2,
        files_per_day: 3,
        min_transactions: 10,
        max_transactions: 20,
        malformed_rate: 0.1,
        ..GenerateArgs::default()
    })
    .expect("generate")
}

/// Spans go over gRPC with TLS to an `https://` endpoint, trusting the system's roots and `SSL_CERT_FILE` (here a
/// test CA); a collector whose certificate is not trusted gets nothing, and the run says so. Until session 28 an
/// `https://` endpoint over gRPC was refused at start (tonic's TLS was not built in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_with_tls_to_a_trusted_collector_only() {
    use tonic::transport::{Identity, ServerTlsConfig};
    let certs = tempfile::tempdir().expect("tempdir");
    common::tls::certificates(certs.path());
    let read = |name: &str| std::fs::read(certs.path().join(name)).expect("read certificate");
    let identity = Identity::from_pem(read("server.pem"), read("server.key"));
    let receiver = Receiver::default();
    let addr = free_addr();
    let server = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .expect("server TLS")
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve(addr);
    let server = tokio::spawn(server);
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    small_corpus(&staging, 35);
    let run = |lake: &str, ca: Option<std::path::PathBuf>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(["ingest", "--json", "--otlp-endpoint", &format!("https://localhost:{}", addr.port())])
            .arg("--staging")
            .arg(&staging)
            .arg("--lake")
            .arg(dir.path().join(lake))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        tokio::task::spawn_blocking(move || cmd.output())
    };

    let out = run("untrusted", None).await.expect("join").expect("run poslake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a collector that cannot be reached does not fail the run: {stderr}");
    assert!(stderr.contains("spans could not be exported to"), "{stderr}");
    assert!(receiver.spans.lock().expect("spans").is_empty(), "an untrusted collector gets nothing");

    let out = run("trusted", Some(certs.path().join("ca.pem"))).await.expect("join").expect("run poslake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("could not be exported"), "{stderr}");
    let spans = receiver.spans.lock().expect("spans").clone();
    server.abort();
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in ["ingest.batch", "file", "parse", "commit"] {
        assert!(names.contains(want), "span {want} over gRPC with TLS: {names:?}");
    }
}

/// A collector that is down does not fail the run, and is not silent either: the first failed export is logged,
/// and the spans dropped are counted at the end.
#[test]
fn spans_that_cannot_be_exported_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    small_corpus(&staging, 33);
    let nobody = free_addr();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--json", "--otlp-endpoint", &format!("http://{nobody}")])
        .arg("--staging")
        .arg(&staging)
        .arg("--lake")
        .arg(dir.path().join("lake"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run poslake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("exporting spans over OTLP failed"), "{stderr}");
    assert!(stderr.contains("spans could not be exported to"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_exports_one_trace_per_batch_with_file_and_stage_spans() {
    let receiver = Receiver::default();
    let addr = free_addr();
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(TraceServiceServer::new(receiver.clone())).serve(addr),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = small_corpus(&staging, 31);
    assert!(report.malformed_files > 0);
    let lake = dir.path().join("lake");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(["ingest", "--json", "--batch-files", "4", "--otlp-endpoint", &format!("http://{addr}")])
        .arg("--staging")
        .arg(&staging)
        .arg("--lake")
        .arg(&lake)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run poslake");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The process flushed its spans before exiting.
    let spans = receiver.spans.lock().expect("spans").clone();
    server.abort();
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in ["ingest.batch", "file", "download", "parse", "archive", "dedup", "write", "commit"] {
        assert!(names.contains(want), "a {want} span among {names:?}");
    }
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let parent = |s: &Span| by_id.get(s.parent_span_id.as_slice()).copied();
    let named = |name: &'static str| spans.iter().filter(move |s| s.name == name);

    // A trace per batch: batch spans are roots, files are their children, stages the files' children.
    assert!(named("ingest.batch").all(|s| s.parent_span_id.is_empty()), "batch spans are roots");
    let files: Vec<&Span> = named("file").collect();
    assert_eq!(files.len() as u64, report.files, "one span per file");
    for f in &files {
        let p = parent(f).expect("a file span has its batch");
        assert_eq!((p.name.as_str(), &p.trace_id), ("ingest.batch", &f.trace_id));
    }
    for stage in ["download", "parse", "archive"] {
        for s in named(stage) {
            let p = parent(s).unwrap_or_else(|| panic!("{stage} span without its file"));
            assert_eq!(p.name, "file", "{stage} is a child of a file span");
        }
        assert_eq!(named(stage).count() as u64, report.files, "one {stage} span per file");
    }
    for stage in ["dedup", "write"] {
        for s in named(stage) {
            assert_eq!(parent(s).map(|p| p.name.as_str()), Some("ingest.batch"), "{stage} runs in a batch's trace");
        }
    }
    assert!(named("commit").all(|s| matches!(attr(s, "iceberg.snapshot_id"), Some(Value::IntValue(id)) if *id > 0)));

    // Attributes: every file span names its file and size; parsed ones their vendor and transactions; refused
    // ones their error kind.
    let mut vendors = BTreeSet::new();
    let mut errors = 0;
    for f in &files {
        assert!(matches!(attr(f, "file"), Some(Value::StringValue(p)) if p.contains(".xml")), "{f:?}");
        assert!(matches!(attr(f, "bytes"), Some(Value::IntValue(b)) if *b > 0));
        match attr(f, "error.kind") {
            Some(Value::StringValue(_)) => errors += 1,
            _ => {
                let Some(Value::StringValue(v)) = attr(f, "vendor") else { panic!("vendor on {f:?}") };
                vendors.insert(v.clone());
                assert!(matches!(attr(f, "transactions"), Some(Value::IntValue(n)) if *n > 0));
            }
        }
    }
    assert_eq!(errors as u64, report.malformed_files);
    assert!(vendors.len() >= 3, "{vendors:?}");

    // The ledger row of each file carries the trace its file span is in.
    let file_traces: BTreeSet<String> = files.iter().map(|f| hex(&f.trace_id)).collect();
    let wh = Warehouse::open(&lake).await.expect("open");
    let mut traced = 0;
    for b in wh.scan("file_ledger").await.expect("scan") {
        let ids = column::<StringArray>(&b, "trace_id");
        for i in 0..b.num_rows() {
            if !ids.is_null(i) {
                assert!(file_traces.contains(ids.value(i)), "ledger trace {} is exported", ids.value(i));
                traced += 1;
            }
        }
    }
    assert_eq!(traced as u64, report.files, "every file's ledger row is traced, refused files too");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files, bytes and transactions count once committed. They were counted when written, so a run whose commit the
/// catalog refused counted its files, and the run that then landed them counted them again (a soak audit read 80
/// files and 1,984 new transactions where the lake had gained 40 and 992).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_whose_commit_fails_are_not_counted_until_they_land() {
    use sqlx::Executor;
    let addr = serve_metrics_on_a_free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = small_corpus(&staging, 41);
    let lake = dir.path().join("lake");
    drop(poslake::lake::Warehouse::open(&lake).await.expect("a lake with its tables"));
    let setup = IngestSetup::new(IngestPaths { staging, lake: lake.clone(), archive: None, catalog: None });

    let mut reader = common::hold_catalog_read_lock(&lake).await;
    let failed = ingest(&setup, common::pipeline(), Arc::new(Progress::default())).await;
    assert!(failed.is_err(), "the commit is refused while the catalog is locked");
    let text = scrape(addr).expect("scrape");
    assert_eq!(sample(&text, "poslake_files_total", ""), 0.0, "{text}");
    assert_eq!(sample(&text, "poslake_transactions_total", ""), 0.0, "{text}");
    assert_eq!(sample(&text, "poslake_dead_letters_total", ""), 0.0, "{text}");
    reader.execute("COMMIT").await.expect("end the read");

    // The next start finishes the refused commit from its intent and counts what it lands, from the counts the
    // intent kept; what it takes itself counts once. Together: every file and transaction the lake holds, once.
    let summary = ingest(&setup, common::pipeline(), Arc::new(Progress::default())).await.expect("ingest");
    assert_eq!(summary.recovery.intents_finished, 1);
    let text = scrape(addr).expect("scrape");
    let wh = poslake::lake::Warehouse::open(&lake).await.expect("open");
    assert!(summary.files < report.files, "the recovered commit's files were not taken again");
    counters_match_the_lake(&text, &wh, report.files).await;
}

/// A recovery that fails after finishing an abandoned commit's tables (here Redis refuses the store's `HINCRBY` to
/// the run's user) leaves the intent and counts nothing; the recovery that then removes the intent counts its files
/// once. Counted at the tables, they were counted again by every later recovery (found by an audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_that_fails_midway_counts_the_commit_it_finishes_once() {
    let server = common::redis::RedisServer::start();
    let addr = serve_metrics_on_a_free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = small_corpus(&staging, 43);
    let lake = dir.path().join("lake");
    // A first process dies after its commit's first table, leaving the intent.
    let killed = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--dedup", "redis-bitmap", "--redis-url", &server.url(), "--staging"])
        .arg(&staging)
        .arg("--lake")
        .arg(&lake)
        .env("POSLAKE_KILL_AT", "commit-table")
        .output()
        .expect("run poslake");
    assert!(!killed.status.success(), "killed at its commit");
    let intents = || std::fs::read_dir(lake.join("commits")).map_or(0, |d| d.count());
    assert_eq!(intents(), 1, "an intent is left");

    server.command(&["ACL", "SETUSER", "pl", "on", ">pw", "~*", "&*", "+@all", "-hincrby"]);
    let port = server.url().rsplit(':').next().expect("port").to_owned();
    let setup = IngestSetup {
        dedup: poslake::config::DedupConfig {
            redis_url: format!("redis://pl:pw@127.0.0.1:{port}"),
            unavailable_limit_secs: 2,
            ..server.bitmap()
        },
        ..IngestSetup::new(IngestPaths { staging, lake: lake.clone(), archive: None, catalog: None })
    };
    let failed = ingest(&setup, common::pipeline(), Arc::new(Progress::default())).await;
    assert!(failed.is_err(), "the store refuses the run's user");
    let wh = Warehouse::open(&lake).await.expect("open");
    assert!(wh.row_count("sales_header").await.expect("headers") > 0, "the recovery finished the intent's tables");
    assert_eq!(intents(), 1, "and left the intent");
    let text = scrape(addr).expect("scrape");
    assert_eq!(sample(&text, "poslake_files_total", ""), 0.0, "nothing counted before the intent is gone: {text}");

    server.command(&["ACL", "SETUSER", "pl", "+hincrby"]);
    let summary = ingest(&setup, common::pipeline(), Arc::new(Progress::default())).await.expect("ingest");
    assert_eq!(summary.recovery.intents_finished, 1);
    assert_eq!(intents(), 0);
    let text = scrape(addr).expect("scrape");
    counters_match_the_lake(&text, &wh, report.files).await;
}

/// The scraped counters count what the lake holds once: its `files` files, the new transactions of `sales_header`,
/// and the dead letters (counted at the write until session 35, so a failed commit's were counted again).
async fn counters_match_the_lake(text: &str, wh: &Warehouse, files: u64) {
    assert_eq!(wh.row_count("file_ledger").await.expect("ledger"), files, "every file landed once");
    assert_eq!(sample(text, "poslake_files_total", "") as u64, files, "{text}");
    let landed = wh.row_count("sales_header").await.expect("headers");
    assert_eq!(sample(text, "poslake_transactions_total", "verdict=\"new\"") as u64, landed, "{text}");
    let dead = wh.row_count("dead_letters").await.expect("dead letters");
    assert!(dead > 0, "the corpus has malformed files");
    assert_eq!(sample(text, "poslake_dead_letters_total", "") as u64, dead, "{text}");
}

/// Installs this test process's Prometheus endpoint (one per process: nextest runs each test in its own) and
/// returns its address.
fn serve_metrics_on_a_free_port() -> SocketAddr {
    let addr = free_addr();
    poslake::telemetry::serve_metrics(addr).expect("serve metrics");
    addr
}

/// The value of one sample (`name{labels} value`), summed over label sets that contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_what_the_run_reports() {
    let addr = serve_metrics_on_a_free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    small_corpus(&staging, 37);
    // Files count once committed: a commit every 2 files moves the counters mid-run.
    let setup = IngestSetup {
        policy: CommitPolicy { files: 2, ..CommitPolicy::default() },
        ..IngestSetup::new(IngestPaths { staging, lake: dir.path().join("lake"), archive: None, catalog: None })
    };
    let pipeline = PipelineConfig {
        downloaders: 1,
        parsers: 1,
        archivers: 1,
        batch_files: 1,
        flush_interval: Duration::from_millis(10),
        limits: FlowLimits { max_files: 1, max_bytes: 1 << 20 },
        ..PipelineConfig::default()
    };
    let progress = Arc::new(Progress::default());
    let during = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            // Scraped mid-run: the counters move while files are still in flight.
            loop {
                let s = progress.snapshot();
                if s.done >= 3 && !s.discovery_done {
                    return scrape(addr).map(|t| sample(&t, "poslake_files_total", ""));
                }
                if s.discovery_done && s.done >= s.discovered && s.discovered > 0 {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let summary = ingest(&setup, pipeline, progress).await.expect("ingest");
    let mid = during.await.expect("scraper").expect("scraped during the run");
    assert!(mid >= 2.0 && mid < summary.files as f64, "mid-run files {mid} of {}", summary.files);

    let text = scrape(addr).expect("scrape");
    let ingested = sample(&text, "poslake_files_total", "outcome=\"ingested\"");
    let dead = sample(&text, "poslake_files_total", "outcome=\"dead_letter\"");
    assert_eq!((ingested + dead) as u64, summary.files, "{text}");
    assert_eq!(dead as u64, summary.dead_letters);
    assert_eq!(sample(&text, "poslake_dead_letters_total", "") as u64, summary.dead_letters);
    assert_eq!(sample(&text, "poslake_bytes_total", "") as u64, summary.bytes);
    assert_eq!(sample(&text, "poslake_transactions_total", "verdict=\"new\"") as u64, summary.new_transactions);
    let dup = sample(&text, "poslake_transactions_total", "verdict=\"duplicate\"")
        + sample(&text, "poslake_transactions_total", "verdict=\"quarantined\"");
    assert_eq!(dup as u64, summary.duplicate_transactions);
    assert!(sample(&text, "poslake_commits_total", "") >= 1.0);
    assert!(sample(&text, "poslake_commit_seconds_count", "") >= 1.0);
    assert!(text.contains("poslake_queue_depth{stage=\"parse\"}"), "{text}");
    assert!(text.contains("poslake_in_flight_files"), "{text}");
}

/// The compose file runs poslake (the ingest, and the maintenance loop) with flags the binary accepts, and mounts
/// the configuration the image expects.
#[test]
fn the_compose_file_matches_the_command_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(root.join("deploy/compose.yaml")).expect("compose.yaml");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["ingest", "--help"])
        .output()
        .expect("poslake ingest --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = compose.lines().filter_map(|l| l.trim().strip_prefix("- --")).collect();
    assert!(flags.len() >= 5, "{flags:?}");
    for flag in flags {
        assert!(help.contains(&format!("--{flag}")), "poslake ingest has no --{flag}");
    }
    // The maintenance service's shell loop passes flags that `poslake maintain` takes.
    let maintain = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
        .args(["maintain", "--help"])
        .output()
        .expect("poslake maintain --help");
    let maintain = String::from_utf8_lossy(&maintain.stdout);
    let service = compose.split("\n  maintain:\n").nth(1).expect("a maintain service");
    let service = service.split("\nvolumes:").next().unwrap_or(service);
    let flags: Vec<&str> = service.split_whitespace().filter(|w| w.starts_with("--")).collect();
    assert!(flags.contains(&"--remove-orphans-older-than-hours"), "{flags:?}");
    for flag in flags {
        assert!(maintain.contains(flag.trim_end_matches(';')), "poslake maintain has no {flag}");
    }
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("/etc/poslake/poslake.toml") && compose.contains(":/etc/poslake/poslake.toml:ro"));
    assert!(compose.contains("OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4317"));
}

/// The Kubernetes manifest runs the ingest and the maintenance job with flags and environment variables the binary
/// takes, and mounts the configuration where the image reads it.
#[test]
fn the_kubernetes_manifest_matches_the_command_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("deploy/kubernetes.yaml")).expect("kubernetes.yaml");
    let help = |command: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args([command, "--help"])
            .output()
            .expect("poslake --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let documents: Vec<&str> = manifest.split("\n---\n").collect();
    let workload = |kind: &str| *documents.iter().find(|d| d.contains(&format!("kind: {kind}\n"))).expect(kind);
    for (kind, command) in [("Deployment", "ingest"), ("CronJob", "maintain")] {
        let doc = workload(kind);
        let help = help(command);
        assert!(doc.contains(&format!("- {command}\n")), "{kind} runs poslake {command}");
        let flags: Vec<&str> = doc.lines().filter_map(|l| l.trim().strip_prefix("- --")).collect();
        assert!(flags.len() >= 3, "{kind}: {flags:?}");
        for flag in flags {
            assert!(help.contains(&format!("--{flag}")), "poslake {command} has no --{flag}");
        }
        // Every POSLAKE_ variable set is one the command reads (POSLAKE_WORKER_ID is read by the ingest itself).
        let vars =
            doc.split("name: ").skip(1).filter_map(|r| r.split(|c: char| !(c.is_alphanumeric() || c == '_')).next());
        for var in vars.filter(|v| v.starts_with("POSLAKE_") && *v != "POSLAKE_WORKER_ID") {
            assert!(help.contains(&format!("env: {var}=")), "poslake {command} reads no {var}");
        }
        assert!(doc.contains("mountPath: /etc/poslake") && doc.contains("/etc/poslake/poslake.toml"), "{kind}");
    }
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("--uid 10001") && manifest.matches("runAsUser: 10001").count() == 2);
    assert!(std::fs::read_to_string(root.join("src/config.rs")).expect("source").contains("\"POSLAKE_WORKER_ID\""));
}

/// OTLP over HTTP/protobuf: a plain HTTP receiver (one POST per export) gets the same spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_otlp_http_too() {
    use prost::Message;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            // Headers, then Content-Length bytes of body.
            let (path, body) = loop {
                let Ok(n) = stream.read(&mut chunk) else { break (String::new(), Vec::new()) };
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    break (path, buf[end + 4..end + 4 + len].to_vec());
                }
            };
            if let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                let mut spans = sink.lock().expect("sink");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans.into_iter().map(|s| (path.clone(), s)));
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    let report = small_corpus(&staging, 43);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
    cmd.args(["ingest", "--otlp-protocol", "http", "--otlp-endpoint", &format!("http://{addr}")])
        .arg("--staging")
        .arg(&staging)
        .arg("--lake")
        .arg(dir.path().join("lake"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run poslake");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spans = received.lock().expect("spans").clone();
    assert!(spans.iter().all(|(path, _)| path == "/v1/traces"), "posted to /v1/traces");
    let files = spans.iter().filter(|(_, s)| s.name == "file").count() as u64;
    assert_eq!(files, report.files, "every file's span arrived over HTTP");
    assert!(spans.iter().any(|(_, s)| s.name == "commit"));
}
