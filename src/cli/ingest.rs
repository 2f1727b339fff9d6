//! `poslake ingest` and `poslake replay`: once, or as a service, with a summary at each run's end.

use std::process::ExitCode;

use anyhow::Context;
use poslake::ParseOptions;

use super::args::{IngestArgs, ReplayArgs};
use super::lake::existing_lake;
use super::progress::{log_progress, progress_bar, show_progress};
use super::stop::Stopper;
use crate::error_chain;

/// An ingest of what staging holds that is new, once or (`--every`) again and again as a service; or (`replay`) a
/// replay of the dead letters the filter selects.
pub async fn ingest(
    args: IngestArgs,
    replay: Option<poslake::ingest::replay::ReplayFilter>,
) -> anyhow::Result<ExitCode> {
    let config = if replay.is_some() { args.replay_config()? } else { args.config()? };
    if let Some(filter) = &replay {
        anyhow::ensure!(args.every.is_none(), "--every is for `poslake ingest`: a replay runs once");
        existing_lake(&config.lake, config.catalog.as_deref())?;
        warn_absent(&config, filter).await?;
    }
    let setup = poslake::ingest::IngestSetup {
        paths: poslake::ingest::IngestPaths {
            staging: config.staging.clone(),
            lake: config.lake.clone(),
            archive: config.archive.clone(),
            catalog: config.catalog.clone(),
        },
        parse: ParseOptions::default(),
        census_after: poslake::ingest::CENSUS_AFTER,
        commit_wait: std::time::Duration::from_secs(config.commit_wait_secs),
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
        max_deferred_runs: config.max_deferred_runs,
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

pub async fn ingest_as_configured(
    args: &IngestArgs,
    config: &poslake::config::IngestConfig,
    setup: &poslake::ingest::IngestSetup,
    replay: Option<poslake::ingest::replay::ReplayFilter>,
) -> anyhow::Result<ExitCode> {
    let stopper = Stopper::install(super::stop::DRAIN_NOTICE, super::stop::DRAIN_AFTERMATH, args.json)
        .context("listening for SIGINT and SIGTERM")?;
    let every = match (&replay, config.every_secs) {
        (None, secs) if secs > 0 => std::time::Duration::from_secs(secs),
        _ => {
            let summary = match run_once(args, config, setup, replay.as_ref(), &stopper).await {
                Ok(summary) => summary,
                Err(e) => return stopper.failed_run(e, false, args.json),
            };
            print_summary(&summary, args.json, false, &stopper)?;
            return Ok(match stopper.signal() {
                Some(signal) if summary.interrupted => ExitCode::from(signal.exit_code()),
                _ => ExitCode::SUCCESS,
            });
        }
    };

    poslake::ingest::check_paths(&setup.paths).context("the service cannot start")?;
    // As a service: a run every `every` (at once if one took longer), until a signal. A failed run is logged and the
    // next one tries again; `max_failed_runs` in a row end the process, so that an orchestrator sees it.
    tracing::info!(every = %humantime::format_duration(every), "running as a service: an ingest every interval");
    let mut failed = 0;
    let mut busy = false;
    loop {
        let started = tokio::time::Instant::now();
        match run_once(args, config, setup, None, &stopper).await {
            // Another run of this worker (a manual one, started between two of the service's) holds the lake: not a
            // failure, but a turn to skip; counted as failures, a long manual run ended the service (an audit).
            Err(e) if worker_busy(&e) => {
                metrics::counter!(poslake::telemetry::metric::RUNS, "outcome" => "skipped").increment(1);
                if !busy {
                    tracing::warn!(error = %error_chain(&e), "another run of this worker holds the lake: the service \
                        skips its runs until that one ends");
                }
                busy = true;
            }
            Ok(summary) => {
                failed = 0;
                busy = false;
                metrics::counter!(poslake::telemetry::metric::RUNS, "outcome" => "completed").increment(1);
                print_summary(&summary, args.json, true, &stopper)?;
            }
            Err(e) if stopper.signal().is_some() => return stopper.failed_run(e, true, args.json),
            Err(e) => {
                failed += 1;
                metrics::counter!(poslake::telemetry::metric::RUNS, "outcome" => "failed").increment(1);
                if failed >= config.max_failed_runs {
                    return Err(e.context(format!("{failed} runs in a row failed (max_failed_runs)")));
                }
                tracing::error!(error = %error_chain(&e), failed, "the run failed; the next one tries again");
                if args.json {
                    crate::print_json_error(&e, None)?;
                }
            }
        }
        let next = started + every;
        if stopper.signal().is_none() {
            let wait = next.saturating_duration_since(tokio::time::Instant::now());
            // Debug: every run prints its summary already, and an idle service would log this every interval.
            tracing::debug!(in_secs = wait.as_secs_f64().ceil() as u64, "next run");
        }
        if stopper.sleep_until(next).await.is_some() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Whether a run failed only because another run of the same worker holds the lake.
fn worker_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<poslake::ingest::IngestRunError>().is_some_and(|r| r.is_worker_busy()))
}

/// One ingest (or replay), with its progress on a terminal or in the log.
pub async fn run_once(
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
    // Not under JSON logs either: a bar's redraws would break the lines into pieces a collector cannot read.
    let bar = (!args.json && !poslake::telemetry::json_logs() && std::io::stderr().is_terminal()).then(progress_bar);
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
pub fn print_summary(
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

/// Says on stderr which `--stage` and `--kind` values no dead letter of the lake has (a typo selects nothing).
async fn warn_absent(
    config: &poslake::config::IngestConfig,
    filter: &poslake::ingest::replay::ReplayFilter,
) -> anyhow::Result<()> {
    for line in poslake::ingest::absent_replay_values(&config.lake, config.catalog.as_deref(), filter).await? {
        poslake::telemetry::notice(poslake::telemetry::Notice::Note, &line);
    }
    Ok(())
}

/// `poslake replay --dry-run`: what a replay would take.
pub async fn dry_run(args: IngestArgs, filter: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.every.is_none(), "--every is for `poslake ingest`: a replay runs once");
    let config = args.replay_config()?;
    existing_lake(&config.lake, config.catalog.as_deref())?;
    warn_absent(&config, &filter.filter()).await?;
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
