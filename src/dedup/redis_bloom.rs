//! `redis-bloom`: the server's own Bloom filters (`BF.RESERVE … NONSCALING`, `BF.MEXISTS`, `BF.MADD`, `BF.INFO`),
//! for Redis 8, Redis Stack, valkey-bloom and Azure Managed Redis. One filter per business-date period, reserved
//! for the configured keys and false-positive rate. Items are the 16-byte key digests.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use redis::Value;

use super::redis_pool::{GENERATION, RedisPool};
use super::{DedupError, DedupKey, DedupStore, PartitionStats};
use crate::config::{DedupConfig, DedupPeriod};

pub struct RedisBloom {
    pool: RedisPool,
    period: DedupPeriod,
    capacity: u64,
    fp: f64,
    keys_per_round_trip: usize,
    reserved: Mutex<HashSet<String>>,
    why: String,
}

impl RedisBloom {
    /// Whether the server knows `BF.MADD` (`COMMAND INFO` answers nil for an unknown command).
    pub(super) async fn server_has_bloom(pool: &RedisPool) -> Result<bool, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("COMMAND").arg("INFO").arg("BF.MADD");
        let (info,): (Vec<Value>,) = pool.query(&pipe).await?;
        Ok(info.first().is_some_and(|v| !matches!(v, Value::Nil)))
    }

    pub(super) async fn open(pool: RedisPool, config: &DedupConfig, why: &str) -> Result<Self, DedupError> {
        pool.generation().await?;
        Ok(RedisBloom {
            pool,
            period: config.period,
            capacity: config.expected_keys_per_period,
            fp: config.false_positive_rate,
            keys_per_round_trip: config.keys_per_round_trip,
            reserved: Mutex::new(HashSet::new()),
            why: why.to_owned(),
        })
    }

    pub(super) fn pool(&self) -> &RedisPool {
        &self.pool
    }

    fn filter_key(&self, label: &str) -> String {
        self.pool.key(&format!("bfm:{{{label}}}"))
    }

    /// Reserves the period's filter once (a filter that already exists keeps its shape).
    async fn ensure(&self, label: &str) -> Result<(), DedupError> {
        if self.reserved.lock().is_ok_and(|r| r.contains(label)) {
            return Ok(());
        }
        let key = self.filter_key(label);
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&key);
        pipe.cmd("SADD").arg(self.pool.key("dedup:partitions")).arg(label).ignore();
        let (exists,): (bool,) = self.pool.query(&pipe).await?;
        if !exists {
            let mut pipe = redis::pipe();
            pipe.cmd("BF.RESERVE").arg(&key).arg(self.fp).arg(self.capacity).arg("NONSCALING");
            match self.pool.query::<()>(&pipe).await {
                Ok(()) => {}
                // Another worker reserved it first.
                Err(DedupError::Redis { error, .. }) if error.contains("exists") => {}
                Err(e) => return Err(e),
            }
        }
        if let Ok(mut r) = self.reserved.lock() {
            r.insert(label.to_owned());
        }
        Ok(())
    }

    async fn run(&self, keys: &[DedupKey], add: bool) -> Result<Vec<bool>, DedupError> {
        let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_label.entry(self.period.label(k.date)).or_default().push(i);
        }
        let mut out = vec![false; keys.len()];
        for (label, idx) in by_label {
            self.ensure(&label).await?;
            let key = self.filter_key(&label);
            for chunk in idx.chunks(self.keys_per_round_trip.max(1)) {
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(self.pool.key(GENERATION));
                let cmd = pipe.cmd(if add { "BF.MADD" } else { "BF.MEXISTS" }).arg(&key);
                for &i in chunk {
                    cmd.arg(&keys[i].digest.to_le_bytes()[..]);
                }
                let (generation, flags): (Option<String>, Vec<bool>) = self.pool.query(&pipe).await?;
                if !add {
                    self.pool.check_generation(generation)?;
                    for (&i, f) in chunk.iter().zip(flags) {
                        out[i] = f;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl DedupStore for RedisBloom {
    async fn contains(&self, keys: &[DedupKey]) -> Result<Vec<bool>, DedupError> {
        self.run(keys, false).await
    }

    async fn add(&self, keys: &[DedupKey]) -> Result<(), DedupError> {
        self.run(keys, true).await.map(drop)
    }

    async fn mark_applied(&self, commits: &[String]) -> Result<(), DedupError> {
        self.pool.mark_applied(commits).await
    }

    async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        self.pool.applied(commits).await
    }

    async fn stats(&self) -> Result<Vec<PartitionStats>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.pool.key("dedup:partitions"));
        let (mut labels,): (Vec<String>,) = self.pool.query(&pipe).await?;
        labels.sort();
        let mut out = Vec::new();
        for label in labels {
            let mut pipe = redis::pipe();
            pipe.cmd("BF.INFO").arg(self.filter_key(&label));
            let (info,): (Vec<Value>,) = self.pool.query(&pipe).await?;
            let field = |name: &str| {
                info.chunks(2).find_map(|pair| match pair {
                    [Value::SimpleString(k), Value::Int(v)] if k.eq_ignore_ascii_case(name) => Some(*v as u64),
                    [Value::BulkString(k), Value::Int(v)] if String::from_utf8_lossy(k).eq_ignore_ascii_case(name) => {
                        Some(*v as u64)
                    }
                    _ => None,
                })
            };
            let items = field("Number of items inserted").unwrap_or(0);
            let capacity = field("Capacity").unwrap_or(self.capacity);
            let ratio = items as f64 / capacity.max(1) as f64;
            out.push(PartitionStats {
                partition: label,
                adds: items,
                estimated_keys: items as f64,
                capacity,
                fill: ratio,
                fp_now: standard_fp(self.fp, capacity, items),
                memory_bytes: field("Size").unwrap_or(0),
                over_capacity: items > capacity,
            });
        }
        Ok(out)
    }

    fn exact(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!(
            "redis-bloom at {} ({}): BF.* filter per {:?} period, {} keys at {} false positives",
            self.pool.url(),
            self.why,
            self.period,
            self.capacity,
            self.fp
        )
    }
}

/// The false-positive rate of a standard Bloom filter reserved for `capacity` keys at `fp`, holding `items`:
/// m/capacity = -ln fp / ln² 2 bits per key, k = -log2 fp hashes, rate (1 - e^(-k·n/m))^k.
fn standard_fp(fp: f64, capacity: u64, items: u64) -> f64 {
    let bits = -fp.ln() / std::f64::consts::LN_2.powi(2) * capacity.max(1) as f64;
    let k = (-fp.log2()).ceil().max(1.0);
    (1.0 - (-k * items as f64 / bits).exp()).powf(k)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_standard_rate_meets_the_target_at_capacity() {
        let at = super::standard_fp(0.001, 1_000_000, 1_000_000);
        assert!(at > 0.0008 && at < 0.0012, "{at}");
        assert!(super::standard_fp(0.001, 1_000_000, 500_000) < 0.0001);
    }
}
