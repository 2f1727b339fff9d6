//! A run's progress: a bar on a terminal, or a log line every half minute.

pub fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(bar_style(false));
    bar.set_message("starting…");
    bar
}

/// A bar once the run's size is known (the listing is through, or its census); before, counts without a bar, which
/// would look nearly full while discovery is only just ahead of the work.
fn bar_style(sized: bool) -> indicatif::ProgressStyle {
    let template = if sized {
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files, {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {pos} files done of {len} found so far, {msg}"
    };
    indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// Files the run will take in all: those discovered, once the listing is through; while discovery is still in it,
/// an estimate from the census of the listing: the new files its sample expects ahead of discovery, stretch by
/// stretch (or, without a sample, the rest of the listing holding new files in the share discovery saw so far); or
/// `None` before the census is through.
pub fn expected_files(s: &poslake_actors::Snapshot) -> Option<(u64, bool)> {
    if s.discovery_done {
        return Some((s.discovered, true));
    }
    let size = s.listing_size?;
    let ahead = s.new_ahead.unwrap_or_else(|| {
        let reached = s.discovered + s.passed_over;
        let share = if reached > 0 { s.discovered as f64 / reached as f64 } else { 1.0 };
        size.saturating_sub(reached) as f64 * share
    });
    Some((s.discovered + ahead.round() as u64, false))
}

/// Files done a second over the last half minute or so (over the whole run before that): the time left follows
/// the pace now, not one that included a stretch of files skipped as already ingested.
#[derive(Default)]
pub struct Pace {
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl Pace {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

    /// Records `done` now and returns the files a second over the window, once it spans 5 s.
    pub fn record(&mut self, done: u64) -> Option<f64> {
        let now = std::time::Instant::now();
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && self.samples.get(1).is_some_and(|(t, _)| now - *t >= Self::WINDOW) {
            self.samples.pop_front();
        }
        let (first, before) = *self.samples.front()?;
        let span = (now - first).as_secs_f64();
        (span >= 5.0).then(|| done.saturating_sub(before) as f64 / span)
    }
}

/// What the run has done so far, in words: rates, duplicates, dead letters, and the time left once the run's size
/// is known or estimated (`ETA ~…`; see [`expected_files`]).
pub fn progress_message(s: &poslake_actors::Snapshot, secs: f64, pace: Option<f64>) -> String {
    let files_per_sec = s.done as f64 / secs;
    let pace = pace.unwrap_or(files_per_sec);
    let left = match expected_files(s) {
        None => "listing…".to_owned(),
        Some(_) if pace <= 0.0 => "ETA unknown".to_owned(),
        Some((expected, exact)) => {
            let eta = expected.saturating_sub(s.done) as f64 / pace;
            let eta = indicatif::HumanDuration(std::time::Duration::from_secs_f64(eta));
            // The bar's length is the estimate then.
            match exact {
                true => format!("ETA {eta}"),
                false => format!("ETA ~{eta}"),
            }
        }
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
pub async fn show_progress(bar: indicatif::ProgressBar, progress: std::sync::Arc<poslake_actors::Progress>) {
    let started = std::time::Instant::now();
    let mut pace = Pace::default();
    let mut sized = false;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let s = progress.snapshot();
        let expected = expected_files(&s);
        if expected.is_some() != sized {
            sized = expected.is_some();
            bar.set_style(bar_style(sized));
        }
        bar.set_length(expected.map_or(s.discovered, |(n, _)| n.max(s.discovered)));
        bar.set_position(s.done);
        let now = pace.record(s.done);
        bar.set_message(progress_message(&s, started.elapsed().as_secs_f64().max(1e-9), now));
        bar.tick();
    }
}

/// Off a terminal: one log line every 30 s with the same figures, for a long run's log.
pub async fn log_progress(progress: std::sync::Arc<poslake_actors::Progress>) {
    let started = std::time::Instant::now();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    every.tick().await;
    let mut pace = Pace::default();
    pace.record(0);
    loop {
        every.tick().await;
        let s = progress.snapshot();
        let now = pace.record(s.done);
        let expected = expected_files(&s).map(|(n, _)| n.max(s.discovered));
        tracing::info!(
            files_done = s.done,
            files_found = s.discovered,
            files_expected = expected,
            listing_done = s.discovery_done,
            "progress: {} of {} files, {}",
            s.done,
            expected.unwrap_or(s.discovered),
            progress_message(&s, started.elapsed().as_secs_f64().max(1e-9), now)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::expected_files;
    use poslake_actors::Snapshot;

    fn listing(discovered: u64, passed_over: u64, listing_size: Option<u64>, discovery_done: bool) -> Snapshot {
        Snapshot { discovered, passed_over, listing_size, discovery_done, ..Snapshot::default() }
    }

    #[test]
    fn the_runs_size_is_exact_once_listed_and_estimated_from_a_census_before() {
        assert_eq!(expected_files(&listing(120, 30, None, true)), Some((120, true)));
        assert_eq!(expected_files(&listing(120, 30, None, false)), None, "no census yet: unknown");
        // 200 of 1,000 entries reached, half of them new: the 800 left hold about 400 more.
        assert_eq!(expected_files(&listing(100, 100, Some(1_000), false)), Some((500, false)));
        // Nothing passed over: every entry left is new.
        assert_eq!(expected_files(&listing(10, 0, Some(1_000), false)), Some((1_000, false)));
        // A census that counted fewer entries than discovery reached (files arrived meanwhile): none left.
        assert_eq!(expected_files(&listing(50, 0, Some(40), false)), Some((50, false)));
        // With the census's sample, what it expects ahead wins over the share seen so far.
        let sampled = Snapshot { new_ahead: Some(900.4), ..listing(100, 100, Some(1_000), false) };
        assert_eq!(expected_files(&sampled), Some((1_000, false)));
    }
}
