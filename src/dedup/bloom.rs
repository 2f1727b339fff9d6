//! The blocked Bloom filter the `redis-bitmap` store keeps in plain Redis strings: its sizing and where a key's
//! bits are.
//!
//! All of one key's bits lie in one 512-bit block (a cache line), so a check or an add touches one cache line
//! of the Redis server instead of k scattered ones. Blocking costs a little accuracy (blocks fill unevenly), so
//! sizing does not use the textbook formula `m = -n ln p / ln² 2` directly: it searches for the fewest bits per
//! key whose *blocked* false-positive rate (a Poisson mix over block loads) meets the target. At 0.1% that is
//! about 8% more memory than the formula; the bench and the tests measure the real rate.
//!
//! A filter is split into shards (separate Redis keys, each at most `max_shard_bytes`) with the period and shard
//! number in a hash tag, `poslake:bf:{2026-11:3}`. On a Redis Cluster the key prefix carries a hash tag that comes
//! first (`{poslake}:bf:{2026-11:3}`), which keeps every key in one slot (see `redis_pool`).

use serde::Serialize;

/// Bits per block: a 64-byte cache line.
pub const BLOCK_BITS: u64 = 512;

/// The shape of one period's filter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Plan {
    /// Keys the filter is designed for.
    pub expected_keys: u64,
    /// Target false-positive rate at `expected_keys`.
    pub fp_target: f64,
    /// Bits per key chosen for the blocked layout (the textbook formula is [`Plan::formula_bits_per_key`]).
    pub bits_per_key: f64,
    /// Hash functions (bits set per key).
    pub hashes: u32,
    pub shards: u64,
    /// Blocks per shard; every shard has the same number.
    pub blocks_per_shard: u64,
    /// The blocked false-positive rate at `expected_keys`, from the model.
    pub fp_at_capacity: f64,
}

impl Plan {
    /// Sizes a filter for `expected_keys` at `fp_target`, in shards of at most `max_shard_bytes`.
    ///
    /// Redis keeps each shard as one string in one allocation of its allocator (jemalloc), which rounds a large
    /// allocation up to a size class (four per doubling: 4, 5, 6, 7, 8 MiB, …). A shard that misses a class by a
    /// little costs up to a quarter more memory than it holds. So the shard size is chosen among the classes (less a
    /// block, for the string's header), with as many shards as it takes, to spend the least memory in all.
    pub fn new(expected_keys: u64, fp_target: f64, max_shard_bytes: u64) -> Plan {
        let n = expected_keys.max(1);
        let (bits_per_key, hashes) = blocked_bits_per_key(fp_target);
        let blocks = ((n as f64 * bits_per_key) / BLOCK_BITS as f64).ceil().max(1.0) as u64;
        let block_bytes = BLOCK_BITS / 8;
        let candidates: Vec<(u64, u64, u64)> = size_classes(max_shard_bytes.max(2 * block_bytes))
            .into_iter()
            .filter_map(|class| {
                let per_shard = class / block_bytes - 1;
                (per_shard > 0).then(|| (blocks.div_ceil(per_shard), per_shard, class))
            })
            .collect();
        // Within 2% of the least memory, the fewest shards (fewer commands per round trip); a shard fills its
        // class, since those bits are paid for anyway.
        // Saturating: `config` bounds the keys far below an overflow, but a plan is never a panic.
        let least = candidates.iter().map(|&(n, _, class)| n.saturating_mul(class)).min().unwrap_or(0);
        let (shards, blocks_per_shard) = candidates
            .iter()
            .filter(|&&(n, _, class)| n.saturating_mul(class) as f64 <= least as f64 * 1.02)
            .min_by_key(|&&(n, _, class)| (n, n.saturating_mul(class)))
            .map_or((1, blocks), |&(n, per_shard, _)| (n, per_shard));
        let total_bits = shards.saturating_mul(blocks_per_shard).saturating_mul(BLOCK_BITS);
        let fp_at_capacity = blocked_fp(total_bits as f64 / n as f64, hashes);
        Plan { expected_keys: n, fp_target, bits_per_key, hashes, shards, blocks_per_shard, fp_at_capacity }
    }

    pub fn total_bits(&self) -> u64 {
        self.shards.saturating_mul(self.blocks_per_shard).saturating_mul(BLOCK_BITS)
    }

    pub fn shard_bytes(&self) -> u64 {
        self.blocks_per_shard * BLOCK_BITS / 8
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bits() / 8
    }

    /// The textbook Bloom bits per key for the target rate: `-ln p / ln² 2`.
    pub fn formula_bits_per_key(&self) -> f64 {
        formula_bits_per_key(self.fp_target)
    }

    /// The blocked false-positive rate after `keys` distinct keys.
    pub fn fp_at(&self, keys: f64) -> f64 {
        if keys <= 0.0 { 0.0 } else { blocked_fp(self.total_bits() as f64 / keys, self.hashes) }
    }

    /// Distinct keys estimated from the number of set bits (the standard fill estimator).
    pub fn estimate_keys(&self, set_bits: u64) -> f64 {
        let m = self.total_bits() as f64;
        let x = (set_bits as f64).min(m - 1.0);
        -(m / f64::from(self.hashes)) * (1.0 - x / m).ln()
    }

    /// Where the key with this digest lives: shard, and the bit offsets (within the shard) of its `hashes` bits.
    pub fn locate(&self, digest: u128) -> Location {
        let lo = digest as u64;
        let total_blocks = self.shards * self.blocks_per_shard;
        // Multiply-shift maps the 64-bit hash onto the blocks without a modulo's bias.
        let block = ((u128::from(lo) * u128::from(total_blocks)) >> 64) as u64;
        let shard = block / self.blocks_per_shard;
        let base = (block % self.blocks_per_shard) * BLOCK_BITS;
        let mut bits = [0u64; MAX_HASHES as usize];
        let mut state = (digest >> 64) as u64;
        let mut word = 0u64;
        for (i, bit) in bits.iter_mut().take(self.hashes as usize).enumerate() {
            // Seven 9-bit positions per 64-bit word of a splitmix64 stream over the digest's high half.
            if i % 7 == 0 {
                word = splitmix64(&mut state);
            }
            *bit = base + ((word >> (9 * (i % 7))) & (BLOCK_BITS - 1));
        }
        Location { shard, bits, hashes: self.hashes as usize }
    }
}

/// jemalloc's size classes from 128 bytes up to `max`: 2^k, and 2^k plus one, two or three quarters of it.
fn size_classes(max: u64) -> Vec<u64> {
    let max = max.min(1 << 40);
    let mut out = Vec::new();
    let mut base = 128u64;
    while base <= max {
        for quarter in 0..4 {
            let class = base + quarter * (base / 4);
            if class <= max {
                out.push(class);
            }
        }
        base = base.saturating_mul(2);
    }
    out
}

/// At most this many hash functions: beyond it a blocked filter gains nothing.
pub const MAX_HASHES: u32 = 16;

/// One key's place in a filter.
#[derive(Debug, Clone, Copy)]
pub struct Location {
    pub shard: u64,
    bits: [u64; MAX_HASHES as usize],
    hashes: usize,
}

impl Location {
    pub fn bits(&self) -> &[u64] {
        &self.bits[..self.hashes]
    }

    /// The block (within the shard) that holds all of the key's bits.
    /// The mask with one bit per hash, as [`Location::bits`] orders them.
    pub fn all_bits_mask(&self) -> u16 {
        ((1u32 << self.hashes) - 1) as u16
    }

    pub fn block(&self) -> u64 {
        self.bits[0] / BLOCK_BITS
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn formula_bits_per_key(fp: f64) -> f64 {
    -fp.ln() / std::f64::consts::LN_2.powi(2)
}

/// The false-positive rate of a 512-bit blocked Bloom filter with `bits_per_key` and `hashes`: a key lands in a
/// block holding j other keys with probability Poisson(512 / bits_per_key), and is a false positive if all its
/// bits are among those set.
pub fn blocked_fp(bits_per_key: f64, hashes: u32) -> f64 {
    let lambda = BLOCK_BITS as f64 / bits_per_key;
    let k = f64::from(hashes);
    let miss = 1.0 - 1.0 / BLOCK_BITS as f64;
    let upper = (lambda + 12.0 * lambda.sqrt() + 30.0) as u64;
    let mut sum = 0.0;
    let mut log_p = -lambda; // ln P(j = 0)
    for j in 0..=upper {
        if j > 0 {
            log_p += lambda.ln() - (j as f64).ln();
        }
        let fill = 1.0 - miss.powf(k * j as f64);
        sum += log_p.exp() * fill.powf(k);
    }
    sum
}

/// The fewest bits per key (in steps of 1/20) whose blocked rate meets `fp`, and the best hash count there.
fn blocked_bits_per_key(fp: f64) -> (f64, u32) {
    let fp = fp.clamp(1e-9, 0.5);
    let mut bits = formula_bits_per_key(fp).max(1.0);
    loop {
        let (best_k, best_fp) = (1..=MAX_HASHES)
            .map(|k| (k, blocked_fp(bits, k)))
            .fold((1, f64::MAX), |a, b| if b.1 < a.1 { b } else { a });
        if best_fp <= fp || bits > 200.0 {
            return (bits, best_k);
        }
        bits += 0.05;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_stays_near_the_formula_and_respects_the_shard_limit() {
        let plan = Plan::new(100_000_000, 0.001, 128 << 20);
        let formula = plan.formula_bits_per_key();
        assert!((14.3..14.5).contains(&formula), "{formula}");
        assert!(plan.bits_per_key >= formula && plan.bits_per_key <= formula * 1.10, "{plan:?}");
        assert!(plan.fp_at_capacity <= 0.001, "{plan:?}");
        assert!(plan.shard_bytes() <= 128 << 20, "{plan:?}");
        // Shards fill an allocator size class (less one block for the string's header): memory stays near the
        // bits the filter needs.
        let class = plan.shard_bytes() + 64;
        assert!(size_classes(128 << 20).contains(&class), "{plan:?}");
        let needed = plan.expected_keys as f64 * plan.bits_per_key / 8.0;
        let allocated = (plan.shards * class) as f64;
        assert!(allocated / needed < 1.03, "allocated {allocated} for {needed}: {plan:?}");
        let one = Plan::new(10, 0.01, 128 << 20);
        assert_eq!((one.shards, one.blocks_per_shard), (1, 1));
    }

    #[test]
    fn the_largest_plans_the_config_allows_are_sized_not_overflowed() {
        use crate::config::{MAX_EXPECTED_KEYS, MAX_SHARD_MIB, MIN_FALSE_POSITIVE_RATE};
        let plan = Plan::new(MAX_EXPECTED_KEYS, MIN_FALSE_POSITIVE_RATE, MAX_SHARD_MIB << 20);
        assert!(plan.shard_bytes() <= MAX_SHARD_MIB << 20, "{plan:?}");
        let needed = MAX_EXPECTED_KEYS as f64 * plan.formula_bits_per_key() / 8.0;
        assert!(plan.total_bytes() as f64 >= needed, "{plan:?}");
        // Beyond what the config allows, a plan still ends (saturated) rather than panicking.
        let absurd = Plan::new(u64::MAX, 0.001, 1);
        assert!(absurd.shards > 0, "{absurd:?}");
    }

    #[test]
    fn the_model_matches_a_real_blocked_filter() {
        // Fill an in-memory bit array exactly as Redis would be filled, and count false positives on fresh keys.
        let plan = Plan::new(200_000, 0.01, 1 << 20);
        let mut bits = vec![0u64; (plan.total_bits() / 64) as usize];
        let key = |i: u64| {
            let h = blake3::hash(&i.to_le_bytes());
            u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
        };
        let per_shard = plan.blocks_per_shard * BLOCK_BITS;
        for i in 0..plan.expected_keys {
            let loc = plan.locate(key(i));
            assert!(loc.shard < plan.shards);
            for &b in loc.bits() {
                let at = loc.shard * per_shard + b;
                bits[(at / 64) as usize] |= 1 << (at % 64);
            }
        }
        for i in 0..plan.expected_keys {
            let loc = plan.locate(key(i));
            assert!(loc.bits().iter().all(|&b| {
                let at = loc.shard * per_shard + b;
                bits[(at / 64) as usize] & (1 << (at % 64)) != 0
            }));
        }
        let probes = 200_000u64;
        let fp = (0..probes)
            .filter(|i| {
                let loc = plan.locate(key(plan.expected_keys + i));
                loc.bits().iter().all(|&b| {
                    let at = loc.shard * per_shard + b;
                    bits[(at / 64) as usize] & (1 << (at % 64)) != 0
                })
            })
            .count() as f64
            / probes as f64;
        assert!(fp < 0.013 && fp > 0.006, "measured {fp}, model {}", plan.fp_at_capacity);
        let set: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
        let est = plan.estimate_keys(set);
        assert!((est / plan.expected_keys as f64 - 1.0).abs() < 0.05, "estimated {est}");
    }
}
