//! Retry pauses: exponential backoff with full jitter, so that many clients retrying the same outage spread out
//! instead of arriving together.

use std::time::Duration;

/// Uniform in [0, min(cap, base · 2^tries)).
pub fn full_jitter(base: Duration, cap: Duration, tries: u32) -> Duration {
    let cap = base.saturating_mul(1 << tries.min(16)).min(cap);
    let nanos = cap.as_nanos() as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { (uuid::Uuid::new_v4().as_u128() as u64) % nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_jittered_below_a_growing_cap() {
        let (base, cap) = (Duration::from_millis(50), Duration::from_secs(5));
        for tries in 1..20 {
            let bound = base.saturating_mul(1 << tries.min(16)).min(cap);
            let pauses: Vec<_> = (0..20).map(|_| full_jitter(base, cap, tries)).collect();
            assert!(pauses.iter().all(|p| *p < bound), "{tries}: {pauses:?}");
            assert!(pauses.iter().any(|p| *p != pauses[0]), "{tries}: not jittered: {pauses:?}");
        }
        assert_eq!(full_jitter(Duration::ZERO, cap, 3), Duration::ZERO);
    }
}
