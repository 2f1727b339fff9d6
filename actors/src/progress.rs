//! Run progress shared by the actors and the caller: how many files were discovered and how many are done
//! (committed or dead-lettered), plus the totals of what was written. The run is over when discovery is finished
//! and every discovered file is done, or when a fatal error is recorded.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::stages::WriteReport;

#[derive(Debug, Default)]
pub struct Progress {
    discovered: AtomicU64,
    discovered_bytes: AtomicU64,
    discovery_done: AtomicBool,
    /// Entries of the listing that discovery passed over (already done): with `discovered`, how far it has gone.
    passed_over: AtomicU64,
    /// Entries a census (a second, count-only listing beside discovery) has counted, and whether it went through
    /// the whole listing: its size, for the time left while discovery, held back by credits, is still in it.
    census: AtomicU64,
    census_done: AtomicBool,
    /// The census's sample of which entries are new, by stretch of the listing: see [`Progress::census_sampled`].
    census_sample: Mutex<Sample>,
    /// Files (parsed or dead letters) handed to the batcher, retries counted again.
    reached_batcher: AtomicU64,
    done: AtomicU64,
    retries: AtomicU64,
    restarts: AtomicU64,
    totals: Mutex<WriteReport>,
    fatal: Mutex<Option<String>>,
    stop: AtomicBool,
    changed: Notify,
}

/// Entries of the listing sampled by the census, per stretch of entries: how many were looked up, how many of those
/// were new.
#[derive(Debug, Default, Clone, Copy)]
struct Stretch {
    sampled: u32,
    new: u32,
}

/// The census's sample by stretch of the listing: new files gather in some parts of a listing (today's folder), so
/// the share of them is kept by part, not for the whole. Stretches start at [`STRETCH`] entries and double (pairs
/// merged) whenever there would be more than [`MAX_STRETCHES`]: memory stays bounded (512 KiB) whatever the listing.
#[derive(Debug)]
struct Sample {
    stretch: u64,
    stretches: Vec<Stretch>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample { stretch: STRETCH, stretches: Vec::new() }
    }
}

/// Entries per stretch of the census's sample at first: with one entry in 64 looked up, 32 samples a stretch.
pub const STRETCH: u64 = 2_048;
/// The most stretches kept: 134 million entries at [`STRETCH`]; coarser beyond.
const MAX_STRETCHES: usize = 1 << 16;

/// A consistent-enough view for display and the final summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub discovered: u64,
    pub discovered_bytes: u64,
    pub discovery_done: bool,
    /// Entries of the listing discovery passed over (see [`Progress::passed_over`]).
    pub passed_over: u64,
    /// The listing's size in entries, once a census has counted it all.
    pub listing_size: Option<u64>,
    /// New files the census's sample expects in the listing past where discovery is (`discovered + passed_over`).
    pub new_ahead: Option<f64>,
    pub done: u64,
    pub retries: u64,
    pub restarts: u64,
    pub totals: WriteReport,
}

impl Progress {
    pub(crate) fn discovered(&self, bytes: u64) {
        self.discovered.fetch_add(1, Ordering::SeqCst);
        self.discovered_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts entries of the listing that discovery passed over rather than fed (files already done).
    pub fn passed_over(&self, entries: u64) {
        self.passed_over.fetch_add(entries, Ordering::Relaxed);
    }

    /// Counts entries of the listing a census went through.
    pub fn census_counted(&self, entries: u64) {
        self.census.fetch_add(entries, Ordering::Relaxed);
    }

    /// Records a sample the census looked up: the entry at `position` of this worker's listing, and whether it is
    /// new (not yet ingested).
    pub fn census_sampled(&self, position: u64, new: bool) {
        let Ok(mut sample) = self.census_sample.lock() else { return };
        while position / sample.stretch >= MAX_STRETCHES as u64 {
            let merged = sample
                .stretches
                .chunks(2)
                .map(|pair| Stretch {
                    sampled: pair.iter().map(|s| s.sampled).sum(),
                    new: pair.iter().map(|s| s.new).sum(),
                })
                .collect();
            sample.stretches = merged;
            sample.stretch *= 2;
        }
        let at = (position / sample.stretch) as usize;
        if at >= sample.stretches.len() {
            sample.stretches.resize(at + 1, Stretch::default());
        }
        let s = &mut sample.stretches[at];
        s.sampled += 1;
        s.new += u32::from(new);
    }

    /// New files the sample expects past `position` of a listing of `size` entries: each stretch's share of new
    /// entries, over the entries it holds past `position` (a stretch not sampled takes the share of all samples).
    fn new_ahead(&self, position: u64, size: u64) -> Option<f64> {
        let sample = self.census_sample.lock().ok()?;
        let (stretch, stretches) = (sample.stretch, &sample.stretches);
        let (sampled, new) =
            stretches.iter().fold((0u64, 0u64), |(a, b), s| (a + u64::from(s.sampled), b + u64::from(s.new)));
        if sampled == 0 {
            return None;
        }
        let overall = new as f64 / sampled as f64;
        let mut ahead = 0.0;
        let mut start = 0u64;
        let mut i = 0usize;
        while start < size {
            let end = (start + stretch).min(size);
            if end > position {
                let entries = (end - start.max(position)) as f64;
                let share = match stretches.get(i) {
                    Some(s) if s.sampled > 0 => f64::from(s.new) / f64::from(s.sampled),
                    _ => overall,
                };
                ahead += entries * share;
            }
            start = end;
            i += 1;
        }
        Some(ahead)
    }

    /// The census went through the whole listing: its count is the listing's size.
    pub fn census_finished(&self) {
        self.census_done.store(true, Ordering::SeqCst);
    }

    /// Whether discovery went through the whole listing.
    pub fn discovery_done(&self) -> bool {
        self.discovery_done.load(Ordering::SeqCst)
    }

    pub(crate) fn discovery_finished(&self) {
        self.discovery_done.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Counts one more file reaching the batcher. True when no file may be left to come: discovery is finished and
    /// as many files have reached the batcher as were discovered. A retried file counts again, so this can be true
    /// early, which only makes a smaller batch.
    pub(crate) fn reached_batcher(&self) -> bool {
        self.reached_batcher.fetch_add(1, Ordering::SeqCst);
        self.all_reached_batcher()
    }

    /// Whether discovery is finished and as many files have reached the batcher as were discovered.
    pub(crate) fn all_reached_batcher(&self) -> bool {
        self.discovery_done.load(Ordering::SeqCst)
            && self.reached_batcher.load(Ordering::SeqCst) >= self.discovered.load(Ordering::SeqCst)
    }

    pub(crate) fn committed(&self, files: u64, report: &WriteReport) {
        if let Ok(mut t) = self.totals.lock() {
            t.add(report);
        }
        self.done.fetch_add(files, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fail(&self, reason: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(reason);
        }
        self.changed.notify_waiters();
    }

    /// Asks the run to drain: discovery stops feeding new files; files already in flight are written and
    /// committed; then the run ends normally.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    pub fn is_finished(&self) -> bool {
        self.discovery_done.load(Ordering::SeqCst)
            && self.done.load(Ordering::SeqCst) >= self.discovered.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            discovered: self.discovered.load(Ordering::SeqCst),
            discovered_bytes: self.discovered_bytes.load(Ordering::Relaxed),
            discovery_done: self.discovery_done.load(Ordering::SeqCst),
            passed_over: self.passed_over.load(Ordering::Relaxed),
            listing_size: self.census_done.load(Ordering::SeqCst).then(|| self.census.load(Ordering::Relaxed)),
            new_ahead: match self.census_done.load(Ordering::SeqCst) {
                true => {
                    let position = self.discovered.load(Ordering::SeqCst) + self.passed_over.load(Ordering::Relaxed);
                    self.new_ahead(position, self.census.load(Ordering::Relaxed))
                }
                false => None,
            },
            done: self.done.load(Ordering::SeqCst),
            retries: self.retries.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            totals: self.totals.lock().map(|t| *t).unwrap_or_default(),
        }
    }

    /// Waits until the run is finished or failed, or until `timeout` passes (to refresh a display).
    pub async fn wait(&self, timeout: std::time::Duration) {
        let notified = self.changed.notified();
        if self.is_finished() || self.fatal().is_some() {
            return;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Progress, STRETCH};

    /// New files gathered at the end of the listing (today's folder, listed last) are expected where they are: a
    /// share over the whole listing put a few hundred of 6,105 there (found by an audit).
    #[test]
    fn the_sample_expects_new_files_where_it_found_them() {
        let progress = Progress::default();
        let size = 4 * STRETCH;
        for at in (0..size).step_by(64) {
            progress.census_sampled(at, at >= 3 * STRETCH);
        }
        let ahead = |position: u64| progress.new_ahead(position, size).expect("sampled");
        assert!((ahead(0) - STRETCH as f64).abs() < 1.0, "{}", ahead(0));
        assert!((ahead(3 * STRETCH + STRETCH / 2) - (STRETCH / 2) as f64).abs() < 1.0);
        assert_eq!(ahead(size), 0.0);
        // A stretch nobody sampled takes the share of all samples.
        let sparse = Progress::default();
        sparse.census_sampled(0, true);
        sparse.census_sampled(1, false);
        assert!((sparse.new_ahead(0, 2 * STRETCH).expect("sampled") - STRETCH as f64).abs() < 1.0);
    }

    /// A listing longer than the stretches kept merges them in pairs: memory stays bounded, the estimate coarser.
    #[test]
    fn a_long_listing_merges_stretches_and_keeps_its_counts() {
        let progress = Progress::default();
        let size = 3 * super::MAX_STRETCHES as u64 * STRETCH;
        let last_quarter = size / 4 * 3;
        for at in (0..size).step_by(4096) {
            progress.census_sampled(at, at >= last_quarter);
        }
        let sample = progress.census_sample.lock().expect("sample");
        assert!(sample.stretches.len() <= super::MAX_STRETCHES, "{}", sample.stretches.len());
        assert_eq!(sample.stretch, 4 * STRETCH);
        drop(sample);
        let ahead = progress.new_ahead(0, size).expect("sampled");
        let quarter = (size / 4) as f64;
        assert!((ahead - quarter).abs() / quarter < 0.01, "{ahead}");
    }
}
