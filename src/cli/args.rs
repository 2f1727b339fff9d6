//! The command line's arguments: commands, their flags, and how flags go over the configuration file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use poslake::Dialect;

#[derive(Parser)]
#[command(name = "poslake", version, about = "Lands POS transaction-log XML in an Iceberg lakehouse")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten, next_help_heading = "Logs, traces and metrics")]
    pub telemetry: TelemetryArgs,
}

/// Logs, traces and metrics (see docs/observability.md).
#[derive(clap::Args)]
pub struct TelemetryArgs {
    /// Log lines on stderr as text or JSON.
    #[arg(long, global = true, env = "POSLAKE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: poslake::telemetry::LogFormat,
    /// Export traces over OTLP to this endpoint (e.g. http://localhost:4317 for Jaeger). Also read from
    /// OTEL_EXPORTER_OTLP_ENDPOINT; tracing is off when neither is set.
    #[arg(long, global = true)]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport. [default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc]
    #[arg(long, global = true, value_enum)]
    pub otlp_protocol: Option<poslake::telemetry::OtlpProtocol>,
    /// Fraction of batches traced (0..=1). [default: OTEL_TRACES_SAMPLER_ARG, else 1]
    #[arg(long, global = true)]
    pub trace_sample_ratio: Option<f64>,
    /// Serve Prometheus metrics at this address (e.g. 0.0.0.0:9464).
    #[arg(long, global = true, env = "POSLAKE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// the bronze archive when staging no longer holds it; one that lands is not taken again. Takes the ingest's
    /// flags but --every (a replay runs once); --workers, --worker-index and --route-by are not used: one replay
    /// takes every dead letter it selects.
    #[command(mut_arg("every", |a| a.hide(true)), mut_arg("workers", |a| a.hide(true)))]
    #[command(mut_arg("worker_index", |a| a.hide(true)), mut_arg("route_by", |a| a.hide(true)))]
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
        /// Confirms that no ingest runs on the lake now, which a sweep of orphans younger than an hour needs: it
        /// would delete the files a running ingest has written and not yet committed.
        #[arg(long, requires = "remove_orphans_older_than_hours")]
        no_ingest_running: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that the lake is exact: each sale once in sales_header and bronze, each header with as many lines and
    /// discounts as it counts, each file ingested once; and count the quarantined keys reconcile has yet to settle.
    /// Exits with 3 when a rule is broken, 4 when commits landing kept the checks across tables from running (1
    /// when the check itself fails).
    Verify {
        #[command(flatten)]
        lake: LakeArgs,
        /// Only business dates from this day on (YYYY-MM-DD; the file ledger is checked whole).
        #[arg(long, value_name = "DATE")]
        from: Option<chrono::NaiveDate>,
        /// Only business dates up to this day, included.
        #[arg(long, value_name = "DATE")]
        to: Option<chrono::NaiveDate>,
        /// Examples shown of each broken rule.
        #[arg(long, default_value_t = 5, value_name = "N")]
        examples: usize,
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

impl Command {
    /// Whether the command was asked for JSON on stdout (`--json`): a failure is then reported there too.
    pub fn json(&self) -> bool {
        match self {
            Command::Ingest(args) | Command::Replay { ingest: args, .. } => args.json,
            Command::Maintain { json, .. } | Command::Reconcile { json, .. } | Command::Verify { json, .. } => *json,
            Command::Dedup { command } => command.json(),
            Command::Parse { .. } | Command::Tables { .. } | Command::Query { .. } => false,
            Command::Generate(_) => false,
        }
    }
}

#[derive(Subcommand)]
pub enum DedupCommand {
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
    /// keys/s, the server's CPU, memory per key, measured false positives. It needs a Redis server: the one
    /// --redis-url names (default redis://127.0.0.1:6379), even when the configured store is embedded; without one it
    /// gives up after 10 s.
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
        /// Business-date periods (of `[dedup] period`) the keys spread over, each a filter sized for its share: on a
        /// Redis Cluster with no hash tag in the key prefix, spread over the primaries.
        #[arg(long, default_value_t = 1)]
        periods: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl DedupCommand {
    /// Whether the subcommand was asked for JSON on stdout (`--json`).
    pub fn json(&self) -> bool {
        match self {
            DedupCommand::Stats { json, .. } | DedupCommand::Bench { json, .. } => *json,
            DedupCommand::Plan { .. } | DedupCommand::Rebuild { .. } => false,
        }
    }
}

/// Which dead letters `poslake replay` takes (all by default).
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Only files refused at this stage: download, parse or archive (repeatable).
    #[arg(long = "stage", value_name = "STAGE")]
    pub stages: Vec<String>,
    /// Only files refused for this reason, as `dead_letters.kind` has it: malformed, truncated, schema, too_large,
    /// unknown_dialect, ... (repeatable).
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only files whose staging path starts with this.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// List the files a replay would take (path, size, stage, kind, reason) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl ReplayArgs {
    pub fn filter(&self) -> poslake::ingest::replay::ReplayFilter {
        poslake::ingest::replay::ReplayFilter {
            stages: self.stages.clone(),
            kinds: self.kinds.clone(),
            path_prefix: self.path_prefix.clone(),
        }
    }
}

/// The lake and the dedup store, for commands that need both (flags override the configuration file).
#[derive(clap::Args)]
pub struct StoreArgs {
    /// A TOML configuration file (see deploy/poslake.toml).
    #[arg(long, env = "POSLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The lake root. [default: poslake-data/lake]
    #[arg(long, env = "POSLAKE_LAKE")]
    pub lake: Option<PathBuf>,
    /// The dedup store. [default: embedded]
    #[arg(long, env = "POSLAKE_DEDUP", value_enum)]
    pub dedup: Option<poslake::config::DedupBackend>,
    /// Redis URL for the Redis stores (rediss:// for TLS). [default: redis://127.0.0.1:6379]
    #[arg(long, env = "POSLAKE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The Iceberg catalog's PostgreSQL database (postgres://USER[:PASSWORD]@HOST:PORT/DATABASE), shared by workers on
    /// several hosts. [default: SQLite in the lake]
    #[arg(long, env = "POSLAKE_CATALOG", value_name = "URL")]
    pub catalog: Option<String>,
}

impl StoreArgs {
    pub fn config(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        let c = self.unvalidated()?;
        c.validate()?;
        Ok(c)
    }

    /// The file (or the defaults) with these flags over it; the caller applies its own flags, then validates.
    pub fn unvalidated(&self) -> anyhow::Result<poslake::config::IngestConfig> {
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
pub struct LakeArgs {
    /// The lake root: Iceberg catalog (SQLite), warehouse files, bronze archive and dedup store.
    #[arg(long, env = "POSLAKE_LAKE", default_value = "poslake-data/lake")]
    pub lake: PathBuf,
    /// The Iceberg catalog's PostgreSQL database, if the lake has one. [default: SQLite in the lake]
    #[arg(long, env = "POSLAKE_CATALOG", value_name = "URL")]
    pub catalog: Option<String>,
}

impl LakeArgs {
    /// The catalog's URL, if one is given (an empty value means SQLite in the lake, as for the other commands).
    pub fn catalog(&self) -> Option<&str> {
        self.catalog.as_deref().filter(|u| !u.is_empty())
    }
}

/// Flags override the configuration file, which overrides the defaults (see `deploy/poslake.toml`).
#[derive(clap::Args)]
pub struct IngestArgs {
    /// The configuration file, the lake and the dedup store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where files arrive: a local folder, or Azure Blob Storage / ADLS Gen2 as az://CONTAINER/PREFIX,
    /// abfss://FILESYSTEM@ACCOUNT.dfs.core.windows.net/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX
    /// (credentials from AZURE_* variables). [default: poslake-data/staging]
    #[arg(long, env = "POSLAKE_STAGING")]
    pub staging: Option<PathBuf>,
    /// Where raw files are archived (bronze/raw/... below it): a local folder, or an Azure URL as for --staging.
    /// [default: in the lake]
    #[arg(long, env = "POSLAKE_ARCHIVE", value_name = "DIR|URL")]
    pub archive: Option<PathBuf>,
    /// Print the run summary as JSON on stdout, and no progress bar (the `progress` log line still goes to stderr
    /// every 30 s).
    #[arg(long)]
    pub json: bool,
    /// Parser actors (CPU bound). [default: one per core]
    #[arg(long)]
    pub parsers: Option<usize>,
    /// Downloader actors (I/O bound): GETs in flight at once. [default: 16 for a folder, 64 for Azure]
    #[arg(long)]
    pub downloaders: Option<usize>,
    /// Files per write batch. [default: 16]
    #[arg(long)]
    pub batch_files: Option<usize>,
    /// Files in flight at most (bounds memory). [default: 32; 128 with Azure staging, 64 with an Azure archive]
    #[arg(long)]
    pub max_files_in_flight: Option<u32>,
    /// Raw MiB in flight at most (bounds memory; parsed files take several times their raw size). [default: 32]
    #[arg(long)]
    pub max_mib_in_flight: Option<u64>,
    /// Files per Iceberg commit (also committed every commit_interval_secs and at the end). [default: 2000]
    #[arg(long)]
    pub commit_files: Option<u64>,
    /// Run as a service: ingest again every DURATION (e.g. 10m, 90s) until SIGTERM or Ctrl-C, which drain the run
    /// in progress. [default: every_secs of the configuration; 0, run once]
    #[arg(long, value_name = "DURATION", value_parser = parse_every)]
    pub every: Option<std::time::Duration>,
    /// Workers sharing this staging area and lake (with a Redis dedup store); each takes the files routed to it. A
    /// count (each worker given --worker-index), or `auto`: the live workers share the files out through leases in
    /// Redis. [default: 1]
    #[arg(long, env = "POSLAKE_WORKERS", value_name = "N|auto")]
    pub workers: Option<poslake::config::Workers>,
    /// This worker's index, 0 to workers - 1. [default: 0]
    #[arg(long, env = "POSLAKE_WORKER_INDEX")]
    pub worker_index: Option<u32>,
    /// Route files to workers by this regular expression's first capture group in the staging path, e.g.
    /// 'site=([^/]+)'. [default: by the file's folder]
    #[arg(long, value_name = "REGEX")]
    pub route_by: Option<String>,
}

impl IngestArgs {
    /// The configuration file (or the defaults) with the flags given applied over it, validated.
    pub fn config(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        self.build(false)
    }

    /// [`Self::config`] for `poslake replay`: the workers' settings (from flags, variables or the file) are set
    /// aside, since one replay takes every dead letter it selects; a worker's environment does not stop it.
    pub fn replay_config(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        self.build(true)
    }

    fn build(&self, replay: bool) -> anyhow::Result<poslake::config::IngestConfig> {
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
            // 0 runs once: it turns off a service interval (`every_secs`) that the configuration file sets.
            c.every_secs = every.as_secs();
        }
        if self.store.redis_url.is_some() && c.dedup.backend == poslake::config::DedupBackend::Embedded {
            tracing::warn!(
                "--redis-url (or POSLAKE_REDIS_URL) is not used: the dedup store is embedded; choose a Redis store \
                 with --dedup (or POSLAKE_DEDUP, or [dedup] backend)"
            );
        }
        if replay {
            // Only settings that would change what a worker takes: `--workers 1` (or its variable) changes nothing.
            let default = poslake::config::IngestConfig::default();
            let splits = self.workers.as_ref().is_some_and(|w| *w != default.workers)
                || self.worker_index.is_some_and(|i| i != default.worker_index)
                || self.route_by.is_some();
            if splits {
                poslake::telemetry::notice(
                    poslake::telemetry::Notice::Note,
                    "--workers, --worker-index and --route-by (or their variables) are not used by replay: one replay \
                     takes every dead letter it selects",
                );
            }
            let one = poslake::config::IngestConfig::default();
            (c.workers, c.worker_index, c.route_by) = (one.workers, one.worker_index, one.route_by);
        }
        c.validate()?;
        Ok(c)
    }
}

/// `--every`: a duration of whole seconds (`90s`, `10m`, `1h`), or 0 to run once. Refused as a usage error (exit 2)
/// whatever is wrong with it; humantime's own hint suggests milliseconds, which are not taken.
fn parse_every(text: &str) -> Result<std::time::Duration, String> {
    const TAKES: &str = "--every takes whole seconds (for example 90s, 10m or 1h), or 0 to run once";
    let every = humantime::parse_duration(text).map_err(|_| format!("not a duration: {TAKES}"))?;
    if every.subsec_nanos() != 0 {
        return Err(format!("{} is not whole seconds: {TAKES}", humantime::format_duration(every)));
    }
    if every.as_secs() > poslake::config::MAX_EVERY_SECS {
        return Err(format!(
            "{} is over a week: run the ingest from a scheduler instead",
            humantime::format_duration(every)
        ));
    }
    Ok(every)
}
