//! The `poslake` command line: the binary edge, where errors become messages and exit codes.

use std::process::ExitCode;

use anyhow::Context;

/// Stdout was closed by its reader (`poslake tables | head -1`): the command ends quietly, as Unix tools do.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
struct StdoutClosed;

/// `println!` that returns an error instead of panicking when stdout fails.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new($crate::StdoutClosed),
            _ => anyhow::Error::new(e).context("writing to stdout"),
        })?
    }};
}

mod cli;
use cli::args::{Cli, Command};

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
    let mut command = <Cli as clap::CommandFactory>::command();
    let parsed = command.try_get_matches_from_mut(std::env::args_os()).and_then(|matches| {
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
        Ok((cli, from_environment(&command, &matches)))
    });
    let (cli, from_env) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // A usage error under JSON logs (asked on the command line or by POSLAKE_LOG_FORMAT, which clap could not
            // read back) is one JSON line too: a container's collector reads every line. Help and version are not
            // errors.
            if e.use_stderr() && json_logs_asked() {
                let mut text = e.render().to_string();
                if let Some(name) = variable_behind(&<Cli as clap::CommandFactory>::command(), &e) {
                    text.push_str(&format!(" (the value comes from the environment variable {name})"));
                }
                let text: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                poslake::telemetry::log_line_by_hand("ERROR", &text.join(" "));
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            }
            // clap takes an empty variable for its flag given without a value, and names only the flag; a bad value
            // from a variable is reported under the flag's name too.
            use clap::error::ErrorKind::{InvalidValue, ValueValidation};
            if matches!(e.kind(), InvalidValue | ValueValidation) {
                let command = <Cli as clap::CommandFactory>::command();
                let note = if let Some(name) = empty_variable(&command) {
                    Some(format!("the environment variable {name} is set but empty: give it a value, or unset it"))
                } else {
                    // clap names the flag, which the command line does not hold: the value came from its variable.
                    variable_behind(&command, &e).map(|name| {
                        format!("the value comes from the environment variable {name}, not the command line")
                    })
                };
                if let Some(note) = note {
                    let _ = e.print();
                    eprintln!("note: {note}");
                    return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
                }
            }
            e.exit()
        }
    };
    let json = cli.command.json();
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
            poslake::telemetry::notice(poslake::telemetry::Notice::Error, &error_chain(&err));
            // A reader of the JSON gets an answer too, not an empty stdout.
            if json {
                let _ = print_json_error(&err, None);
            }
            // A value refused after parsing (a URL, a worker index) shows no flag: say which settings the
            // environment gave, so that one set long ago in a service's environment is not hunted on the command line.
            if !from_env.is_empty() {
                let note = format!("settings from the environment: {}", from_env.join(", "));
                poslake::telemetry::notice(poslake::telemetry::Notice::Note, &note);
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether JSON logs were asked for, read from the command line and the environment as they are (for an error clap
/// raised before it could read them).
fn json_logs_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.windows(2).any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json");
    flag || (std::env::var("POSLAKE_LOG_FORMAT").is_ok_and(|v| v == "json")
        && !args.iter().any(|a| a.starts_with("--log-format")))
}

/// The environment variables that gave this command line its values (flags not given, whose variable is set).
fn from_environment(command: &clap::Command, matches: &clap::ArgMatches) -> Vec<String> {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::EnvVariable))
        .filter_map(|a| a.get_env().map(|env| env.to_string_lossy().into_owned()))
        .collect();
    if let Some((name, sub)) = matches.subcommand()
        && let Some(sub_command) = command.find_subcommand(name)
    {
        names.extend(from_environment(sub_command, sub));
    }
    names.sort();
    names.dedup();
    names
}

/// The first flag variable that is set but empty (clap takes it for the flag given without a value).
fn empty_variable(command: &clap::Command) -> Option<String> {
    flag_variables(command)
        .into_iter()
        .map(|(_, name)| name)
        .find(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()))
}

/// The environment variable that gave the value a usage error refuses: the refused flag's, when it is set and the
/// command line does not give the flag itself.
fn variable_behind(command: &clap::Command, error: &clap::Error) -> Option<String> {
    let Some(clap::error::ContextValue::String(flag)) = error.get(clap::error::ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.split_whitespace().next()?.strip_prefix("--")?;
    let on_line = std::env::args().skip(1).any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if on_line {
        return None;
    }
    let (_, name) = flag_variables(command).into_iter().find(|(l, _)| l.as_deref() == Some(long))?;
    std::env::var_os(&name).is_some().then_some(name)
}

/// Every flag that has an environment variable, in `command` and its subcommands: its long name and the variable.
fn flag_variables(command: &clap::Command) -> Vec<(Option<String>, String)> {
    let own = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|env| (a.get_long().map(str::to_owned), env.to_string_lossy().into_owned())));
    own.chain(command.get_subcommands().flat_map(flag_variables)).collect()
}

/// With `--json`, a failure on stdout as one JSON line: `{"error": "…"}`, and the signal that stopped the run if one
/// did. A service's failed runs print one such line each, so that its output stays one line a run.
fn print_json_error(err: &anyhow::Error, stopped_by: Option<&str>) -> anyhow::Result<()> {
    let mut line = serde_json::json!({ "error": poslake::error_text::chain(err.as_ref()) });
    if let Some(signal) = stopped_by {
        line["stopped_by"] = signal.into();
    }
    say!("{line}");
    Ok(())
}

/// The error and its causes on one line ([`poslake::error_text::chain`]), safe to print.
fn error_chain(err: &anyhow::Error) -> String {
    printable(&poslake::error_text::chain(err.as_ref()))
}

/// The text with control characters escaped (`\u{1b}`), line breaks kept: an error may quote a file name or a URL
/// from outside, and a terminal must not run escape sequences (or print a NUL) from one. Bidirectional overrides and
/// isolates are escaped too: one in a quoted name would show the rest of the line reversed.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if (c.is_control() && c != '\n') || bidi { c.escape_unicode().to_string() } else { c.to_string() }
        })
        .collect()
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Parse { files, dialect, summary } => cli::parse::parse(&files, dialect, summary),
        Command::Ingest(args) => cli::ingest::ingest(args, None).await,
        Command::Replay { ingest: args, filter } if filter.dry_run => cli::ingest::dry_run(args, filter).await,
        Command::Replay { ingest: args, filter } => cli::ingest::ingest(args, Some(filter.filter())).await,
        Command::Tables { lake } => cli::lake::tables(lake).await,
        Command::Query { sql, lake } => cli::lake::query(sql, lake).await,
        Command::Verify { lake, from, to, examples, json } => {
            let range = cli::lake::DateRange { from, to };
            cli::stop::until_signal(cli::lake::verify(lake, range, examples, json), cli::stop::NOTHING_CHANGED, json)
                .await
        }
        // Sizing a filter waits on nothing.
        Command::Dedup { command: command @ cli::args::DedupCommand::Plan { .. } } => cli::dedup::dedup(command).await,
        Command::Dedup { command } => {
            use cli::args::DedupCommand;
            let json = command.json();
            let aftermath = match &command {
                DedupCommand::Rebuild { .. } => cli::stop::UNFINISHED,
                DedupCommand::Bench { .. } => "the bench did not finish; the keys it wrote are deleted",
                DedupCommand::Stats { .. } | DedupCommand::Plan { .. } => cli::stop::NOTHING_CHANGED,
            };
            cli::stop::until_signal(cli::dedup::dedup(command), aftermath, json).await
        }
        Command::Reconcile { store, json } => {
            cli::stop::until_signal(cli::lake::reconcile(store, json), cli::stop::UNFINISHED, json).await
        }
        Command::Maintain { store, keep, remove_orphans_older_than_hours, no_ingest_running, json } => {
            let sweep = remove_orphans_older_than_hours.map(|hours| cli::lake::Sweep { hours, no_ingest_running });
            cli::stop::until_signal(cli::lake::maintain(store, keep, sweep, json), cli::stop::UNFINISHED, json).await
        }
        Command::Generate(args) => {
            let report = poslake::generate::generate(&args)?;
            say!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
