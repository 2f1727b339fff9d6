//! Logs, traces and metrics.
//!
//! - **Logs**: `tracing` events on stderr, as text or JSON (`--log-format json`), filtered by `RUST_LOG` (default
//!   `warn,poslake=info`). One line per notable event; nothing per record at info.
//! - **Traces**: the same spans exported with tracing-opentelemetry over OTLP, gRPC by default or HTTP/protobuf, to
//!   any OTLP endpoint (Jaeger takes OTLP on 4317/4318). Off unless an endpoint is given (`--otlp-endpoint` or the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT`); `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME` and
//!   `OTEL_TRACES_SAMPLER_ARG` are honoured. Sampling is per trace (one trace per batch), parent-based.
//! - **Metrics**: Prometheus text at `--metrics-addr` (the `metrics` facade; names in [`metric`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The metric names poslake publishes, in one place (also listed in docs/observability.md).
pub mod metric {
    pub use poslake_actors::metric::*;
    /// Redis round trips, seconds (histogram).
    pub const REDIS_ROUND_TRIP: &str = "poslake_redis_round_trip_seconds";
    /// Redis round trips that failed and were retried.
    pub const REDIS_RETRIES: &str = "poslake_redis_retries_total";
    /// Commits across the tables, seconds (histogram).
    pub const COMMIT_SECONDS: &str = "poslake_commit_seconds";
    pub const COMMITS: &str = "poslake_commits_total";
    /// Runs of a service (`ingest --every`), by outcome (completed, failed).
    pub const RUNS: &str = "poslake_runs_total";
    /// With `workers = "auto"`: route slots this worker leased at its last run's start (gauge).
    pub const ROUTE_SLOTS: &str = "poslake_route_slots";
    /// With `workers = "auto"`: live workers sharing the staging area at the last claim (gauge).
    pub const ROUTE_WORKERS: &str = "poslake_route_workers";
    /// With `workers = "auto"`: route slot leases lost mid-run (counter).
    pub const ROUTE_LEASES_LOST: &str = "poslake_route_leases_lost_total";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (Jaeger: port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (Jaeger: port 4318, path /v1/traces).
    Http,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// Where to export spans; `None` reads `OTEL_EXPORTER_OTLP_ENDPOINT`, and tracing is off if that is unset too.
    pub otlp_endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`), else gRPC.
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Fraction of batches traced; `None`: `OTEL_TRACES_SAMPLER_ARG`, else 1.0.
    pub sample_ratio: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("metrics endpoint {addr}: {error}")]
    Metrics { addr: SocketAddr, error: String },
    #[error("telemetry: {0}")]
    Config(String),
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Where spans go, for the log.
    pub exporting_to: Option<String>,
    /// Spans the endpoint did not take (see [`Reporting`]).
    dropped: Arc<AtomicU64>,
}

impl Telemetry {
    /// Flushes and stops the exporter (call before the async runtime ends).
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            // A collector that takes connections and never answers ends here (a timeout), with no count: the spans
            // still buffered are lost.
            notice(Notice::Warning, &format!("flushing spans to the OTLP endpoint failed: {e}"));
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let to = self.exporting_to.as_deref().unwrap_or("the OTLP endpoint");
            notice(Notice::Warning, &format!("{dropped} spans could not be exported to {to}"));
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// `--log-format json` was asked for, whether or not the log could be set up (a bad variable stops it first).
static JSON_ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether log lines are JSON objects (`--log-format json`): notices meant for a person then go through the log too,
/// so that every line of stderr is one object.
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a [`notice`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Error,
    Warning,
    Note,
    /// A line of its own, without a prefix.
    Plain,
    /// A failure told on a line of its own, without a prefix (an error in the log).
    Failure,
}

/// A line on stderr meant for a person: as written (`error: …`, `warning: …`, `note: …`), or with
/// `--log-format json` an event of the log (error, warn, info), so that every line of stderr stays one JSON object.
pub fn notice(kind: Notice, text: &str) {
    if json_logs() {
        match kind {
            Notice::Error | Notice::Failure => tracing::error!("{text}"),
            Notice::Warning => tracing::warn!("{text}"),
            Notice::Note | Notice::Plain => tracing::info!("{text}"),
        }
        return;
    }
    // Asked for, but the log could not be set up (the error being told is why): the same object, by hand.
    if JSON_ASKED.load(std::sync::atomic::Ordering::Relaxed) {
        let level = match kind {
            Notice::Error | Notice::Failure => "ERROR",
            Notice::Warning => "WARN",
            Notice::Note | Notice::Plain => "INFO",
        };
        log_line_by_hand(level, text);
        return;
    }
    let prefix = match kind {
        Notice::Error => "error: ",
        Notice::Warning => "warning: ",
        Notice::Note => "note: ",
        Notice::Plain | Notice::Failure => "",
    };
    eprintln!("{prefix}{text}");
}

/// One line of the JSON log written without it (before it is set up, or when it cannot be), in its shape.
pub fn log_line_by_hand(level: &str, text: &str) {
    let line = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": level,
        "fields": { "message": text },
        "target": "poslake",
    });
    eprintln!("{line}");
}

/// Installs the global subscriber: logs always, traces when an endpoint is configured. Call once, inside the
/// Tokio runtime (the gRPC exporter's connection lives on it).
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    // Notices go through the log only once it is installed; an error before that (a bad variable) is written as one
    // of its lines by hand.
    let json = config.log_format == LogFormat::Json;
    JSON_ASKED.store(json, std::sync::atomic::Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,poslake=info"));
    let logs = match config.log_format {
        // Colours on a terminal only: in a file or a pipe they are escape codes in the text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);

    // The standard variables are checked as strictly as the flags, whether or not tracing is on: a typo is an error,
    // not a silent default (nor one that waits for the day an endpoint is set).
    let protocol = match config.otlp_protocol {
        Some(p) => p,
        None => match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/protobuf") | Ok("http") => OtlpProtocol::Http,
            Ok("grpc") | Ok("") | Err(_) => OtlpProtocol::Grpc,
            Ok(other) => {
                return Err(TelemetryError::Config(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use grpc or http/protobuf"
                )));
            }
        },
    };
    let ratio = match config.sample_ratio {
        Some(r) => r,
        None => match std::env::var("OTEL_TRACES_SAMPLER_ARG") {
            Ok(v) if !v.is_empty() => v.parse().map_err(|_| {
                TelemetryError::Config(format!("OTEL_TRACES_SAMPLER_ARG={v:?} is not a number within 0..=1"))
            })?,
            _ => 1.0,
        },
    };
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TelemetryError::Config(format!("the sampling ratio must be within 0..=1, not {ratio}")));
    }
    let endpoint = config.otlp_endpoint.clone().or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(logs).try_init().map_err(|e| TelemetryError::Config(e.to_string()))?;
        JSON_LOGS.store(json, std::sync::atomic::Ordering::Relaxed);
        return Ok(Telemetry { provider: None, exporting_to: None, dropped: Arc::default() });
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            let grpc = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&endpoint);
            if endpoint.to_ascii_lowercase().starts_with("https://") {
                // The system's roots, and SSL_CERT_FILE / SSL_CERT_DIR for a private CA, as for Redis over TLS.
                crate::install_tls_provider();
                let tls = opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_native_roots();
                grpc.with_tls_config(tls).build()
            } else {
                grpc.build()
            }
        }
        OtlpProtocol::Http => {
            // Its reqwest client speaks TLS for https:// endpoints, with the process's provider.
            crate::install_tls_provider();
            // The HTTP exporter wants the full path; accept the base URL Jaeger documents (…:4318) too.
            let url = if endpoint.ends_with("/v1/traces") {
                endpoint.clone()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .build()
        }
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "poslake".into());
    let dropped = Arc::new(AtomicU64::new(0));
    let exporter = Reporting { inner: exporter, endpoint: endpoint.clone(), dropped: dropped.clone() };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("poslake");
    // Spans at info and above are exported whatever RUST_LOG says about logs.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("info,iceberg=off,datafusion=off,h2=off,tonic=off,hyper=off,reqwest=off,sqlx=off"));
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::Config(e.to_string()))?;
    JSON_LOGS.store(json, std::sync::atomic::Ordering::Relaxed);
    let exporting_to = format!("{endpoint} ({protocol:?}, sampling {ratio})");
    tracing::info!(endpoint = %exporting_to, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider), exporting_to: Some(exporting_to), dropped })
}

/// The OTLP exporter, reporting what it could not deliver: the SDK drops a failed batch without a word, so a
/// collector that is down would go unnoticed. The first failure is logged as it happens; the count of dropped spans
/// is printed when the pipeline shuts down.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    endpoint: String,
    dropped: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result
            && self.dropped.fetch_add(spans, Ordering::Relaxed) == 0
        {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %e,
                "exporting spans over OTLP failed, and they are dropped (is the collector up?)"
            );
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Serves Prometheus text metrics at `addr` (`GET /metrics`, or any path) and installs the global recorder. Call
/// inside the Tokio runtime, once.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), TelemetryError> {
    let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&seconds)
        .map_err(|e| TelemetryError::Metrics { addr, error: e.to_string() })?
        .install()
        .map_err(|e| TelemetryError::Metrics { addr, error: e.to_string() })?;
    describe();
    Ok(())
}

fn describe() {
    use metric::*;
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(FILES, "Files finished, by outcome (ingested, dead_letter)");
    describe_counter!(BYTES, "Bytes of the files finished");
    describe_counter!(TRANSACTIONS, "Transactions, by verdict (new, duplicate, quarantined)");
    describe_counter!(DEAD_LETTERS, "Dead letters, by stage and reason");
    describe_counter!(RETRIES, "Stage retries, by stage");
    describe_counter!(RESTARTS, "Actor restarts, by actor");
    describe_gauge!(IN_FLIGHT_FILES, "Files between discovery and commit (bounded by the credits)");
    describe_gauge!(IN_FLIGHT_BYTES, "Raw bytes between discovery and commit (bounded by the credits)");
    describe_gauge!(QUEUE_DEPTH, "Work registered with each stage's actors (in hand or in their mailboxes)");
    describe_histogram!(REDIS_ROUND_TRIP, "Redis round-trip latency, seconds");
    describe_counter!(REDIS_RETRIES, "Redis round trips retried after a connection error or timeout");
    describe_histogram!(COMMIT_SECONDS, "Commit latency across the tables, seconds");
    describe_counter!(COMMITS, "Commits made");
    describe_counter!(RUNS, "Runs of a service (ingest --every), by outcome (completed, failed)");
    describe_gauge!(ROUTE_SLOTS, "Route slots this worker leased at its last run's start (workers = auto)");
    describe_gauge!(ROUTE_WORKERS, "Live workers sharing the staging area at the last claim (workers = auto)");
    describe_counter!(ROUTE_LEASES_LOST, "Route slot leases lost mid-run (workers = auto)");
}

/// The trace id of the current span, if it is being exported (for the file ledger).
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}
