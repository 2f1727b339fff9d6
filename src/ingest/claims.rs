//! Claims on keys in flight, shared through a Redis dedup store, so that two workers that take one sale in the same
//! commit window do not both land it.
//!
//! Routing puts each file on one worker, but a sale can reach two files routed apart: a re-sent file in another
//! folder than the original (with the default route by folder), or a layout whose route key does not hold the site.
//! Each worker's keys in flight are exact in its own memory ([`super::in_flight`]), and the store learns a key only
//! once its data is committed, so until then another worker's check finds nothing: both would land the sale, and
//! `reconcile` could not see it (neither was a filter positive). So a worker of several claims each key its check
//! found new, in the store, for the share of the staging area its file belongs to (the worker's index of a fixed
//! count, or the file's route slot with leased slots): a key another share claims is quarantined with the reason
//! `in_flight_elsewhere`, and `reconcile` confirms it once that share's commit has landed it, or promotes it if the
//! commit never came. A share's claims are its own again after a restart, so a worker redoing its files after a
//! crash is not held up by what it claimed before.
//!
//! A claim ends when its keys are in the store: after the commit, or when the next start's recovery finishes a
//! commit whose process was killed. It does not run out with time, since a process paused mid-commit still holds its
//! intent and will land it when it resumes (a version whose claims ran out after three times `commit_wait_secs` let
//! another worker land copies of a commit paused past that, an audit found). A batch given up, or a process killed
//! before its commit, leaves its claims for its share to take again when it redoes the files (share names are stable
//! across restarts). Claims that no share takes again (workers restarted in another layout) keep those keys
//! quarantined, for `reconcile` to promote, until their period has seen no claim for a day. A commit whose keys were
//! checked longer ago than the workers' wait for each other's commits (`commit_wait_secs`) claims them again first
//! (a claim lost with its period's idle hash is made anew): if another share holds some now, nothing is committed and
//! the run fails, as for keys found landed meanwhile. Claims are a hash per period in Redis, a field per key in
//! flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::route::Route;
use crate::dedup::{Dedup, DedupError, DedupKey, KeyDigest};

pub(crate) struct Claims {
    route: Arc<Route>,
    /// The share each key this process claimed, and has not released, was claimed for.
    owners: Mutex<HashMap<KeyDigest, Arc<str>>>,
}

impl Claims {
    /// Claims for a run that shares the staging area with other workers through a shared store, unless configured
    /// off (`dedup.claim_in_flight`); none otherwise (a single worker's keys in flight are all in its own memory).
    pub fn new(route: Arc<Route>, dedup: &Dedup, configured: bool) -> Option<Self> {
        (configured && route.is_split() && dedup.is_shared())
            .then(|| Claims { route, owners: Mutex::new(HashMap::new()) })
    }

    /// The share a staging file belongs to.
    fn owner_of(&self, path: &str) -> Arc<str> {
        self.route.share_of(path).into()
    }

    /// Claims `keys` (each from the file at the same place in `paths`): whether another share holds each. The
    /// others are this process's until released.
    pub async fn claim(&self, dedup: &Dedup, keys: &[DedupKey], paths: &[&str]) -> Result<Vec<bool>, DedupError> {
        let owners: Vec<Arc<str>> = paths.iter().map(|p| self.owner_of(p)).collect();
        let names: Vec<&str> = owners.iter().map(|o| &**o).collect();
        let elsewhere = dedup.claim(keys, &names).await?;
        if let Ok(mut held) = self.owners.lock() {
            for ((k, owner), other) in keys.iter().zip(owners).zip(&elsewhere) {
                if !other {
                    held.insert(k.digest, owner);
                }
            }
        }
        Ok(elsewhere)
    }

    /// Claims a commit's keys again (one lost with its period's idle hash is made anew if no other share took it):
    /// how many another share holds now.
    pub async fn confirm(&self, dedup: &Dedup, keys: &[DedupKey]) -> Result<usize, DedupError> {
        let owners: Vec<Arc<str>> = {
            let held = self.owners.lock().map_err(|_| DedupError::Config("claims poisoned".into()))?;
            // A key with no owner recorded cannot be: every key of a commit was claimed at its check.
            keys.iter().map(|k| held.get(&k.digest).cloned().unwrap_or_else(|| Arc::from(""))).collect()
        };
        let names: Vec<&str> = owners.iter().map(|o| &**o).collect();
        Ok(dedup.claim(keys, &names).await?.into_iter().filter(|e| *e).count())
    }

    /// Ends the claims on committed keys, now in the store. A failure leaves them until their period's claims idle
    /// out (their keys are in the store, so they hold nothing off meanwhile).
    pub async fn release(&self, dedup: &Dedup, keys: &[DedupKey]) {
        self.forget(keys);
        if let Err(e) = dedup.release_claims(keys).await {
            tracing::warn!(error = %e, keys = keys.len(), "claims on committed keys not ended");
        }
    }

    /// Forgets keys given up uncommitted; their claims stay, for this share to take them again.
    pub fn forget(&self, keys: &[DedupKey]) {
        if let Ok(mut held) = self.owners.lock() {
            for k in keys {
                held.remove(&k.digest);
            }
            // As for the keys in flight (`InFlightKeys::release`): rebuilt to what is left, so that removals leave
            // no tombstones to grow on.
            held.shrink_to(0);
        }
    }
}
