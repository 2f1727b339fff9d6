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

/// A consistent-enough view for display and the final summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub discovered: u64,
    pub discovered_bytes: u64,
    pub discovery_done: bool,
    /// Entries of the listing discovery passed over (see [`Progress::passed_over`]).
    pub passed_over: u64,
    /// The listing's size in entries, once a census has counted it all.
    pub listing_size: Option<u64>,
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
