//! The `poslake` command line: the binary edge, where errors become messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use poslake::{Dialect, ParseOptions, parse_file};

mod cli;
use cli::stop::Stopper;

/// Stdout was closed by its reader (`poslake tables | head -1`): the command ends quietly, as Unix tools do.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
struct StdoutClosed;

/// `println!` that returns an error instead of panicking when stdout fails.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("writing to stdout"),
        })?
    }};
}

#[derive(Parser)]
#[command(name = "poslake", version, about = "Lands POS transaction-log XML in an Iceberg lakehouse")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten, next_help_heading = "Logs, traces and metrics")]
    telemetry: TelemetryArgs,
}

/// Logs, traces and metrics (see docs/observability.md).
#[derive(clap::Args)]
struct TelemetryArgs {
    /// Log lines on stderr as text or JSON.
    #[arg(long, global = true, env = "POSLAKE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: poslake::telemetry::LogFormat,
    /// Export traces over OTLP to this endpoint (e.g. http://localhost:4317 for Jaeger). Also read from
    /// OTEL_EXPORTER_OTLP_ENDPOINT; tracing is off when neither is set.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    /// OTLP transport. [default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc]
    #[arg(long, global = true, value_enum)]
    otlp_protocol: Option<poslake::telemetry::OtlpProtocol>,
    /// Fraction of batches traced (0..=1). [default: OTEL_TRACES_SAMPLER_ARG, else 1]
    #[arg(long, global = true)]
    trace_sample_ratio: Option<f64>,
    /// Serve Prometheus metrics at this address (e.g. 0.0.0.0:9464).
    #[arg(long, global = true, env = "POSLAKE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse POS files and print what they yield as JSON (one object per file), or a one-line summary each.
    Parse {
        /// Files or folders to parse (plain or gzip-compressed XML; folders are walked for *.xml and *.gz).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Parse as this dialect instead of detecting it.
        #[arg(long)]
        dialect: Option<Dialect>,
        /// Print one summary line per file instead of the full records.
        #[arg(long)]
        summary: bool,
    },
    /// Generate a deterministic corpus of POS files in all six dialects, with a manifest of expected keys.
    Generate(poslake::generate::GenerateArgs),
    /// Ingest every new file in staging into the lake (the main job).
    Ingest(IngestArgs),
    /// Take dead-lettered files again, once what refused them is fixed (a newer poslake, a raised limit, a corrected
    /// file re-sent under the same name and size, which `ingest` skips as seen). Each is read from staging, or from
    /// the bronze archive when staging no longer holds it; one that lands is not taken again.
    Replay {
        #[command(flatten)]
        ingest: IngestArgs,
        #[command(flatten)]
        filter: ReplayArgs,
    },
    /// Run SQL over the lake's tables (DataFusion) and print the result as a table.
    Query {
        /// One SQL statement, e.g. "SELECT transaction_type, count(*) FROM sales_header GROUP BY 1".
        sql: String,
        #[command(flatten)]
        lake: LakeArgs,
    },
    /// List the lake's tables with their current snapshot and row count.
    Tables {
        #[command(flatten)]
        lake: LakeArgs,
    },
    /// The dedup store: size a filter, show its health, or rebuild it from the lake.
    Dedup {
        #[command(subcommand)]
        command: DedupCommand,
    },
    /// Table maintenance: merge small manifests, and expire old snapshots of every table, keeping the newest N and
    /// every snapshot whose commit is not yet complete (an ingest does this every N/4 commits; see docs/lake.md).
    Maintain {
        #[command(flatten)]
        store: StoreArgs,
        /// Snapshots to keep per table. [default: keep_snapshots of the configuration, 100]
        #[arg(long)]
        keep: Option<usize>,
        /// Also delete files no snapshot references (left by failed or killed runs) that are older than this many
        /// hours. Younger ones may belong to an ingest still running. Iceberg's usual choice is 72.
        #[arg(long)]
        remove_orphans_older_than_hours: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the quarantine (`sales_duplicates`) exactly against `sales_header` and promote the false positives.
    Reconcile {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DedupCommand {
    /// Print the shape of one period's Bloom filter: memory, shards, hashes, false-positive rate.
    Plan {
        /// Distinct keys the period's filter must hold.
        #[arg(long, default_value_t = 100_000_000)]
        expected_keys: u64,
        /// Target false-positive rate at that many keys.
        #[arg(long, default_value_t = 0.001)]
        fp: f64,
        /// Largest Redis string per shard, MiB.
        #[arg(long, default_value_t = 128)]
        max_shard_mib: u64,
    },
    /// Per-partition fill, estimated keys and the false-positive rate now; the file index; the workers sharing
    /// staging with `--workers auto`.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        /// Print it all as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Re-add every key of `sales_header` to the store (a lost, flushed or new filter).
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Measure a Redis store as the ingest uses it (check, then add) on random keys under a throwaway prefix:
    /// keys/s, the server's CPU, memory per key, measured false positives.
    Bench {
        #[command(flatten)]
        store: StoreArgs,
        /// Keys to check and add.
        #[arg(long, default_value_t = 2_000_000)]
        keys: u64,
        /// Keys per call of the store (split into round trips of `keys_per_round_trip`, run concurrently).
        #[arg(long, default_value_t = 20_000)]
        keys_per_call: usize,
        /// Calls in flight at once, each a check then an add. The ingest runs two: its dedup batcher checks the next
        /// batch while its committer adds the last one's keys.
        #[arg(long, default_value_t = 2)]
        callers: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters `poslake replay` takes (all by default).
#[derive(clap::Args)]
struct ReplayArgs {
    /// Only files refused at this stage: download, parse or archive (repeatable).
    #[arg(long = "stage", value_name = "STAGE")]
    stages: Vec<String>,
    /// Only files refused for this reason, as `dead_letters.kind` has it: malformed, truncated, schema, too_large,
    /// unknown_dialect, ... (repeatable).
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Only files whose staging path starts with this.
    #[arg(long)]
    path_prefix: Option<String>,
    /// List the files a replay would take (path, size, stage, kind, reason) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl ReplayArgs {
    fn filter(&self) -> poslake::ingest::replay::ReplayFilter {
        poslake::ingest::replay::ReplayFilter {
            stages: self.stages.clone(),
            kinds: self.kinds.clone(),
            path_prefix: self.path_prefix.clone(),
        }
    }
}

/// The lake and the dedup store, for commands that need both (flags override the configuration file).
#[derive(clap::Args)]
struct StoreArgs {
    /// A TOML configuration file (see deploy/poslake.toml).
    #[arg(long, env = "POSLAKE_CONFIG")]
    config: Option<PathBuf>,
    /// The lake root. [default: poslake-data/lake]
    #[arg(long, env = "POSLAKE_LAKE")]
    lake: Option<PathBuf>,
    /// The dedup store. [default: embedded]
    #[arg(long, env = "POSLAKE_DEDUP", value_enum)]
    dedup: Option<poslake::config::DedupBackend>,
    /// Redis URL for the Redis stores (rediss:// for TLS). [default: redis://127.0.0.1:6379]
    #[arg(long, env = "POSLAKE_REDIS_URL")]
    redis_url: Option<String>,
    /// The Iceberg catalog's PostgreSQL database (postgres://USER[:PASSWORD]@HOST:PORT/DATABASE), shared by workers on
    /// several hosts. [default: SQLite in the lake]
    #[arg(long, env = "POSLAKE_CATALOG", value_name = "URL")]
    catalog: Option<String>,
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        let c = self.unvalidated()?;
        c.validate()?;
        Ok(c)
    }

    /// The file (or the defaults) with these flags over it; the caller applies its own flags, then validates.
    fn unvalidated(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        let mut c = match &self.config {
            Some(path) => poslake::config::IngestConfig::read(path)?,
            None => poslake::config::IngestConfig::default(),
        };
        if let Some(lake) = &self.lake {
            c.lake = lake.clone();
        }
        if let Some(b) = self.dedup {
            c.dedup.backend = b;
        }
        if let Some(url) = &self.redis_url {
            c.dedup.redis_url = url.clone();
        }
        // An empty value (`POSLAKE_CATALOG=`) means none: SQLite in the lake.
        if let Some(url) = &self.catalog {
            c.catalog = Some(url.clone()).filter(|u| !u.is_empty());
        }
        Ok(c)
    }
}

#[derive(clap::Args)]
struct LakeArgs {
    /// The lake root: Iceberg catalog (SQLite), warehouse files, bronze archive and dedup store.
    #[arg(long, env = "POSLAKE_LAKE", default_value = "poslake-data/lake")]
    lake: PathBuf,
    /// The Iceberg catalog's PostgreSQL database, if the lake has one. [default: SQLite in the lake]
    #[arg(long, env = "POSLAKE_CATALOG", value_name = "URL")]
    catalog: Option<String>,
}

/// Flags override the configuration file, which overrides the defaults (see `deploy/poslake.toml`).
#[derive(clap::Args)]
struct IngestArgs {
    /// The configuration file, the lake and the dedup store.
    #[command(flatten)]
    store: StoreArgs,
    /// Where files arrive: a local folder, or Azure Blob Storage / ADLS Gen2 as az://CONTAINER/PREFIX,
    /// abfss://FILESYSTEM@ACCOUNT.dfs.core.windows.net/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX
    /// (credentials from AZURE_* variables). [default: poslake-data/staging]
    #[arg(long, env = "POSLAKE_STAGING")]
    staging: Option<PathBuf>,
    /// Where raw files are archived (bronze/raw/... below it): a local folder, or an Azure URL as for --staging.
    /// [default: in the lake]
    #[arg(long, env = "POSLAKE_ARCHIVE", value_name = "DIR|URL")]
    archive: Option<PathBuf>,
    /// Print the run summary as JSON (and no progress line).
    #[arg(long)]
    json: bool,
    /// Parser actors (CPU bound). [default: one per core]
    #[arg(long)]
    parsers: Option<usize>,
    /// Downloader actors (I/O bound): GETs in flight at once. [default: 16 for a folder, 64 for Azure]
    #[arg(long)]
    downloaders: Option<usize>,
    /// Files per write batch. [default: 16]
    #[arg(long)]
    batch_files: Option<usize>,
    /// Files in flight at most (bounds memory). [default: 32; 128 with Azure staging, 64 with an Azure archive]
    #[arg(long)]
    max_files_in_flight: Option<u32>,
    /// Raw MiB in flight at most (bounds memory; parsed files take several times their raw size). [default: 32]
    #[arg(long)]
    max_mib_in_flight: Option<u64>,
    /// Files per Iceberg commit (also committed every commit_interval_secs and at the end). [default: 2000]
    #[arg(long)]
    commit_files: Option<u64>,
    /// Run as a service: ingest again every DURATION (e.g. 10m, 90s) until SIGTERM or Ctrl-C, which drain the run
    /// in progress. [default: every_secs of the configuration; 0, run once]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    every: Option<std::time::Duration>,
    /// Workers sharing this staging area and lake (with a Redis dedup store); each takes the files routed to it. A
    /// count (each worker given --worker-index), or `auto`: the live workers share the files out through leases in
    /// Redis. [default: 1]
    #[arg(long, env = "POSLAKE_WORKERS", value_name = "N|auto")]
    workers: Option<poslake::config::Workers>,
    /// This worker's index, 0 to workers - 1. [default: 0]
    #[arg(long, env = "POSLAKE_WORKER_INDEX")]
    worker_index: Option<u32>,
    /// Route files to workers by this regular expression's first capture group in the staging path, e.g.
    /// 'site=([^/]+)'. [default: by the file's folder]
    #[arg(long, value_name = "REGEX")]
    route_by: Option<String>,
}

impl IngestArgs {
    /// The configuration file (or the defaults) with the flags given applied over it, validated.
    fn config(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        let mut c = self.store.unvalidated()?;
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        over!(staging, batch_files, max_mib_in_flight, commit_files, workers, worker_index);
        if self.route_by.is_some() {
            c.route_by = self.route_by.clone();
        }
        // Settings that stay optional: unset, they follow the cores or the staging kind (`IngestConfig::downloaders`).
        macro_rules! over_optional {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f; } )* };
        }
        over_optional!(parsers, downloaders, max_files_in_flight);
        if self.archive.is_some() {
            c.archive = self.archive.clone();
        }
        if let Some(every) = self.every {
            anyhow::ensure!(
                every.as_secs() >= 1 && every.subsec_nanos() == 0,
                "--every takes whole seconds, at least 1s (got {})",
                humantime::format_duration(every)
            );
            c.every_secs = every.as_secs();
        }
        c.validate()?;
        Ok(c)
    }
}

// glibc's malloc spent about a fifth of an ingest's CPU in a profile (consolidating and splitting chunks as
// parsed files, Arrow buffers and Parquet pages come and go across threads). jemalloc cut CPU and peak RSS;
// mimalloc was faster still but held 4-8 times the memory, as buffers are freed on other threads.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one arena instead of four per core. An ingest allocates on many threads
/// (parsers on tokio's blocking pool, the writer, fjall's flush thread), and each arena keeps its own freed pages
/// (about 40-58 MB of an ingest's 120 MB held by jemalloc are freed pages waiting for its 10-second decay); the
/// per-thread caches keep the shared arena's lock cheap. Measured on gzipped corpora of 75 transactions a file, lake
/// on tmpfs, alternated: 10,233 files peaked at 155-159 MiB against 167-173 with two arenas (4 runs each) and
/// 102,062 files at 173/176 against 189/193 MiB, CPU within the host's noise (17.5-18.9 against 16.8-18.7 s).
/// Two arenas had in turn taken the 10,000-file bench from 222-241 to 193-202 MiB against the default.
/// `_RJEM_MALLOC_CONF` overrides it at run time.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(unsafe { &*c"narenas:1".as_ptr() });

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any client is built: whichever speaks TLS (Redis, Azure, OTLP over HTTPS) needs it.
    poslake::install_tls_provider();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            // Notable events (recoveries, an unreachable Redis, capacity warnings) on stderr; RUST_LOG refines
            // them. Traces and metrics when asked for.
            let t = &cli.telemetry;
            let mut telemetry = poslake::telemetry::init(&poslake::telemetry::TelemetryConfig {
                log_format: t.log_format,
                otlp_endpoint: t.otlp_endpoint.clone(),
                otlp_protocol: t.otlp_protocol,
                sample_ratio: t.trace_sample_ratio,
            })?;
            if let Some(addr) = t.metrics_addr {
                poslake::telemetry::serve_metrics(addr)?;
                tracing::info!(%addr, "serving Prometheus metrics");
            }
            let result = run(cli.command).await;
            telemetry.shutdown();
            result
        })
    });
    match result {
        Ok(code) => code,
        Err(err) if err.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined with ": ", leaving out a cause whose text is already there: many errors (those
/// of object_store among them) print their source in their own message too.
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Parse { files, dialect, summary } => {
            let opts = ParseOptions { dialect, ..ParseOptions::default() };
            let files = expand(&files)?;
            let (mut failed, mut bytes_total, mut transactions) = (0usize, 0u64, 0u64);
            let started = std::time::Instant::now();
            for path in &files {
                let bytes = match std::fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        failed += 1;
                        eprintln!("read: {}: {err}", path.display());
                        continue;
                    }
                };
                bytes_total += bytes.len() as u64;
                let name = path.display().to_string();
                match parse_file(&name, &bytes, &opts) {
                    Ok(parsed) if summary => {
                        let f = &parsed.facts;
                        transactions += u64::from(f.transaction_count);
                        say!(
                            "{name}: {} site={} transactions={} lines={} discounts={} bytes={}",
                            f.dialect,
                            f.site.as_deref().unwrap_or("-"),
                            f.transaction_count,
                            f.line_count,
                            f.discount_count,
                            f.bytes
                        );
                    }
                    Ok(parsed) => say!("{}", serde_json::to_string_pretty(&parsed)?),
                    Err(err) => {
                        failed += 1;
                        eprintln!("{}: {err}", err.kind());
                    }
                }
            }
            if summary {
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                say!(
                    "total: {} files ({failed} failed), {transactions} transactions, {:.1} MB in {secs:.2}s: \
                     {:.0} files/s, {:.1} MB/s on one core",
                    files.len(),
                    bytes_total as f64 / 1e6,
                    files.len() as f64 / secs,
                    bytes_total as f64 / 1e6 / secs
                );
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Ingest(args) => ingest(args, None).await,
        Command::Replay { ingest: args, filter } if filter.dry_run => dry_run(args, filter).await,
        Command::Replay { ingest: args, filter } => ingest(args, Some(filter.filter())).await,
        Command::Tables { lake } => tables(lake).await,
        Command::Query { sql, lake } => query(sql, lake).await,
        Command::Dedup { command } => dedup(command).await,
        Command::Reconcile { store, json } => reconcile(store, json).await,
        Command::Maintain { store, keep, remove_orphans_older_than_hours, json } => {
            maintain(store, keep, remove_orphans_older_than_hours, json).await
        }
        Command::Generate(args) => {
            let report = poslake::generate::generate(&args)?;
            say!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Files as given, folders walked (sorted, so output order is stable) for `*.xml` and `*.gz`.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut stack = vec![p.clone()];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "xml" || e == "gz") {
                    found.push(path);
                }
            }
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// An ingest of what staging holds that is new, once or (`--every`) again and again as a service; or (`replay`) a
/// replay of the dead letters the filter selects.
async fn ingest(args: IngestArgs, replay: Option<poslake::ingest::replay::ReplayFilter>) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    if replay.is_some() {
        anyhow::ensure!(args.every.is_none(), "--every is for `poslake ingest`: a replay runs once");
        existing_lake(&config.lake, config.catalog.as_deref())?;
    }
    let setup = poslake::ingest::IngestSetup {
        paths: poslake::ingest::IngestPaths {
            staging: config.staging.clone(),
            lake: config.lake.clone(),
            archive: config.archive.clone(),
            catalog: config.catalog.clone(),
        },
        parse: ParseOptions::default(),
        policy: config.commit_policy(),
        dedup: config.dedup.clone(),
        // A replay takes the dead letters it selects, whichever worker refused them.
        route: match replay {
            Some(_) => poslake::ingest::route::Route::all(),
            None if config.workers == poslake::config::Workers::Auto => {
                let ttl = std::time::Duration::from_secs(config.route_lease_secs);
                let leases =
                    poslake::ingest::slot_leases::SlotLeases::join(&config.dedup, ttl, config.route_by.as_deref())
                        .await
                        .context("joining the workers that share staging (workers = auto)")?;
                poslake::ingest::route::Route::leased(config.route_by.as_deref(), leases)?
            }
            None => config.route()?,
        },
    };
    let result = ingest_as_configured(&args, &config, &setup, replay).await;
    // Its share goes to the other workers at once, rather than after its leases expire.
    if let Some(leases) = setup.route.leases() {
        let left = tokio::time::timeout(std::time::Duration::from_secs(5), leases.leave()).await;
        if let Err(e) = left.map_err(|_| "no answer within 5 s".to_owned()).and_then(|r| r.map_err(|e| e.to_string())) {
            tracing::warn!(error = %e, "could not leave the workers that share staging; its leases will expire");
        }
    }
    result
}

async fn ingest_as_configured(
    args: &IngestArgs,
    config: &poslake::config::IngestConfig,
    setup: &poslake::ingest::IngestSetup,
    replay: Option<poslake::ingest::replay::ReplayFilter>,
) -> anyhow::Result<ExitCode> {
    let stopper = Stopper::install().context("listening for SIGINT and SIGTERM")?;
    let every = match (&replay, config.every_secs) {
        (None, secs) if secs > 0 => std::time::Duration::from_secs(secs),
        _ => {
            let summary = run_once(args, config, setup, replay.as_ref(), &stopper).await?;
            print_summary(&summary, args.json, false, &stopper)?;
            return Ok(match stopper.signal() {
                Some(signal) if summary.interrupted => ExitCode::from(signal.exit_code()),
                _ => ExitCode::SUCCESS,
            });
        }
    };

    // As a service: a run every `every` (at once if one took longer), until a signal. A failed run is logged and the
    // next one tries again; `max_failed_runs` in a row end the process, so that an orchestrator sees it.
    tracing::info!(every = %humantime::format_duration(every), "running as a service: an ingest every interval");
    let mut failed = 0;
    loop {
        let started = tokio::time::Instant::now();
        match run_once(args, config, setup, None, &stopper).await {
            Ok(summary) => {
                failed = 0;
                metrics::counter!(poslake::telemetry::metric::RUNS, "outcome" => "completed").increment(1);
                print_summary(&summary, args.json, true, &stopper)?;
            }
            Err(e) => {
                failed += 1;
                metrics::counter!(poslake::telemetry::metric::RUNS, "outcome" => "failed").increment(1);
                if failed >= config.max_failed_runs {
                    return Err(e.context(format!("{failed} runs in a row failed (max_failed_runs)")));
                }
                tracing::error!(error = %error_chain(&e), failed, "the run failed; the next one tries again");
            }
        }
        let next = started + every;
        if stopper.signal().is_none() {
            let wait = next.saturating_duration_since(tokio::time::Instant::now());
            tracing::info!(in_secs = wait.as_secs_f64().ceil() as u64, "next run");
        }
        if stopper.sleep_until(next).await.is_some() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One ingest (or replay), with its progress on a terminal or in the log.
async fn run_once(
    args: &IngestArgs,
    config: &poslake::config::IngestConfig,
    setup: &poslake::ingest::IngestSetup,
    replay: Option<&poslake::ingest::replay::ReplayFilter>,
    stopper: &Stopper,
) -> anyhow::Result<poslake::ingest::IngestSummary> {
    use std::io::IsTerminal;
    use std::sync::Arc;

    let progress = Arc::new(poslake_actors::Progress::default());
    stopper.watch(&progress);
    // A bar on a terminal; otherwise (a service, a pipe, --json) a log line every half minute.
    let bar = (!args.json && std::io::stderr().is_terminal()).then(progress_bar);
    let display = match &bar {
        Some(bar) => tokio::spawn(show_progress(bar.clone(), progress.clone())),
        None => tokio::spawn(log_progress(progress.clone())),
    };
    let result = match replay {
        Some(filter) => poslake::ingest::replay(setup, filter, config.pipeline(), progress).await,
        None => poslake::ingest::ingest(setup, config.pipeline(), progress).await,
    };
    display.abort();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}

/// The run's summary: a line of text, or JSON (one line a run for a service, so that its output is JSON Lines).
fn print_summary(
    summary: &poslake::ingest::IngestSummary,
    json: bool,
    service: bool,
    stopper: &Stopper,
) -> anyhow::Result<()> {
    let stopped = match stopper.signal() {
        Some(signal) if summary.interrupted => format!("; stopped by {}: ", signal.name()),
        _ => String::new(),
    };
    if json {
        match service {
            true => say!("{}", serde_json::to_string(summary)?),
            false => say!("{}", serde_json::to_string_pretty(summary)?),
        }
    } else if let Some(selected) = summary.replayed {
        say!(
            "replayed {} of {selected} dead-lettered files ({:.1} MB) in {:.2}s: {} landed, {} dead letters again; \
             {} transactions, {} new, {} duplicates ({} quarantined){}",
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.seconds,
            summary.files - summary.dead_letters,
            summary.dead_letters,
            summary.transactions,
            summary.new_transactions,
            summary.duplicate_transactions,
            summary.quarantined_transactions,
            if stopped.is_empty() { String::new() } else { stopped + "the rest are left for the next replay" }
        );
    } else {
        let shared = match summary.route_slots {
            Some(slots) => format!(
                "; {} files left to other workers (this one held {slots} of {} route slots)",
                summary.other_workers_files,
                poslake::ingest::slot_leases::SLOTS
            ),
            None if summary.other_workers_files > 0 => {
                format!("; {} files left to other workers", summary.other_workers_files)
            }
            None => String::new(),
        };
        say!(
            "took {} files ({:.1} MB) in {:.2}s: {:.0} files/s, {:.1} MB/s; {} transactions, {} new, {} duplicates \
             ({} quarantined); {} dead letters{}; {} files already ingested{shared}; {} retries, {} actor restarts{}",
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.seconds,
            summary.files_per_second(),
            summary.megabytes_per_second(),
            summary.transactions,
            summary.new_transactions,
            summary.duplicate_transactions,
            summary.quarantined_transactions,
            summary.dead_letters,
            match summary.deferred {
                0 => String::new(),
                n => format!(
                    " ({n} deferred: their reads or archive writes kept failing, and the next run takes them again)"
                ),
            },
            summary.already_ingested,
            summary.retries,
            summary.actor_restarts,
            if stopped.is_empty() { String::new() } else { stopped + "files not yet taken are left for the next run" }
        );
    }
    Ok(())
}

/// `poslake replay --dry-run`: what a replay would take.
async fn dry_run(args: IngestArgs, filter: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.every.is_none(), "--every is for `poslake ingest`: a replay runs once");
    let config = args.config()?;
    existing_lake(&config.lake, config.catalog.as_deref())?;
    let files = poslake::ingest::dead_letters(&config.lake, config.catalog.as_deref(), &filter.filter()).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&files)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in &files {
        // One line a file: the reason's own line breaks (quick-xml quotes the text) are flattened.
        let reason: String = f.reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        say!("{}\t{}\t{}/{}\t{}", f.path, f.bytes, f.stage, f.kind, reason);
    }
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    say!("{} dead-lettered files ({:.1} MB) would be replayed", files.len(), bytes as f64 / 1e6);
    Ok(ExitCode::SUCCESS)
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style =
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files, {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message("starting…");
    bar
}

/// What the run has done so far, in words: rates, duplicates, dead letters, and the time left once the listing is
/// complete (until then the total is not known).
fn progress_message(s: &poslake_actors::Snapshot, secs: f64) -> String {
    let files_per_sec = s.done as f64 / secs;
    let left = if !s.discovery_done {
        "listing…".to_owned()
    } else if files_per_sec > 0.0 {
        let eta = s.discovered.saturating_sub(s.done) as f64 / files_per_sec;
        format!("ETA {}", indicatif::HumanDuration(std::time::Duration::from_secs_f64(eta)))
    } else {
        "ETA unknown".to_owned()
    };
    format!(
        "{files_per_sec:.0} files/s, {:.1} MB/s, {} duplicates ({} quarantined), {} dead letters, {left}",
        s.totals.bytes as f64 / 1e6 / secs,
        s.totals.duplicates,
        s.totals.quarantined,
        s.totals.dead_letters,
    )
}

/// Refreshes the bar five times a second: files done of files found, then [`progress_message`].
async fn show_progress(bar: indicatif::ProgressBar, progress: std::sync::Arc<poslake_actors::Progress>) {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let s = progress.snapshot();
        bar.set_length(s.discovered);
        bar.set_position(s.done);
        bar.set_message(progress_message(&s, started.elapsed().as_secs_f64().max(1e-9)));
        bar.tick();
    }
}

/// Off a terminal: one log line every 30 s with the same figures, for a long run's log.
async fn log_progress(progress: std::sync::Arc<poslake_actors::Progress>) {
    let started = std::time::Instant::now();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    every.tick().await;
    loop {
        every.tick().await;
        let s = progress.snapshot();
        tracing::info!(
            files_done = s.done,
            files_found = s.discovered,
            listing_done = s.discovery_done,
            "progress: {} of {} files, {}",
            s.done,
            s.discovered,
            progress_message(&s, started.elapsed().as_secs_f64().max(1e-9))
        );
    }
}

/// Commands that read a lake refuse a path that holds none, rather than create an empty one and report nothing
/// (a mistyped `--lake` would otherwise look like an empty lake).
fn existing_lake(lake: &std::path::Path, catalog: Option<&str>) -> anyhow::Result<()> {
    // With a catalog of its own, the lake's warehouse folder is what an ingest leaves.
    let mark = if catalog.is_some() { "warehouse" } else { "catalog.db" };
    anyhow::ensure!(
        lake.join(mark).exists(),
        "no lake at {}: nothing has been ingested there (run `poslake ingest`, or give the lake with --lake or \
         POSLAKE_LAKE)",
        lake.display()
    );
    Ok(())
}

async fn tables(args: LakeArgs) -> anyhow::Result<ExitCode> {
    existing_lake(&args.lake, args.catalog.as_deref().filter(|u| !u.is_empty()))?;
    let wh = poslake::lake::Warehouse::open_with(&args.lake, args.catalog.as_deref().filter(|u| !u.is_empty())).await?;
    say!("{:<20} {:>20} {:>10} {:>10} {:>12}", "table", "snapshot", "snapshots", "manifests", "rows");
    for def in poslake::lake::tables::TABLES {
        let table = wh.load(def.name).await?;
        let meta = table.metadata();
        let snapshot = meta.current_snapshot().map_or("-".to_owned(), |s| s.snapshot_id().to_string());
        let manifests = match meta.current_snapshot() {
            Some(s) => table.manifest_list_reader(s).load().await?.entries().len(),
            None => 0,
        };
        let rows = wh.row_count(def.name).await?;
        say!("{:<20} {:>20} {:>10} {:>10} {:>12}", def.name, snapshot, meta.snapshots().count(), manifests, rows);
    }
    Ok(ExitCode::SUCCESS)
}

async fn maintain(
    store: StoreArgs,
    keep: Option<usize>,
    orphan_hours: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let c = store.config()?;
    // 0 keeps every snapshot, as `keep_snapshots = 0` does for an ingest; manifests are still merged.
    let keep = keep.unwrap_or(c.keep_snapshots);
    existing_lake(&c.lake, c.catalog.as_deref())?;
    let started = std::time::Instant::now();
    let report =
        poslake::ingest::maintain(&c.lake, c.catalog.as_deref(), &c.dedup, keep, c.min_manifests_to_merge).await?;
    let orphans = match orphan_hours {
        Some(hours) => {
            let older_than = std::time::SystemTime::now()
                .checked_sub(std::time::Duration::from_secs(hours.saturating_mul(3600)))
                .unwrap_or(std::time::UNIX_EPOCH);
            poslake::ingest::remove_orphans(&c.lake, c.catalog.as_deref(), &c.dedup, older_than).await?
        }
        None => Vec::new(),
    };
    if json {
        let out = serde_json::json!({ "maintenance": report, "orphans": orphans });
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (table, o) in &orphans {
        say!(
            "{table:<20} {:>8} orphan files removed ({:.1} MB), {} younger ones kept",
            o.removed,
            o.removed_bytes as f64 / 1e6,
            o.kept
        );
    }
    for (table, m) in &report.merged {
        say!("{table:<20} {:>8} manifests merged ({} data files)", m.manifests, m.data_files);
    }
    for (table, e) in &report.expired {
        say!("{table:<20} {:>8} snapshots expired, {:>8} files deleted", e.snapshots, e.files_deleted);
    }
    if keep == 0 {
        say!("no snapshots expired (keep 0: every snapshot is kept) in {:.1}s", started.elapsed().as_secs_f64());
    } else {
        say!(
            "expired {} snapshots in {:.1}s, keeping the newest {keep} per table and every commit not yet complete",
            report.snapshots(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn query(sql: String, args: LakeArgs) -> anyhow::Result<ExitCode> {
    existing_lake(&args.lake, args.catalog.as_deref().filter(|u| !u.is_empty()))?;
    let wh = poslake::lake::Warehouse::open_with(&args.lake, args.catalog.as_deref().filter(|u| !u.is_empty())).await?;
    let (schema, batches) = poslake::lake::query::sql_with_schema(&wh, &sql).await?;
    // With the schema, an empty result still shows its column names.
    say!("{}", datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?);
    Ok(ExitCode::SUCCESS)
}

async fn dedup(command: DedupCommand) -> anyhow::Result<ExitCode> {
    use poslake::dedup::DedupStore;
    match command {
        DedupCommand::Plan { expected_keys, fp, max_shard_mib } => {
            anyhow::ensure!(fp > 0.0 && fp < 0.5, "--fp must be between 0 and 0.5");
            anyhow::ensure!(expected_keys > 0, "--expected-keys must be at least 1");
            anyhow::ensure!(max_shard_mib > 0, "--max-shard-mib must be at least 1");
            let p = poslake::dedup::Plan::new(expected_keys, fp, max_shard_mib << 20);
            say!("keys per period        {}", p.expected_keys);
            say!("target false positives {}", p.fp_target);
            say!(
                "bits per key           {:.2} (textbook Bloom formula {:.2}; +{:.1}% for 512-bit blocks)",
                p.bits_per_key,
                p.formula_bits_per_key(),
                (p.bits_per_key / p.formula_bits_per_key() - 1.0) * 100.0
            );
            say!("hash functions         {}", p.hashes);
            say!(
                "memory                 {:.1} MiB ({} bytes)",
                p.total_bytes() as f64 / (1 << 20) as f64,
                p.total_bytes()
            );
            say!("shards                 {} of {:.1} MiB", p.shards, p.shard_bytes() as f64 / (1 << 20) as f64);
            say!("false positives at capacity {:.5} (model)", p.fp_at_capacity);
            say!("false positives at 2x capacity {:.5} (model)", p.fp_at(2.0 * p.expected_keys as f64));
            Ok(ExitCode::SUCCESS)
        }
        DedupCommand::Stats { store, json } => dedup_stats(store, json).await,
        DedupCommand::Rebuild { store } => {
            let c = store.config()?;
            existing_lake(&c.lake, c.catalog.as_deref())?;
            let wh = std::sync::Arc::new(poslake::lake::Warehouse::open_with(&c.lake, c.catalog.as_deref()).await?);
            let d = std::sync::Arc::new(poslake::dedup::Dedup::open(&c.dedup, wh.root()).await?);
            let started = std::time::Instant::now();
            let added = poslake::ingest::commit::Committer::new(wh, d.clone()).rebuild().await?;
            say!("rebuilt {}: {added} keys from sales_header in {:.1}s", d.describe(), started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        DedupCommand::Bench { store, keys, keys_per_call, callers, json } => {
            let c = store.config()?;
            let r = poslake::dedup::bench::run(&c.dedup, keys, keys_per_call, callers).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            say!("{}", r.backend);
            say!(
                "{} keys checked and added in {:.2}s: {:.0} keys/s ({} keys per call, {} calls in flight)",
                r.keys,
                r.seconds,
                r.keys_per_second,
                r.keys_per_call,
                r.callers
            );
            match r.redis_cpu {
                Some(cpu) => say!(
                    "Redis server CPU: {:.0}% of one core; {:.2} µs/key checking, {:.2} µs/key adding",
                    cpu * 100.0,
                    r.redis_usec_per_key_check,
                    r.redis_usec_per_key_add
                ),
                None => say!("Redis server CPU: not reported"),
            }
            say!(
                "memory: {:.1} MiB, {:.3} bytes/key (Bloom formula {:.3} bytes/key at {}: {:+.1}%)",
                r.memory_bytes as f64 / (1 << 20) as f64,
                r.bytes_per_key,
                r.formula_bytes_per_key,
                r.fp_target,
                (r.bytes_per_key / r.formula_bytes_per_key - 1.0) * 100.0
            );
            say!(
                "false positives: {:.5} measured on {} fresh keys (target {})",
                r.fp_measured,
                r.fp_probes,
                r.fp_target
            );
            let f = &r.file_index;
            say!(
                "file index: {} files added at {:.0}/s, looked up at {:.0}/s (512 per round trip); {}",
                f.files,
                f.adds_per_second,
                f.lookups_per_second,
                f.bytes_per_file.map_or("memory not reported".to_owned(), |b| format!("{b:.1} bytes/file in Redis"))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn reconcile(store: StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let c = store.config()?;
    existing_lake(&c.lake, c.catalog.as_deref())?;
    let report = poslake::ingest::reconcile::reconcile(&c.lake, c.catalog.as_deref(), &c.dedup).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        say!(
            "quarantine: {} rows; {} keys confirmed as duplicates; {} false positives promoted{}",
            report.quarantined,
            report.confirmed_duplicates,
            report.promoted,
            report.commit.as_deref().map(|c| format!(" (commit {c})")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `poslake dedup stats`: the store's partitions, the file index, and the workers sharing staging (with Redis).
async fn dedup_stats(store: StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    use poslake::dedup::DedupStore;
    let c = store.config()?;
    existing_lake(&c.lake, c.catalog.as_deref())?;
    let wh = poslake::lake::Warehouse::open_with(&c.lake, c.catalog.as_deref()).await?;
    let d = std::sync::Arc::new(poslake::dedup::Dedup::open(&c.dedup, wh.root()).await?);
    let partitions = d.stats().await?;
    let file_index = poslake::dedup::FileIndex::open(d.clone(), c.dedup.expected_files).await?.stats().await?;
    let (fleet, free) = match c.dedup.backend {
        poslake::config::DedupBackend::Embedded => (Vec::new(), None),
        _ => {
            let (fleet, free) = poslake::ingest::slot_leases::fleet(&c.dedup).await?;
            (fleet, Some(free))
        }
    };
    if json {
        // The embedded store is exact: no design capacity (null, not u64::MAX).
        let mut partitions = serde_json::to_value(&partitions)?;
        for p in partitions.as_array_mut().into_iter().flatten() {
            if p["capacity"] == serde_json::json!(u64::MAX) {
                p["capacity"] = serde_json::Value::Null;
            }
        }
        let out = serde_json::json!({
            "store": d.describe(),
            "partitions": partitions,
            "file_index": file_index,
            "workers": fleet,
            "slots_leased_by_none": free,
        });
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("{}", d.describe());
    if let Some(i) = d.as_embedded().map(|e| e.internals()) {
        say!(
            "sorted tables: {} ({} in the newest level), {:.1} MiB on disk; in memory: {:.1} MiB of memtables ({} \
             waiting to be written), {:.1} MiB of cached blocks",
            i.tables,
            i.l0_tables,
            i.disk_bytes as f64 / (1 << 20) as f64,
            i.write_buffer_bytes as f64 / (1 << 20) as f64,
            i.sealed_memtables,
            i.cache_bytes as f64 / (1 << 20) as f64
        );
    }
    say!(
        "{:<12} {:>14} {:>14} {:>14} {:>8} {:>10} {:>12}",
        "partition",
        "adds",
        "est. keys",
        "capacity",
        "fill",
        "fp now",
        "memory MiB"
    );
    for s in partitions {
        // The embedded store is exact and has no design capacity.
        let capacity = if s.capacity == u64::MAX { "none".to_owned() } else { s.capacity.to_string() };
        say!(
            "{:<12} {:>14} {:>14.0} {:>14} {:>7.2}% {:>10.6} {:>12.1}{}",
            s.partition,
            s.adds,
            s.estimated_keys,
            capacity,
            s.fill * 100.0,
            s.fp_now,
            s.memory_bytes as f64 / (1 << 20) as f64,
            if s.over_capacity { "  OVER CAPACITY" } else { "" }
        );
    }
    if let Some(f) = file_index {
        say!(
            "file index: about {} files in {} buckets, design capacity {}{}; holds the ledger to snapshot {}",
            f.files,
            f.buckets,
            f.capacity,
            if f.files > f.capacity { " (OVER CAPACITY: buckets leave the compact encoding)" } else { "" },
            f.synced_to.map_or("(none: the next ingest reads the whole ledger)".to_owned(), |s| s.to_string())
        );
    }
    if !fleet.is_empty() {
        let live = fleet.iter().filter(|m| m.live).count();
        say!(
            "workers sharing staging (workers = auto): {live} live; {} slots leased by none now",
            free.unwrap_or_default()
        );
        for m in fleet {
            let state = match m.for_secs {
                Some(secs) => format!("live for {}", humantime::format_duration(std::time::Duration::from_secs(secs))),
                None => "stopped (its leases expire)".to_owned(),
            };
            say!("  {:<40} {state}; {} slots leased; {}", m.id, m.slots, m.routing);
        }
    }
    Ok(ExitCode::SUCCESS)
}
