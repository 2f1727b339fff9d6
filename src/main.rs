//! The `poslake` command line: the binary edge, where errors become messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use poslake::{Dialect, ParseOptions, parse_file};

#[derive(Parser)]
#[command(name = "poslake", version, about = "Lands POS transaction-log XML in an Iceberg lakehouse")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

#[derive(clap::Args)]
struct LakeArgs {
    /// The lake root: Iceberg catalog (SQLite), warehouse files, bronze archive and dedup store.
    #[arg(long, env = "POSLAKE_LAKE", default_value = "poslake-data/lake")]
    lake: PathBuf,
}

/// Flags override the configuration file, which overrides the defaults (see `deploy/poslake.toml`).
#[derive(clap::Args)]
struct IngestArgs {
    /// A TOML configuration file (every key and its default: deploy/poslake.toml).
    #[arg(long, env = "POSLAKE_CONFIG")]
    config: Option<PathBuf>,
    /// The staging folder files arrive in. [default: poslake-data/staging]
    #[arg(long, env = "POSLAKE_STAGING")]
    staging: Option<PathBuf>,
    /// The lake root. [default: poslake-data/lake]
    #[arg(long, env = "POSLAKE_LAKE")]
    lake: Option<PathBuf>,
    /// Print the run summary as JSON (and no progress line).
    #[arg(long)]
    json: bool,
    /// Parser actors (CPU bound). [default: one per core]
    #[arg(long)]
    parsers: Option<usize>,
    /// Downloader actors (I/O bound). [default: 16]
    #[arg(long)]
    downloaders: Option<usize>,
    /// Files per write batch. [default: 64]
    #[arg(long)]
    batch_files: Option<usize>,
    /// Files in flight at most (bounds memory). [default: 128]
    #[arg(long)]
    max_files_in_flight: Option<u32>,
    /// Raw MiB in flight at most (bounds memory; parsed files take several times their raw size). [default: 32]
    #[arg(long)]
    max_mib_in_flight: Option<u64>,
    /// Files per Iceberg commit (also committed every commit_interval_secs and at the end). [default: 2000]
    #[arg(long)]
    commit_files: Option<u64>,
}

impl IngestArgs {
    /// The configuration file (or the defaults) with the flags given applied over it, validated.
    fn config(&self) -> anyhow::Result<poslake::config::IngestConfig> {
        let mut c = match &self.config {
            Some(path) => poslake::config::IngestConfig::load(path)?,
            None => poslake::config::IngestConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        over!(staging, lake, downloaders, batch_files, max_files_in_flight, max_mib_in_flight, commit_files);
        if self.parsers.is_some() {
            c.parsers = self.parsers;
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parse { files, dialect, summary } => {
            let opts = ParseOptions { dialect, ..ParseOptions::default() };
            let files = expand(&files)?;
            let (mut failed, mut bytes_total, mut transactions) = (0usize, 0u64, 0u64);
            let started = std::time::Instant::now();
            for path in &files {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                bytes_total += bytes.len() as u64;
                let name = path.display().to_string();
                match parse_file(&name, &bytes, &opts) {
                    Ok(parsed) if summary => {
                        let f = &parsed.facts;
                        transactions += u64::from(f.transaction_count);
                        println!(
                            "{name}: {} site={} transactions={} lines={} discounts={} bytes={}",
                            f.dialect,
                            f.site.as_deref().unwrap_or("-"),
                            f.transaction_count,
                            f.line_count,
                            f.discount_count,
                            f.bytes
                        );
                    }
                    Ok(parsed) => println!("{}", serde_json::to_string_pretty(&parsed)?),
                    Err(err) => {
                        failed += 1;
                        eprintln!("{}: {err}", err.kind());
                    }
                }
            }
            if summary {
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                println!(
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
        Command::Ingest(args) => runtime()?.block_on(ingest(args)),
        Command::Tables { lake } => runtime()?.block_on(tables(lake)),
        Command::Query { sql, lake } => runtime()?.block_on(query(sql, lake)),
        Command::Generate(args) => {
            let report = poslake::generate::generate(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
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
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    use std::sync::Arc;

    use poslake_actors::Progress;

    let config = args.config()?;
    let paths = poslake::ingest::IngestPaths { staging: config.staging.clone(), lake: config.lake.clone() };
    let progress = Arc::new(Progress::default());
    let show = !args.json && std::io::stderr().is_terminal();
    let display = show.then(|| tokio::spawn(show_progress(progress.clone())));
    // Ctrl-C drains: no new files are taken in, those in flight are committed, then the run ends. A second Ctrl-C
    // exits at once; nothing uncommitted becomes visible, and the next run redoes it.
    let stopper = {
        let progress = progress.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nstopping: finishing the files in flight (Ctrl-C again to quit now)");
                progress.request_stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        })
    };
    let result =
        poslake::ingest::ingest(&paths, ParseOptions::default(), config.commit_policy(), config.pipeline(), progress)
            .await;
    stopper.abort();
    if let Some(d) = display {
        d.abort();
        eprintln!();
    }
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "ingested {} files ({:.1} MB) in {:.2}s: {:.0} files/s, {:.1} MB/s; {} transactions, {} new, {} duplicates; \
             {} dead letters; {} files already ingested; {} retries, {} actor restarts",
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.seconds,
            summary.files_per_second(),
            summary.megabytes_per_second(),
            summary.transactions,
            summary.new_transactions,
            summary.duplicate_transactions,
            summary.dead_letters,
            summary.already_ingested,
            summary.retries,
            summary.actor_restarts
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One status line on stderr, refreshed twice a second: files/s, MB/s, duplicates, errors, ETA.
async fn show_progress(progress: std::sync::Arc<poslake_actors::Progress>) {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let s = progress.snapshot();
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let rate = s.done as f64 / secs;
        let eta = if s.discovery_done && rate > 0.0 {
            format!("{:.0}s", (s.discovered - s.done) as f64 / rate)
        } else {
            "listing…".into()
        };
        eprint!(
            "\r{}/{} files, {:.0} files/s, {:.1} MB/s, {} duplicates, {} dead letters, ETA {eta}   ",
            s.done,
            s.discovered,
            rate,
            s.totals.bytes as f64 / 1e6 / secs,
            s.totals.duplicates,
            s.totals.dead_letters
        );
    }
}

async fn tables(args: LakeArgs) -> anyhow::Result<ExitCode> {
    let wh = poslake::lake::Warehouse::open(&args.lake).await?;
    println!("{:<20} {:>20} {:>10} {:>12}", "table", "snapshot", "snapshots", "rows");
    for def in poslake::lake::tables::TABLES {
        let table = wh.load(def.name).await?;
        let meta = table.metadata();
        let snapshot = meta.current_snapshot().map_or("-".to_owned(), |s| s.snapshot_id().to_string());
        let rows = wh.row_count(def.name).await?;
        println!("{:<20} {:>20} {:>10} {:>12}", def.name, snapshot, meta.snapshots().count(), rows);
    }
    Ok(ExitCode::SUCCESS)
}

async fn query(sql: String, args: LakeArgs) -> anyhow::Result<ExitCode> {
    let wh = poslake::lake::Warehouse::open(&args.lake).await?;
    let batches = poslake::lake::query::sql(&wh, &sql).await?;
    println!("{}", datafusion::arrow::util::pretty::pretty_format_batches(&batches)?);
    Ok(ExitCode::SUCCESS)
}
