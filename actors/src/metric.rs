//! Metric names the pipeline publishes through the `metrics` facade (a no-op until the binary installs a
//! recorder, e.g. the Prometheus endpoint).

use crate::shared::Shared;
use crate::stages::{Stages, WriteReport};

/// Files finished, by `outcome`: `ingested` or `dead_letter`.
pub const FILES: &str = "poslake_files_total";
/// Bytes of the files finished.
pub const BYTES: &str = "poslake_bytes_total";
/// Transactions, by `verdict`: `new`, `duplicate` (certain), `quarantined` (probable).
pub const TRANSACTIONS: &str = "poslake_transactions_total";
/// Dead letters, by `stage` and `reason` (the domain counts these: it knows the reasons).
pub const DEAD_LETTERS: &str = "poslake_dead_letters_total";
/// Stage retries, by `stage`.
pub const RETRIES: &str = "poslake_retries_total";
/// Actor restarts, by `actor`.
pub const RESTARTS: &str = "poslake_actor_restarts_total";
/// Files and raw bytes holding a credit (between discovery and commit).
pub const IN_FLIGHT_FILES: &str = "poslake_in_flight_files";
pub const IN_FLIGHT_BYTES: &str = "poslake_in_flight_bytes";
/// Messages registered with a stage's actors (being handled or in their mailboxes), by `stage`.
pub const QUEUE_DEPTH: &str = "poslake_queue_depth";

/// Counts what a commit made visible (the same numbers the run's summary adds up). The domain calls it when it
/// commits: a batch written is not committed yet, and one whose commit fails is counted by the run that lands it.
pub fn committed(report: &WriteReport) {
    // Saturating: a report may come from a commit intent on disk, which nothing stops an operator from editing.
    metrics::counter!(FILES, "outcome" => "ingested").increment(report.files.saturating_sub(report.dead_letters));
    metrics::counter!(FILES, "outcome" => "dead_letter").increment(report.dead_letters);
    metrics::counter!(BYTES).increment(report.bytes);
    metrics::counter!(TRANSACTIONS, "verdict" => "new").increment(report.new_transactions);
    metrics::counter!(TRANSACTIONS, "verdict" => "duplicate")
        .increment(report.duplicates.saturating_sub(report.quarantined));
    metrics::counter!(TRANSACTIONS, "verdict" => "quarantined").increment(report.quarantined);
}

/// Samples the gauges: credits in use and the work registered with each stage.
pub(crate) fn sample<S: Stages>(shared: &Shared<S>) {
    let (files, bytes) = shared.credits.in_flight();
    metrics::gauge!(IN_FLIGHT_FILES).set(f64::from(files));
    metrics::gauge!(IN_FLIGHT_BYTES).set(bytes as f64);
    let Ok(registry) = shared.inflight.lock() else { return };
    let depth = |ids: Vec<ractor::ActorId>| ids.iter().map(|id| registry.get(id).map_or(0, |m| m.len())).sum::<usize>();
    let stages = [
        ("discover", depth(shared.discoverer.all().iter().map(|a| a.get_id()).collect())),
        ("download", depth(shared.downloaders.all().iter().map(|a| a.get_id()).collect())),
        ("parse", depth(shared.parsers.all().iter().map(|a| a.get_id()).collect())),
        ("archive", depth(shared.archivers.all().iter().map(|a| a.get_id()).collect())),
        ("dedup", depth(shared.batcher.all().iter().map(|a| a.get_id()).collect())),
        ("write", depth(shared.writer.all().iter().map(|a| a.get_id()).collect())),
    ];
    for (stage, n) in stages {
        metrics::gauge!(QUEUE_DEPTH, "stage" => stage).set(n as f64);
    }
}
