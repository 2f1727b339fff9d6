//! Keys of this run that the dedup store does not hold yet: reserved by a batch, or committed and being added. The
//! set is exact, so a key in flight is never checked against the store twice.

use std::collections::HashSet;

use crate::dedup::{DedupKey, KeyDigest};

#[derive(Default)]
pub(crate) struct InFlightKeys(HashSet<KeyDigest>);

impl InFlightKeys {
    pub(crate) fn contains(&self, digest: &KeyDigest) -> bool {
        self.0.contains(digest)
    }

    /// Reserves a key; false if it was in flight already.
    pub(crate) fn reserve(&mut self, digest: KeyDigest) -> bool {
        self.0.insert(digest)
    }

    /// Takes keys out: a commit's, once the store holds them, or an abandoned batch's.
    pub(crate) fn release(&mut self, keys: &[DedupKey]) {
        if keys.is_empty() {
            return; // nothing removed, nothing to rebuild (an abandon with no extra keys)
        }
        for k in keys {
            self.0.remove(&k.digest);
        }
        // A removal leaves a tombstone, and a table full of them grows instead of rehashing in place when it is more
        // than half live at that moment: after 5 to 10 commits it doubled (5 to 10 MB at 2,000 files a commit) though
        // it never held more keys. Rebuilt now, it holds only the keys still in flight and grows back to the size
        // they need, so its peak follows the commit size, not the length of the run.
        self.0.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn the_table_follows_the_keys_in_flight_not_the_number_of_commits() {
        let date = NaiveDate::from_ymd_opt(2026, 1, 5).expect("date");
        let mut x: u128 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            DedupKey { digest: x ^ (x >> 61), date }
        };
        let mut set = InFlightKeys::default();
        let (per_commit, overlap) = (20_000, 3_000);
        let mut committing: Vec<DedupKey> = Vec::new();
        let mut most = 0;
        for _ in 0..40 {
            let mut open = Vec::with_capacity(per_commit);
            for i in 0..per_commit {
                let key = next();
                assert!(set.reserve(key.digest));
                open.push(key);
                most = most.max(set.0.len());
                // The last commit's keys leave once the next batch is under way, as in the ingest.
                if i == overlap {
                    set.release(&committing);
                }
            }
            committing = open;
        }
        assert!(committing.iter().all(|k| set.contains(&k.digest)));
        // At most 23,001 keys were ever in flight: 28,672 usable slots (32,768 buckets) hold them. Without the
        // rebuild, the tombstones of 40 commits doubled the table.
        assert!(most <= per_commit + overlap + 1, "{most}");
        assert!(set.0.capacity() < 2 * (per_commit + overlap), "capacity {} for at most {most} keys", set.0.capacity());
    }
}
