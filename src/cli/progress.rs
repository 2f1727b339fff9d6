//! A run's progress: a bar on a terminal, or a log line every half minute.

pub fn progress_bar() -> indicatif::ProgressBar {
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
pub fn progress_message(s: &poslake_actors::Snapshot, secs: f64) -> String {
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
pub async fn show_progress(bar: indicatif::ProgressBar, progress: std::sync::Arc<poslake_actors::Progress>) {
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
pub async fn log_progress(progress: std::sync::Arc<poslake_actors::Progress>) {
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
