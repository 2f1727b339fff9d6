//! One process per worker of a lake: two `ingest` runs that take the same share of staging at once (a cron run
//! overlapping the one before, a manual run beside a service, a pod restarted while the old one drains) would each
//! check the same keys before either adds them, and land every transaction twice, with nothing quarantined for
//! `reconcile` to find (a chaos audit saw it with a Redis store; the embedded store's own lock already kept a second
//! process out).
//!
//! The locks are `flock`s on files under `<lake>/workers/`, as commit intents are (so they hold between hosts on
//! NFSv4 or Azure Files, and a process that dies releases them):
//! - `<i>-of-<n>.lock`, exclusive: worker `i` of a fixed count `n` (the default is worker 0 of 1);
//! - `of-<n>.lock` (or `of-auto.lock` with `workers = "auto"`), shared by every worker of that layout. A worker
//!   refuses to start while another layout's file is held: worker 0 of 1 beside workers of 2 would take files of
//!   theirs.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::IngestError;
use crate::lake::LakeError;

/// Held for a run; released when dropped, or when the process dies.
#[derive(Debug)]
pub struct WorkerLock {
    _layout: File,
    _worker: Option<File>,
}

/// Which worker a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    /// Worker `index` of a fixed count `of`.
    Fixed { index: u32, of: u32 },
    /// `workers = "auto"`: route slots leased in Redis decide the share (their leases keep two workers apart).
    Auto,
}

impl Worker {
    fn layout(self) -> String {
        match self {
            Worker::Fixed { of, .. } => format!("of-{of}.lock"),
            Worker::Auto => "of-auto.lock".to_owned(),
        }
    }
}

impl std::fmt::Display for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Worker::Fixed { index, of } => write!(f, "worker {index} of {of}"),
            Worker::Auto => f.write_str("workers = \"auto\""),
        }
    }
}

/// Takes `worker`'s locks in `lake`, or says which run holds them.
pub fn lock(lake: &Path, worker: Worker) -> Result<WorkerLock, IngestError> {
    let dir = lake.join("workers");
    std::fs::create_dir_all(&dir).map_err(|source| io(dir.clone(), source))?;
    // Shared first, then the check of the other layouts: two runs of different layouts starting at once each see
    // the other's and both refuse, rather than both pass.
    let layout_path = dir.join(worker.layout());
    let layout = open(&layout_path)?;
    let mut tries = 0;
    loop {
        match layout.try_lock_shared() {
            Ok(()) => break,
            // Another run is only probing it (below), for an instant.
            Err(TryLockError::WouldBlock) if tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return Err(running(lake, worker, "another layout is starting")),
            Err(TryLockError::Error(e)) => return Err(io(layout_path, e)),
        }
    }
    for entry in std::fs::read_dir(&dir).map_err(|source| io(dir.clone(), source))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("of-") || name == worker.layout() {
            continue;
        }
        if held(&entry.path())? {
            let layout = name.trim_start_matches("of-").trim_end_matches(".lock");
            return Err(running(lake, worker, &format!("workers = {layout}")));
        }
    }
    let worker_file = match worker {
        Worker::Fixed { index, of } => {
            let path = dir.join(format!("{index}-of-{of}.lock"));
            let file = open(&path)?;
            match file.try_lock() {
                Ok(()) => Some(file),
                Err(TryLockError::WouldBlock) => return Err(running(lake, worker, &worker.to_string())),
                Err(TryLockError::Error(e)) => return Err(io(path, e)),
            }
        }
        Worker::Auto => None,
    };
    Ok(WorkerLock { _layout: layout, _worker: worker_file })
}

/// Whether a run holds this layout's lock. The probe takes it exclusively for an instant, so two runs probing it at
/// once see each other: only a lock still held after a few tries is a run's (an audit saw two workers of one layout,
/// started together, each refuse the other for the other's probe).
fn held(path: &Path) -> Result<bool, IngestError> {
    let file = open(path)?;
    for _ in 0..PROBES {
        match file.try_lock() {
            Ok(()) => return Ok(false),
            Err(TryLockError::WouldBlock) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(TryLockError::Error(e)) => return Err(io(path.to_path_buf(), e)),
        }
    }
    Ok(true)
}

/// Tries of a probe: a probe holds a lock for microseconds, a run for the run.
const PROBES: usize = 50;

fn open(path: &Path) -> Result<File, IngestError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| io(path.to_path_buf(), source))
}

fn running(lake: &Path, worker: Worker, holder: &str) -> IngestError {
    IngestError::WorkerRunning { lake: lake.to_path_buf(), worker: worker.to_string(), holder: holder.to_owned() }
}

fn io(path: PathBuf, source: std::io::Error) -> IngestError {
    IngestError::Lake(LakeError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_worker_and_one_layout_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = dir.path();
        let only = lock(lake, Worker::Fixed { index: 0, of: 1 }).expect("first");
        let second = lock(lake, Worker::Fixed { index: 0, of: 1 }).expect_err("the same worker twice");
        assert!(second.to_string().contains("worker 0 of 1"), "{second}");
        let other = lock(lake, Worker::Fixed { index: 1, of: 2 }).expect_err("another layout");
        assert!(other.to_string().contains("workers = 1"), "{other}");
        assert!(lock(lake, Worker::Auto).is_err());
        drop(only);
        let a = lock(lake, Worker::Fixed { index: 0, of: 2 }).expect("worker 0 of 2");
        let b = lock(lake, Worker::Fixed { index: 1, of: 2 }).expect("worker 1 of 2 beside it");
        assert!(lock(lake, Worker::Fixed { index: 1, of: 2 }).is_err());
        drop((a, b));
        let auto = lock(lake, Worker::Auto).expect("auto");
        let auto2 = lock(lake, Worker::Auto).expect("auto workers share");
        assert!(lock(lake, Worker::Fixed { index: 0, of: 1 }).is_err());
        drop((auto, auto2));
        lock(lake, Worker::Fixed { index: 0, of: 1 }).expect("all released");
    }

    /// Two workers of one layout starting at the same instant, after a run of another layout left its lock file:
    /// each probes that file, and neither takes the other's probe for a run.
    #[test]
    fn workers_of_one_layout_starting_together_both_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(lock(dir.path(), Worker::Fixed { index: 0, of: 1 }).expect("an earlier run"));
        for _ in 0..50 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let starts: Vec<_> = (0..2)
                .map(|index| {
                    let (lake, barrier) = (dir.path().to_path_buf(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        lock(&lake, Worker::Fixed { index, of: 2 }).map(drop).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for start in starts {
                start.join().expect("join").expect("both start");
            }
        }
    }
}
