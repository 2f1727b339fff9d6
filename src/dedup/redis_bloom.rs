//! `redis-bloom`: the server's own Bloom filters (`BF.INSERT … NONSCALING`, `BF.MEXISTS`, `BF.INFO`), for Redis 8,
//! Redis Stack, valkey-bloom and Azure Managed Redis. One filter per business-date period, created for the configured
//! keys and false-positive rate. Items are the 16-byte key digests.
//!
//! A non-scaling filter refuses new items once it holds its capacity ("non scaling filter is full"). A period that
//! passes its design capacity goes on in a further filter (`…:2`, `…:3`), so that the ingest never stops for it:
//! checks ask every filter of the period, adds go to the newest. As in a scalable Bloom filter, each further filter
//! holds twice the keys of the one before at half its false-positive rate, so a period needs few of them and its
//! rate stays below twice the configured one. The period's filter count lives in Redis and is read with every check,
//! so that no worker checks fewer filters than another has added to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use redis::Value;

use super::redis_pool::{Layout, Periods, RedisPool};
use super::{DedupError, DedupKey, DedupStore, Holding, PartitionStats};
use crate::config::{DedupConfig, DedupPeriod};

/// Raises a period's filter count (field ARGV[1] of hash KEYS[1]; absent means one) to ARGV[2], never lowers it;
/// answers the count.
const RAISE_COUNT: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '1')
local want = tonumber(ARGV[2])
if n < want then
  redis.call('HSET', KEYS[1], ARGV[1], want)
  return want
end
return n
";

/// The most filters one period may grow to: with capacities doubling, 2^64 times its design capacity, which no
/// period reaches; the bound only keeps a damaged count from making every check ask without end.
const MAX_FILTERS: u32 = 64;

pub struct RedisBloom {
    pool: RedisPool,
    period: DedupPeriod,
    capacity: u64,
    fp: f64,
    keys_per_round_trip: usize,
    /// Filters per period as last read from Redis (absent: one).
    filters: Mutex<HashMap<String, u32>>,
    why: String,
}

impl RedisBloom {
    /// Whether the server knows `BF.MADD` (`COMMAND INFO` answers nil for an unknown command). On a cluster any node
    /// answers: a cluster's nodes load the same modules.
    pub(super) async fn server_has_bloom(pool: &RedisPool) -> Result<bool, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("COMMAND").arg("INFO").arg("BF.MADD");
        let (info,): (Vec<Value>,) = pool.query(&pipe).await?;
        Ok(info.first().is_some_and(|v| !matches!(v, Value::Nil)))
    }

    pub(super) fn open(pool: RedisPool, config: &DedupConfig, why: &str) -> Self {
        RedisBloom {
            pool,
            period: config.period,
            capacity: config.expected_keys_per_period,
            fp: config.false_positive_rate,
            keys_per_round_trip: config.keys_per_round_trip,
            filters: Mutex::new(HashMap::new()),
            why: why.to_owned(),
        }
    }

    /// The period this store's filters are partitioned by (the one the store was made with).
    pub(super) fn period(&self) -> DedupPeriod {
        self.period
    }

    pub(super) fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// Filter `n` (from 1) of a period. The hash tag keeps a period's filters in one cluster slot.
    fn filter_key(&self, label: &str, n: u32) -> String {
        match n {
            0 | 1 => self.pool.key(&format!("bfm:{{{label}}}")),
            n => self.pool.key(&format!("bfm:{{{label}}}:{n}")),
        }
    }

    /// The hash that holds `label`'s filter count (field `label`): one for every period, or spread by period, one
    /// per period, in the period's slot.
    fn counts_key(&self, label: &str) -> String {
        match self.pool.layout() {
            Layout::OneSlot => self.pool.key("dedup:bloom-filters"),
            Layout::ByPeriod => self.pool.key(&format!("dedup:{{{label}}}:bloom-filters")),
        }
    }

    fn known_filters(&self, label: &str) -> u32 {
        self.filters.lock().ok().and_then(|f| f.get(label).copied()).unwrap_or(1)
    }

    /// Filter `n`'s shape: the design capacity doubled and the false-positive rate halved per filter before it.
    fn shape(&self, n: u32) -> (u64, f64) {
        let step = n.saturating_sub(1).min(62);
        (self.capacity.saturating_mul(1 << step), self.fp / f64::from(2u32).powi(step as i32))
    }

    fn learn(&self, label: &str, n: u32) {
        if let Ok(mut f) = self.filters.lock() {
            let known = f.entry(label.to_owned()).or_insert(1);
            *known = (*known).max(n);
        }
    }

    fn unexpected(&self, what: &str, reply: &Value) -> DedupError {
        DedupError::Redis { url: self.pool.url().to_owned(), error: format!("unexpected answer to {what}: {reply:?}") }
    }

    /// Whether each key is in any of its period's filters.
    async fn check(&self, label: &str, chunk: &[usize], keys: &[DedupKey], out: &mut [bool]) -> Result<(), DedupError> {
        let mut n = self.known_filters(label);
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(self.pool.generation_key(label));
            pipe.cmd("HGET").arg(self.counts_key(label)).arg(label);
            for f in 1..=n {
                let cmd = pipe.cmd("BF.MEXISTS").arg(self.filter_key(label, f));
                for &i in chunk {
                    cmd.arg(&keys[i].digest.to_le_bytes()[..]);
                }
            }
            let replies: Vec<Value> = self.pool.query(&pipe).await?;
            let mut replies = replies.into_iter();
            let generation = replies.next().unwrap_or(Value::Nil);
            let generation: Option<String> =
                redis::from_redis_value(generation.clone()).map_err(|_| self.unexpected("GET", &generation))?;
            if let Err(lost) = self.pool.check_generation(generation) {
                // The counts went with the filters: the keys added back start again at the first filter.
                if let Ok(mut f) = self.filters.lock() {
                    f.clear();
                }
                return Err(lost);
            }
            let count = replies.next().unwrap_or(Value::Nil);
            let count = match &count {
                Value::Nil => 1,
                other => redis::from_redis_value::<u32>(other.clone()).map_err(|_| self.unexpected("HGET", other))?,
            };
            if count > MAX_FILTERS {
                return Err(self.damaged(label, count));
            }
            if count > n {
                // Another worker has started a further filter since: ask that one too.
                self.learn(label, count);
                n = count;
                continue;
            }
            for reply in replies {
                let flags: Vec<bool> =
                    redis::from_redis_value(reply.clone()).map_err(|_| self.unexpected("BF.MEXISTS", &reply))?;
                if flags.len() != chunk.len() {
                    return Err(self.unexpected("BF.MEXISTS", &reply));
                }
                for (&i, seen) in chunk.iter().zip(flags) {
                    out[i] |= seen;
                }
            }
            return Ok(());
        }
    }

    /// Adds keys to their period's newest filter, going on in a further one when it is full.
    async fn insert(&self, label: &str, chunk: &[usize], keys: &[DedupKey]) -> Result<(), DedupError> {
        let mut pending = chunk.to_vec();
        let mut n = self.known_filters(label);
        loop {
            let (capacity, fp) = self.shape(n);
            let mut pipe = redis::pipe();
            // Per-item errors ("full") come back inside the answer instead of failing the round trip.
            pipe.ignore_errors();
            if self.pool.layout() == Layout::OneSlot {
                pipe.cmd("SADD").arg(self.pool.partitions_key()).arg(label).ignore();
            }
            // The count first, so that no check reads fewer filters than the one these keys go to.
            pipe.cmd("EVAL").arg(RAISE_COUNT).arg(1).arg(self.counts_key(label)).arg(label).arg(n);
            // `BF.INSERT` creates a missing filter with the configured shape (after a wipe too), where `BF.MADD`
            // would create the module's default one.
            let cmd = pipe
                .cmd("BF.INSERT")
                .arg(self.filter_key(label, n))
                .arg("CAPACITY")
                .arg(capacity)
                .arg("ERROR")
                .arg(fp)
                .arg("NONSCALING")
                .arg("ITEMS");
            for &i in &pending {
                cmd.arg(&keys[i].digest.to_le_bytes()[..]);
            }
            let replies = self.pool.query_answers(&pipe).await?;
            let [count, taken] =
                <[Value; 2]>::try_from(replies).map_err(|r| self.unexpected("EVAL and BF.INSERT", &Value::Array(r)))?;
            let count = match &count {
                Value::Int(c) => u32::try_from(*c).unwrap_or(u32::MAX),
                other => return Err(self.redis_error_or("EVAL", other)),
            };
            if count > MAX_FILTERS {
                return Err(self.damaged(label, count));
            }
            let refused = self.refused(&taken, &pending)?;
            if refused.is_empty() {
                self.learn(label, count.max(n));
                return Ok(());
            }
            let next = count.max(n + 1);
            if next > MAX_FILTERS {
                return Err(self.damaged(label, next));
            }
            tracing::warn!(partition = %label, filter = n, next, next_capacity = self.shape(next).0,
                design_capacity = self.capacity,
                "dedup filter partition passed its design capacity: its keys go on in a further filter, twice as \
                 large; false positives (quarantined, never lost) will rise");
            self.learn(label, next);
            n = next;
            pending = refused;
        }
    }

    /// The keys `BF.INSERT` did not take because the filter is full. RedisBloom and valkey-bloom answer the first
    /// such item with an error and leave the rest out; an error for each is read the same way.
    fn refused(&self, taken: &Value, pending: &[usize]) -> Result<Vec<usize>, DedupError> {
        let Value::Array(items) = taken else { return Err(self.redis_error_or("BF.INSERT", taken)) };
        let mut refused = Vec::new();
        let mut full = false;
        for (j, &i) in pending.iter().enumerate() {
            match items.get(j) {
                // Taken (1), or there already (0, answered even by a full filter).
                Some(Value::Int(_) | Value::Boolean(_)) => {}
                Some(Value::ServerError(e)) if e.details().unwrap_or(e.code()).contains("full") => {
                    full = true;
                    refused.push(i);
                }
                None if full => refused.push(i),
                Some(other) => return Err(self.redis_error_or("BF.INSERT", other)),
                None => return Err(self.unexpected("BF.INSERT", taken)),
            }
        }
        Ok(refused)
    }

    /// A filter count past any a period's keys could need.
    fn damaged(&self, label: &str, count: u32) -> DedupError {
        DedupError::Redis {
            url: self.pool.url().to_owned(),
            error: format!(
                "period {label} counts {count} Bloom filters, past the {MAX_FILTERS} its keys could ever need: the \
                 count in {} is damaged",
                self.counts_key(label)
            ),
        }
    }

    fn redis_error_or(&self, what: &str, reply: &Value) -> DedupError {
        match reply {
            Value::ServerError(e) => {
                DedupError::Redis { url: self.pool.url().to_owned(), error: format!("{what}: {e}") }
            }
            other => self.unexpected(what, other),
        }
    }

    async fn run(&self, keys: &[DedupKey], add: bool) -> Result<Vec<bool>, DedupError> {
        let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_label.entry(self.period.label(k.date)).or_default().push(i);
        }
        // Spread by period, each period's generation is made (or checked) on first use, and the period listed.
        self.pool.enter(&by_label.keys().cloned().collect::<Vec<_>>()).await?;
        let mut out = vec![false; keys.len()];
        for (label, idx) in by_label {
            for chunk in idx.chunks(self.keys_per_round_trip.max(1)) {
                if add {
                    self.insert(&label, chunk, keys).await?;
                } else {
                    self.check(&label, chunk, keys, &mut out).await?;
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

    async fn mark_applied(&self, commits: &[String], holding: Holding<'_>) -> Result<(), DedupError> {
        let labels = holding.labels(self.period);
        let periods = labels.as_deref().map_or(Periods::All, Periods::These);
        self.pool.mark_applied(commits, periods).await
    }

    async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        self.pool.applied(commits).await
    }

    /// One row per period, its filters summed: keys and memory added up, the false-positive rate a new key meets
    /// in any of them.
    async fn stats(&self) -> Result<Vec<PartitionStats>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.pool.partitions_key());
        let (mut labels,): (Vec<String>,) = self.pool.query(&pipe).await?;
        labels.sort();
        let mut counts: HashMap<String, u32> = HashMap::new();
        let count_keys: std::collections::BTreeSet<String> = labels.iter().map(|l| self.counts_key(l)).collect();
        for key in count_keys {
            let (found,): (HashMap<String, u32>,) = self.pool.query(redis::pipe().cmd("HGETALL").arg(key)).await?;
            counts.extend(found);
        }
        let mut out = Vec::new();
        for label in labels {
            let filters = counts.get(&label).copied().unwrap_or(1).clamp(1, MAX_FILTERS);
            let mut pipe = redis::pipe();
            // A filter a wipe removed answers an error: it counts as empty.
            pipe.ignore_errors();
            for f in 1..=filters {
                pipe.cmd("BF.INFO").arg(self.filter_key(&label, f));
            }
            let infos = self.pool.query_answers(&pipe).await?;
            let (mut items, mut memory, mut none_seen) = (0u64, 0u64, 1.0f64);
            for (info, f) in infos.iter().zip(1..) {
                let Value::Array(info) = info else { continue };
                let field = |name: &str| {
                    info.chunks(2).find_map(|pair| match pair {
                        [Value::SimpleString(k), Value::Int(v)] if k.eq_ignore_ascii_case(name) => Some(*v as u64),
                        [Value::BulkString(k), Value::Int(v)]
                            if String::from_utf8_lossy(k).eq_ignore_ascii_case(name) =>
                        {
                            Some(*v as u64)
                        }
                        _ => None,
                    })
                };
                let held = field("Number of items inserted").unwrap_or(0);
                let (planned, fp) = self.shape(f);
                let capacity = field("Capacity").unwrap_or(planned);
                items += held;
                memory += field("Size").unwrap_or(0);
                none_seen *= 1.0 - standard_fp(fp, capacity, held);
            }
            out.push(PartitionStats {
                partition: label,
                adds: items,
                estimated_keys: items as f64,
                capacity: self.capacity,
                fill: items as f64 / self.capacity.max(1) as f64,
                fp_now: 1.0 - none_seen,
                memory_bytes: memory,
                over_capacity: items > self.capacity,
                primary: None,
                claims: 0,
            });
        }
        let primaries = self.pool.primaries_of(&out.iter().map(|p| p.partition.clone()).collect::<Vec<_>>()).await?;
        for (p, primary) in out.iter_mut().zip(primaries) {
            p.primary = primary;
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
