//! Dedup: which transaction keys the lake already holds, behind one trait with three stores.
//!
//! - [`embedded`]: an exact in-process set persisted in the lake (the default; no server).
//! - [`redis_bitmap`]: a blocked Bloom filter in plain Redis strings, sharded with hash tags; runs on any
//!   Redis-protocol server (Redis 6+, Valkey, Azure Cache for Redis, ElastiCache).
//! - [`redis_bloom`]: the `BF.*` commands of Redis 8 / Redis Stack / valkey-bloom.
//!
//! The protocol that keeps dedup exact across crashes lives with the ingest (`ingest::commit`): a key is added only
//! after the data carrying it is committed, each commit is then marked *applied* in the store, and a start-up (or a
//! store that lost its state) re-adds the keys of every committed batch the store has not marked. A Bloom
//! "probably seen" never drops a sale: it goes to the `sales_duplicates` quarantine, which `poslake reconcile`
//! verifies exactly.

pub mod bench;
pub mod bloom;
pub mod embedded;
mod file_index;
pub mod redis_bitmap;
pub mod redis_bloom;
mod redis_files;
pub(crate) mod redis_pool;

use std::future::Future;
use std::path::Path;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::config::{DedupBackend, DedupConfig, DedupPeriod};
use crate::model::TransactionKey;
pub use bloom::Plan;
pub use embedded::EmbeddedDedup;
pub use file_index::{FileIndex, SyncMark};
pub use redis_bitmap::RedisBitmap;
pub use redis_bloom::RedisBloom;
pub use redis_files::{FileIndexStats, LedgerMark, Vouch};
use redis_pool::RedisPool;

/// Digest of a transaction key: the first 16 bytes of BLAKE3 over its canonical text.
pub type KeyDigest = u128;

pub fn digest(key: &TransactionKey) -> KeyDigest {
    let hash = blake3::hash(key.canonical().as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// A key as the stores see it: its digest, and its business date (which picks the filter partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub digest: KeyDigest,
    pub date: NaiveDate,
}

impl DedupKey {
    pub fn of(key: &TransactionKey) -> Self {
        DedupKey { digest: digest(key), date: key.business_date }
    }
}

impl DedupPeriod {
    /// The partition label of a business date: `2026-11` for a month.
    pub fn label(self, date: NaiveDate) -> String {
        match self {
            DedupPeriod::Day => date.format("%Y-%m-%d").to_string(),
            DedupPeriod::Month => format!("{:04}-{:02}", date.year(), date.month()),
            DedupPeriod::Year => format!("{:04}", date.year()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("dedup store {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("Redis at {url} unreachable for {secs:.0} s, past the limit of {limit_secs} s: {last}")]
    Unavailable { url: String, secs: f64, limit_secs: u64, last: String },
    /// A drain (a signal) ended the wait for an unreachable Redis; what the caller held is left for the next run.
    #[error("stopped by a signal while waiting {secs:.0} s for Redis at {url}, which was unreachable: {last}")]
    Interrupted { url: String, secs: f64, last: String },
    #[error("Redis at {url}: {error}")]
    Redis { url: String, error: String },
    /// A signal stopped the work before its end (what it wrote is left as a kill would leave it, or undone).
    #[error("stopped by a signal: {0}")]
    Stopped(String),
    /// The store no longer holds what it held when this process started (a Redis restarted without
    /// persistence, or flushed): the keys of committed batches must be re-added before going on.
    #[error("the dedup store lost its state (generation {expected} is now {found})")]
    StateLost { expected: String, found: String },
    #[error("dedup configuration: {0}")]
    Config(String),
    #[error(
        "the embedded dedup store at {0} is open in another process (an ingest, or a maintain, reconcile or dedup \
         command, still running); several workers on one lake share a Redis store instead"
    )]
    InUse(std::path::PathBuf),
    #[error(
        "the embedded dedup store at {path} cannot be written ({source}): it is opened for writing even to be read \
         (fjall has no read-only mode). Run this where the lake is writable, or on a writable copy of the lake at the \
         same path (its metadata names files by absolute path); poslake tables and poslake query read a read-only lake"
    )]
    NotWritable { path: std::path::PathBuf, source: std::io::Error },
}

/// One filter partition's health, for `poslake dedup stats`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStats {
    pub partition: String,
    /// Keys added (counted by adds: a key re-added in recovery counts again).
    pub adds: u64,
    /// Distinct keys estimated from the filter's fill (exact for the embedded store).
    pub estimated_keys: f64,
    pub capacity: u64,
    /// Fraction of the filter's bits set (`redis-bloom`: keys held over the design capacity, as the module does not
    /// say how many bits are set).
    pub fill: f64,
    /// The false-positive rate a new key meets now.
    pub fp_now: f64,
    pub memory_bytes: u64,
    pub over_capacity: bool,
    /// On a Redis Cluster spread by period, the primary that serves the partition now (`host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Keys claimed in flight in the partition's period by workers of several (see `ingest::claims`), ended or not
    /// run out yet; 0 for the embedded store, which has none.
    pub claims: u64,
}

/// What the keys of commits being marked applied are, so that a store that keeps its marks beside its filters (a
/// Redis Cluster spread by period) marks every place the keys went.
#[derive(Debug, Clone, Copy)]
pub enum Holding<'a> {
    /// The commits' keys are among these.
    Keys(&'a [DedupKey]),
    /// Keys of any period the store holds: a reload of every row, the marker of an expired history.
    Everything,
}

impl Holding<'_> {
    /// The distinct period labels of the keys (`None`: every period).
    fn labels(&self, period: DedupPeriod) -> Option<Vec<String>> {
        match self {
            Holding::Keys(keys) => {
                let dates: std::collections::BTreeSet<NaiveDate> = keys.iter().map(|k| k.date).collect();
                let labels: std::collections::BTreeSet<String> = dates.into_iter().map(|d| period.label(d)).collect();
                Some(labels.into_iter().collect())
            }
            Holding::Everything => None,
        }
    }
}

/// What every dedup store does. Adds are idempotent, so any of them may be retried or repeated in recovery.
pub trait DedupStore: Send + Sync {
    /// Whether each key is (probably, for a Bloom filter) already in the store.
    fn contains(&self, keys: &[DedupKey]) -> impl Future<Output = Result<Vec<bool>, DedupError>> + Send;
    /// Adds keys whose data is committed.
    fn add(&self, keys: &[DedupKey]) -> impl Future<Output = Result<(), DedupError>> + Send;
    /// Records that every key of these commits has been added; `holding` says what their keys are.
    fn mark_applied(
        &self,
        commits: &[String],
        holding: Holding<'_>,
    ) -> impl Future<Output = Result<(), DedupError>> + Send;
    /// Which of these commits are recorded as applied.
    fn applied(&self, commits: &[String]) -> impl Future<Output = Result<Vec<bool>, DedupError>> + Send;
    /// Per-partition fill and estimates.
    fn stats(&self) -> impl Future<Output = Result<Vec<PartitionStats>, DedupError>> + Send;
    /// Whether a positive answer is certain (no quarantine needed to be sure).
    fn exact(&self) -> bool;
    /// Which backend runs, and why.
    fn describe(&self) -> String;
}

/// The configured store.
pub enum Dedup {
    Embedded(EmbeddedDedup),
    RedisBitmap(RedisBitmap),
    RedisBloom(RedisBloom),
}

/// How long an open waits for the embedded store while another process holds it: enough for a command that only
/// looks (`dedup stats`, about a second), not for a run (a second ingest is refused after it).
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the embedded store, waiting up to [`IN_USE_WAIT`] while another process holds it: a `dedup stats` run by
/// a monitor made ingests fail at once (an audit saw 8 of 10, and a service stopped after three).
async fn open_embedded(dir: &Path) -> Result<EmbeddedDedup, DedupError> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match EmbeddedDedup::open(dir) {
            Err(DedupError::InUse(_)) if started.elapsed() < IN_USE_WAIT && !crate::drain::requested() => {
                if !std::mem::replace(&mut said, true) {
                    tracing::info!(store = %dir.display(), "the embedded dedup store is held by another poslake process: waiting for it");
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    () = crate::drain::wait() => {}
                }
            }
            other => return other,
        }
    }
}

impl Dedup {
    /// Opens the configured store: the embedded one under `lake/dedup/`, or a Redis one (for `redis`, the Bloom
    /// module when the server has it, else the bitmap filter).
    pub async fn open(config: &DedupConfig, lake: &Path) -> Result<Dedup, DedupError> {
        let store = Self::open_unadopted(config, lake, true).await?;
        if let Some(pool) = store.redis_pool() {
            // Adopts the store's generation (making it on a new store): what every check is held against.
            pool.generation().await?;
        }
        Ok(store)
    }

    /// Opens the configured store only to look at it (`dedup stats`): a Redis store's generation is neither made
    /// nor adopted, so looking at a new store, or at one that lost its state, changes nothing in it.
    pub async fn open_to_read(config: &DedupConfig, lake: &Path) -> Result<Dedup, DedupError> {
        Self::open_unadopted(config, lake, false).await
    }

    /// `record`: the store is opened to write: a Redis server's eviction policy is checked, and a new Redis store
    /// records the period it is made with (see [`RedisPool::store_period`]).
    async fn open_unadopted(config: &DedupConfig, lake: &Path, record: bool) -> Result<Dedup, DedupError> {
        match config.backend {
            DedupBackend::Embedded => Ok(Dedup::Embedded(open_embedded(&lake.join("dedup")).await?)),
            backend => {
                let pool = RedisPool::open(config).await?;
                if record {
                    pool.refuse_evicting_policy().await?;
                }
                let period = pool.store_period(config.period, record).await?;
                let config = &DedupConfig { period, ..config.clone() };
                let has_bloom = RedisBloom::server_has_bloom(&pool).await?;
                match (backend, has_bloom) {
                    (DedupBackend::RedisBloom, false) => Err(DedupError::Config(format!(
                        "backend redis-bloom needs the BF.* commands, which the server at {} does not have \
                         (use redis-bitmap, or redis to choose automatically)",
                        pool.url()
                    ))),
                    (DedupBackend::RedisBloom, true) | (DedupBackend::Redis, true) => {
                        let why = if backend == DedupBackend::Redis {
                            "chosen automatically: the server has the BF.* commands"
                        } else {
                            "configured"
                        };
                        Ok(Dedup::RedisBloom(RedisBloom::open(pool, config, why)))
                    }
                    (_, has_bloom) => {
                        let why = match (backend, has_bloom) {
                            (DedupBackend::Redis, _) => "chosen automatically: the server has no BF.* commands",
                            _ => "configured",
                        };
                        Ok(Dedup::RedisBitmap(RedisBitmap::open(pool, config, why)))
                    }
                }
            }
        }
    }

    /// The store's generation: an identity that changes if the store loses its state.
    pub async fn generation(&self) -> Result<String, DedupError> {
        match self {
            Dedup::Embedded(d) => Ok(d.generation().to_owned()),
            Dedup::RedisBitmap(d) => d.pool().generation().await,
            Dedup::RedisBloom(d) => d.pool().generation().await,
        }
    }

    /// Starts a new generation after the store lost its state (every worker that sees the change recovers).
    pub async fn renew_generation(&self) -> Result<String, DedupError> {
        match self {
            Dedup::Embedded(d) => Ok(d.generation().to_owned()),
            Dedup::RedisBitmap(d) => d.pool().renew_generation().await,
            Dedup::RedisBloom(d) => d.pool().renew_generation().await,
        }
    }

    /// The embedded store, when it is the one in use.
    pub fn as_embedded(&self) -> Option<&EmbeddedDedup> {
        match self {
            Dedup::Embedded(d) => Some(d),
            _ => None,
        }
    }

    /// The Redis connection pool, when the store is a Redis one.
    /// Which lake's ledger the store's file index holds, and how far (see [`FileIndex::lake_record`]); reads only.
    pub async fn lake_record(&self) -> Result<Option<(String, i64)>, DedupError> {
        match self {
            Dedup::Embedded(store) => store.lake_record(),
            Dedup::RedisBitmap(d) => redis_files::RedisFiles::lake_record(d.pool()).await,
            Dedup::RedisBloom(d) => redis_files::RedisFiles::lake_record(d.pool()).await,
        }
    }

    /// Records that the store has seen the lake whose ledger table is `table` up to its sequence number `sequence`
    /// (the highest is kept); see [`Self::lake_record`]. A store whose record names another ledger table is left as
    /// it is, and that table returned: the caller refuses it.
    pub async fn record_lake(&self, table: &str, sequence: i64) -> Result<Option<String>, DedupError> {
        match self {
            Dedup::Embedded(store) => store.record_lake(table, sequence).await,
            Dedup::RedisBitmap(d) => redis_files::RedisFiles::record_lake(d.pool(), table, sequence).await,
            Dedup::RedisBloom(d) => redis_files::RedisFiles::record_lake(d.pool(), table, sequence).await,
        }
    }

    fn redis_pool(&self) -> Option<&RedisPool> {
        match self {
            Dedup::Embedded(_) => None,
            Dedup::RedisBitmap(d) => Some(d.pool()),
            Dedup::RedisBloom(d) => Some(d.pool()),
        }
    }

    /// Whether other processes may share this store (a Redis one): then a reconcile may run beside an ingest, and
    /// the two meet at the reconcile fence.
    pub fn is_shared(&self) -> bool {
        self.redis_pool().is_some()
    }

    /// The period a key's filter partition is labelled by (a shared store's; the embedded store has none).
    fn period(&self) -> Option<DedupPeriod> {
        match self {
            Dedup::Embedded(_) => None,
            Dedup::RedisBitmap(d) => Some(d.period()),
            Dedup::RedisBloom(d) => Some(d.period()),
        }
    }

    /// Claims `keys`, checked as new, for the shares of the staging area that hold them (`owners`, one per key):
    /// whether another owner holds each (see `ingest::claims`). Nothing to claim in the embedded store, which
    /// one process opens at a time.
    pub async fn claim(&self, keys: &[DedupKey], owners: &[&str]) -> Result<Vec<bool>, DedupError> {
        let (Some(pool), Some(period)) = (self.redis_pool(), self.period()) else { return Ok(vec![false; keys.len()]) };
        let (labels, of) = period_labels(period, keys);
        let claims: Vec<(&str, u128, &str)> =
            keys.iter().zip(&of).zip(owners).map(|((k, &l), o)| (labels[l].as_str(), k.digest, *o)).collect();
        pool.claim(&claims).await
    }

    /// Ends the claims on `keys`: the store holds them now, or their batch was given up.
    pub async fn release_claims(&self, keys: &[DedupKey]) -> Result<(), DedupError> {
        let (Some(pool), Some(period)) = (self.redis_pool(), self.period()) else { return Ok(()) };
        let (labels, of) = period_labels(period, keys);
        let claims: Vec<(&str, u128)> = keys.iter().zip(&of).map(|(k, &l)| (labels[l].as_str(), k.digest)).collect();
        pool.release_claims(&claims).await
    }

    /// Puts up the reconcile fence over `keys` for `ttl`: commits holding any of them stop (see
    /// `ingest::reconcile`). Nothing to do for the embedded store, which no other process can open meanwhile.
    pub async fn fence(&self, keys: &[DedupKey], ttl: std::time::Duration) -> Result<(), DedupError> {
        let digests: Vec<KeyDigest> = keys.iter().map(|k| k.digest).collect();
        match self.redis_pool() {
            Some(pool) => pool.fence(&digests, ttl).await,
            None => Ok(()),
        }
    }

    /// Keeps the reconcile fence up for `ttl` more; whether it was still up (a store that lost its state lost it).
    pub async fn renew_fence(&self, ttl: std::time::Duration) -> Result<bool, DedupError> {
        match self.redis_pool() {
            Some(pool) => pool.renew_fence(ttl).await,
            None => Ok(true),
        }
    }

    /// Takes the reconcile fence down.
    pub async fn unfence(&self) -> Result<(), DedupError> {
        match self.redis_pool() {
            Some(pool) => pool.unfence().await,
            None => Ok(()),
        }
    }

    /// How many of `keys` a running reconcile is promoting.
    pub async fn fenced(&self, keys: &[DedupKey]) -> Result<usize, DedupError> {
        match self.redis_pool() {
            Some(pool) => pool.fenced(&keys.iter().map(|k| k.digest).collect::<Vec<_>>()).await,
            None => Ok(0),
        }
    }

    /// How many of `keys`, checked at `checked` and found new, the store holds now, if that check is older than
    /// `limit` (else 0, without a round trip). A shared store only: keys added meanwhile came from another process.
    /// A reconcile's fence lasts [`crate::ingest::reconcile::FENCE_TTL`]; keys checked before a reconcile added them
    /// and committed after its fence expired would land twice, so a commit re-checks keys older than half that, or
    /// than the workers' wait for each other's commits (a process paused past it: see `IngestSetup::commit_wait`).
    pub async fn added_since(
        &self,
        keys: &[DedupKey],
        checked: std::time::Instant,
        limit: std::time::Duration,
    ) -> Result<usize, DedupError> {
        if keys.is_empty() || !self.is_shared() || checked.elapsed() < limit {
            return Ok(0);
        }
        Ok(self.contains(keys).await?.into_iter().filter(|seen| *seen).count())
    }

    /// Whether the connection to the store was lost and re-established since the last call (a Redis that came
    /// back may have lost its last writes).
    pub fn take_reconnected(&self) -> bool {
        match self {
            Dedup::Embedded(_) => false,
            Dedup::RedisBitmap(d) => d.pool().take_reconnected(),
            Dedup::RedisBloom(d) => d.pool().take_reconnected(),
        }
    }
}

/// The period labels of `keys`, each once, and for each key the place of its label: a batch's keys fall on a few
/// business dates, so a label is made per date rather than per key.
fn period_labels(period: DedupPeriod, keys: &[DedupKey]) -> (Vec<String>, Vec<usize>) {
    let mut dates: Vec<NaiveDate> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let of = keys
        .iter()
        .map(|k| match dates.iter().position(|d| *d == k.date) {
            Some(i) => i,
            None => {
                dates.push(k.date);
                labels.push(period.label(k.date));
                dates.len() - 1
            }
        })
        .collect();
    (labels, of)
}

macro_rules! each_store {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Dedup::Embedded($d) => $e,
            Dedup::RedisBitmap($d) => $e,
            Dedup::RedisBloom($d) => $e,
        }
    };
}

impl DedupStore for Dedup {
    async fn contains(&self, keys: &[DedupKey]) -> Result<Vec<bool>, DedupError> {
        each_store!(self, d => d.contains(keys).await)
    }

    async fn add(&self, keys: &[DedupKey]) -> Result<(), DedupError> {
        each_store!(self, d => d.add(keys).await)
    }

    async fn mark_applied(&self, commits: &[String], holding: Holding<'_>) -> Result<(), DedupError> {
        each_store!(self, d => d.mark_applied(commits, holding).await)
    }

    async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        each_store!(self, d => d.applied(commits).await)
    }

    async fn stats(&self) -> Result<Vec<PartitionStats>, DedupError> {
        let mut stats = each_store!(self, d => d.stats().await)?;
        if let Some(pool) = self.redis_pool() {
            for s in &mut stats {
                s.claims = pool.claims_held(&s.partition).await?;
            }
        }
        Ok(stats)
    }

    fn exact(&self) -> bool {
        each_store!(self, d => d.exact())
    }

    fn describe(&self) -> String {
        each_store!(self, d => d.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open waits while another holder (a `dedup stats` of a monitor) has the embedded store, rather than failing
    /// at once; past [`IN_USE_WAIT`] it is refused as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_waits_for_the_embedded_store_a_short_command_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("dedup");
        let held = EmbeddedDedup::open(&store).expect("first holder");
        let releasing = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            drop(held);
        });
        let started = std::time::Instant::now();
        open_embedded(&store).await.expect("opened once released");
        assert!(started.elapsed() >= std::time::Duration::from_millis(500), "{:?}", started.elapsed());
        releasing.await.expect("released");
    }

    #[test]
    fn periods_label_business_dates() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 9).expect("date");
        assert_eq!(DedupPeriod::Month.label(d), "2026-03");
        assert_eq!(DedupPeriod::Day.label(d), "2026-03-09");
        assert_eq!(DedupPeriod::Year.label(d), "2026");
    }
}
