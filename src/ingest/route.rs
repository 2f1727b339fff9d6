//! Splitting one staging area between workers. Each of `workers` processes takes only the files routed to its
//! `worker_index`, so that no file is read by two of them, and so that files which may repeat each other's
//! transactions (a station's re-sends) meet in one worker, whose in-flight keys are exact. Routing is by a key taken
//! from the file's staging path: the first capture group of `route_by` (e.g. `site=([^/]+)`), else the file's
//! folder, where stations' uploads usually sit. The key is hashed with BLAKE3, so every worker and every version of
//! poslake routes a path the same way.
//!
//! With a fixed count (`workers = N`) the hash modulo N names the worker. With `workers = "auto"` the hash names
//! one of [`SLOTS`] slots, and a worker takes the slots it holds a lease on ([`super::slot_leases`]).

use std::sync::Arc;

use regex::Regex;

use super::slot_leases::{SLOTS, SlotLeases};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route_by {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("worker_index {index} is not below workers ({workers})")]
    Index { index: u32, workers: u32 },
}

/// Which files this worker takes.
#[derive(Clone)]
pub struct Route {
    workers: u32,
    index: u32,
    by: Option<Regex>,
    /// `workers = "auto"`: the slots this worker leases decide, not `workers` and `index`.
    leases: Option<Arc<SlotLeases>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("workers", &self.workers)
            .field("index", &self.index)
            .field("by", &self.by.as_ref().map(Regex::as_str))
            .field("leases", &self.leases.as_ref().map(|l| l.id()))
            .finish()
    }
}

impl Route {
    /// Worker `index` of `workers`, routing by `by`'s first capture group (else by folder).
    pub fn new(workers: u32, index: u32, by: Option<&str>) -> Result<Self, RouteError> {
        if index >= workers.max(1) {
            return Err(RouteError::Index { index, workers });
        }
        Ok(Route { workers: workers.max(1), index, by: pattern(by)?, leases: None })
    }

    /// `workers = "auto"`: this worker takes the files of the slots it leases.
    pub fn leased(by: Option<&str>, leases: Arc<SlotLeases>) -> Result<Self, RouteError> {
        Ok(Route { workers: 1, index: 0, by: pattern(by)?, leases: Some(leases) })
    }

    /// One worker takes everything.
    pub fn all() -> Self {
        Route { workers: 1, index: 0, by: None, leases: None }
    }

    pub fn is_split(&self) -> bool {
        self.workers > 1 || self.leases.is_some()
    }

    /// Which worker of the lake this route makes a run (see [`super::worker_lock`]).
    pub fn worker(&self) -> super::worker_lock::Worker {
        match self.leases {
            Some(_) => super::worker_lock::Worker::Auto,
            None => super::worker_lock::Worker::Fixed { index: self.index, of: self.workers },
        }
    }

    pub fn leases(&self) -> Option<&Arc<SlotLeases>> {
        self.leases.as_ref()
    }

    /// The hash of a staging path's route key.
    fn hash(&self, path: &str) -> u64 {
        let captured = self.by.as_ref().and_then(|re| re.captures(path)).and_then(|c| c.get(1)).map(|m| m.as_str());
        let key = captured.unwrap_or_else(|| path.rsplit_once('/').map_or("", |(folder, _)| folder));
        let hash = blake3::hash(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// The worker a staging path goes to (with a fixed count of workers).
    pub fn worker_of(&self, path: &str) -> u32 {
        if self.workers == 1 {
            return 0;
        }
        (self.hash(path) % u64::from(self.workers)) as u32
    }

    /// The slot a staging path falls in (with `workers = "auto"`).
    pub fn slot_of(&self, path: &str) -> u32 {
        (self.hash(path) % u64::from(SLOTS)) as u32
    }

    /// The share of the staging area the file at `path` belongs to: its worker of a fixed count, or its slot with
    /// leased slots. Stable across restarts, so that a worker knows its own claims again (see `claims`).
    pub fn share_of(&self, path: &str) -> String {
        match &self.leases {
            Some(_) => format!("slot-{}", self.slot_of(path)),
            None => format!("worker-{}-of-{}", self.worker_of(path), self.workers),
        }
    }

    /// Whether this worker takes the file at `path`.
    pub fn takes(&self, path: &str) -> bool {
        match &self.leases {
            Some(leases) => leases.holds(self.slot_of(path)),
            None => self.worker_of(path) == self.index,
        }
    }
}

fn pattern(by: Option<&str>) -> Result<Option<Regex>, RouteError> {
    let Some(pattern) = by else { return Ok(None) };
    let err = |reason: String| RouteError::Pattern { pattern: pattern.to_owned(), reason };
    let re = Regex::new(pattern).map_err(|e| err(e.to_string()))?;
    if re.captures_len() < 2 {
        return Err(err("needs a capture group, the part of the path that routes the file".into()));
    }
    Ok(Some(re))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_goes_to_exactly_one_worker_and_a_folder_stays_together() {
        let routes: Vec<Route> = (0..3).map(|i| Route::new(3, i, None).expect("route")).collect();
        let mut per_worker = [0u32; 3];
        for site in 0..60 {
            for file in 0..5 {
                let path = format!("arts/site={site}/date=2026-11-26/{file}.xml");
                let takers: Vec<u32> = (0..3).filter(|&i| routes[i as usize].takes(&path)).collect();
                assert_eq!(takers.len(), 1, "{path}: {takers:?}");
                let folder_mate = format!("arts/site={site}/date=2026-11-26/other-{file}.xml.gz");
                assert_eq!(routes[0].worker_of(&path), routes[0].worker_of(&folder_mate));
                per_worker[takers[0] as usize] += 1;
            }
        }
        // 60 folders over 3 workers: none left idle, none with nearly all.
        assert!(per_worker.iter().all(|&n| (25..=175).contains(&n)), "{per_worker:?}");
    }

    #[test]
    fn a_pattern_routes_by_its_capture_and_folders_otherwise() {
        let by_site = Route::new(4, 0, Some(r"site=([^/]+)")).expect("route");
        // The same site on two days, and a re-send in another folder: one worker.
        let a = by_site.worker_of("naxml/site=17/date=2026-11-26/a.xml");
        assert_eq!(a, by_site.worker_of("naxml/site=17/date=2026-11-27/b.xml"));
        assert_eq!(a, by_site.worker_of("resent/site=17/c.xml"));
        // No match: the folder decides.
        let by_folder = Route::new(4, 0, None).expect("route");
        assert_eq!(by_site.worker_of("loose/x.xml"), by_folder.worker_of("loose/x.xml"));
        assert!(Route::new(2, 2, None).is_err());
        assert!(Route::new(2, 0, Some("site=[0-9]+")).is_err(), "no capture group");
        assert!(Route::new(2, 0, Some("site=(")).is_err());
        assert!(Route::all().takes("anything.xml") && !Route::all().is_split());
    }
}
