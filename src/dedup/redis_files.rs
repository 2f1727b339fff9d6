//! The index of files already ingested, in Redis: the file index of workers that share a lake and a Redis store.
//!
//! An exact set, so that a file is skipped only if the ledger really holds it. Each file id (128 bits of BLAKE3
//! over size and path) falls in one of a power-of-two number of buckets by its low bits; a bucket is a Redis hash
//! whose fields are the id's top 96 bits and whose values are empty. Sized so that a bucket holds about 50-100
//! files at the design capacity, every bucket stays in Redis's compact listpack (ziplist before Redis 7) encoding
//! (128 entries by default): about 16 bytes a file, against 70 or more for a member of a plain set. Hashes, not
//! sets, because sets of strings are compact only from Redis 7.2 on, and Azure Cache for Redis still offers 6.0.
//!
//! A meta hash records the bucket count (fixed by the first worker to use the index), an approximate file count,
//! and the ledger snapshot the index is known to hold every file of, tagged with the store's generation: a Redis
//! that lost its data (a new generation) has a mark that no longer matches, and the next start reads the whole
//! ledger again.

use futures::{StreamExt, TryStreamExt};

use super::DedupError;
use super::redis_pool::{GENERATION, Layout, RedisPool};

/// The meta hash: in the generation's hash slot, so that the marking script may read both in a cluster.
const META: &str = "{dedup}:files";
/// Files a bucket holds at the design capacity, at most: below the default `hash-max-listpack-entries` (128),
/// with room for the spread of a random fill.
const FILES_PER_BUCKET: u64 = 100;
/// File ids per round trip.
const IDS_PER_ROUND_TRIP: usize = 1000;
/// Round trips in flight while adding.
const CONCURRENCY: usize = 4;

/// How the index is laid out; the state lives in Redis.
pub struct RedisFiles {
    buckets: u64,
}

/// The ledger snapshot an index holds every file of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerMark {
    pub snapshot_id: i64,
    /// The snapshot's sequence number: marks only move forward, whichever worker finishes its sync last.
    pub sequence: i64,
}

/// What `poslake dedup stats` shows of the index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileIndexStats {
    pub files: u64,
    pub buckets: u64,
    pub capacity: u64,
    pub synced_to: Option<i64>,
}

impl RedisFiles {
    /// Opens the index, creating its layout if no worker has: `expected_files` sizes the bucket count then, and
    /// is ignored (with a log line) once the index exists.
    pub async fn open(pool: &RedisPool, expected_files: u64) -> Result<Self, DedupError> {
        let wanted = buckets_for(expected_files);
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX").arg(pool.key(META)).arg("buckets").arg(wanted).ignore();
        pipe.cmd("HGET").arg(pool.key(META)).arg("buckets");
        let (buckets,): (Option<u64>,) = pool.query(&pipe).await?;
        let buckets = buckets.filter(|b| b.is_power_of_two()).ok_or_else(|| {
            DedupError::Config(format!("the file index's bucket count in {} is not a power of two", pool.key(META)))
        })?;
        if buckets != wanted {
            tracing::info!(buckets, wanted, "the file index keeps the bucket count it was created with");
        }
        Ok(RedisFiles { buckets })
    }

    pub fn capacity(&self) -> u64 {
        self.buckets * FILES_PER_BUCKET
    }

    /// The bucket key (under `prefix`, [`Self::bucket_prefix`]) and the field of a file id.
    fn place(&self, prefix: &str, id: u128) -> (String, [u8; 12]) {
        let bucket = (id as u64) & (self.buckets - 1);
        let mut field = [0u8; 12];
        field.copy_from_slice(&id.to_be_bytes()[..12]);
        (format!("{prefix}{bucket:x}"), field)
    }

    /// What every bucket key starts with: made once per call, not once per id. Spread by period over a cluster, in
    /// the meta hash's slot, so that a primary that comes back without its last writes loses them with the mark.
    fn bucket_prefix(pool: &RedisPool) -> String {
        match pool.layout() {
            Layout::OneSlot => pool.key("files:"),
            Layout::ByPeriod => pool.key("{dedup}:files:"),
        }
    }

    /// The snapshot the index holds every ledger file of, if it holds such a mark for the store's current
    /// generation.
    pub async fn synced_to(&self, pool: &RedisPool) -> Result<Option<i64>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(pool.key(GENERATION)).cmd("HGET").arg(pool.key(META)).arg("synced");
        let (generation, mark): (Option<String>, Option<String>) = pool.query(&pipe).await?;
        Ok(match (generation, mark) {
            (Some(generation), Some(mark)) => parse_mark(&mark).filter(|m| m.0 == generation).map(|m| m.2),
            _ => None,
        })
    }

    /// Adds files (idempotent), then, if given, records that the index holds every ledger file up to that
    /// snapshot: only if the store's generation is still `generation` and no later snapshot is recorded.
    pub async fn add(
        &self,
        pool: &RedisPool,
        ids: &[u128],
        synced_to: Option<(LedgerMark, &str)>,
    ) -> Result<(), DedupError> {
        let prefix = &Self::bucket_prefix(pool);
        // Owned chunks: a closure over borrowed ones makes a future that is not `Send` for every lifetime, which
        // the pipeline's stages require.
        let added: Vec<u64> = futures::stream::iter(ids.chunks(IDS_PER_ROUND_TRIP).map(<[u128]>::to_vec))
            .map(|chunk| async move {
                let mut pipe = redis::pipe();
                for id in chunk {
                    let (key, field) = self.place(prefix, id);
                    pipe.cmd("HSET").arg(key).arg(&field[..]).arg("");
                }
                let new: Vec<u64> = pool.query(&pipe).await?;
                Ok::<_, DedupError>(new.iter().sum::<u64>())
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let added: u64 = added.iter().sum();
        let mut pipe = redis::pipe();
        if added > 0 {
            pipe.cmd("HINCRBY").arg(pool.key(META)).arg("count").arg(added).ignore();
        }
        if let Some((mark, generation)) = synced_to {
            pipe.cmd("EVAL").arg(MARK_IF_LATER).arg(2).arg(pool.key(META)).arg(pool.key(GENERATION));
            pipe.arg(generation).arg(mark.sequence).arg(mark.snapshot_id).ignore();
        }
        if added > 0 || synced_to.is_some() {
            pool.query::<()>(&pipe).await?;
        }
        Ok(())
    }

    /// Which of these files the index holds.
    pub async fn contain(&self, pool: &RedisPool, ids: &[u128]) -> Result<Vec<bool>, DedupError> {
        Ok(self.contain_vouched(pool, ids).await?.0)
    }

    /// [`Self::contain`], and what vouches for the answers: the index's mark and the store's generation, read in
    /// each round trip after the lookups, so that a store that lost its data before or during them shows a mark
    /// missing or of an earlier sequence (its last writes lost), and never vouches for answers read from what was
    /// lost.
    pub async fn contain_vouched(&self, pool: &RedisPool, ids: &[u128]) -> Result<(Vec<bool>, Vouch), DedupError> {
        let prefix = Self::bucket_prefix(pool);
        let mut out = Vec::with_capacity(ids.len());
        let mut vouch: Option<Vouch> = None;
        for chunk in ids.chunks(IDS_PER_ROUND_TRIP) {
            let mut pipe = redis::pipe();
            for &id in chunk {
                let (key, field) = self.place(&prefix, id);
                pipe.cmd("HEXISTS").arg(key).arg(&field[..]);
            }
            pipe.cmd("GET").arg(pool.key(GENERATION)).cmd("HGET").arg(pool.key(META)).arg("synced");
            let mut answers: Vec<redis::Value> = pool.query(&pipe).await?;
            let mark: Option<String> = answers.pop().and_then(|v| redis::from_redis_value(v).ok());
            let generation: Option<String> = answers.pop().and_then(|v| redis::from_redis_value(v).ok());
            for answer in answers {
                out.push(
                    redis::from_redis_value(answer).map_err(|e| DedupError::Redis {
                        url: pool.url().to_owned(),
                        error: format!("HEXISTS: {e}"),
                    })?,
                );
            }
            let this = Vouch::of(generation, mark.as_deref());
            vouch = Some(match vouch {
                None => this,
                Some(before) => before.weakest(this),
            });
        }
        if out.len() != ids.len() {
            return Err(DedupError::Redis {
                url: pool.url().to_owned(),
                error: format!("{} answers for {} file ids", out.len(), ids.len()),
            });
        }
        Ok((out, vouch.unwrap_or(Vouch::Nothing { generation: None })))
    }

    pub async fn stats(&self, pool: &RedisPool) -> Result<FileIndexStats, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(pool.key(META)).arg("count");
        let (files,): (Option<u64>,) = pool.query(&pipe).await?;
        Ok(FileIndexStats {
            files: files.unwrap_or(0),
            buckets: self.buckets,
            capacity: self.capacity(),
            synced_to: self.synced_to(pool).await?,
        })
    }
}

/// What vouches for a file index's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vouch {
    /// The index holds every ledger file up to the ledger snapshot of this sequence, in the store's generation.
    Mark { generation: String, sequence: i64 },
    /// No mark of the store's current generation (`generation`, if it has one): the store lost its data since the
    /// index was last brought up to the ledger, and the answers may miss files.
    Nothing { generation: Option<String> },
}

impl Vouch {
    fn of(generation: Option<String>, mark: Option<&str>) -> Vouch {
        match (generation, mark.and_then(parse_mark)) {
            (Some(g), Some((held, sequence, _))) if held == g => Vouch::Mark { generation: g, sequence },
            (generation, _) => Vouch::Nothing { generation },
        }
    }

    /// What vouches for answers read in two round trips.
    fn weakest(self, other: Vouch) -> Vouch {
        match (self, other) {
            (Vouch::Mark { generation: a, sequence: s }, Vouch::Mark { generation: b, sequence: t }) if a == b => {
                Vouch::Mark { generation: a, sequence: s.min(t) }
            }
            (Vouch::Nothing { generation }, _) | (_, Vouch::Nothing { generation }) => Vouch::Nothing { generation },
            (_, Vouch::Mark { generation, .. }) => Vouch::Nothing { generation: Some(generation) },
        }
    }
}

/// The smallest power of two of buckets that keeps `expected_files` at most [`FILES_PER_BUCKET`] a bucket.
fn buckets_for(expected_files: u64) -> u64 {
    expected_files.div_ceil(FILES_PER_BUCKET).clamp(1, 1 << 32).next_power_of_two()
}

/// `generation sequence snapshot`.
fn parse_mark(mark: &str) -> Option<(String, i64, i64)> {
    let mut parts = mark.split(' ');
    let generation = parts.next()?.to_owned();
    let sequence = parts.next()?.parse().ok()?;
    let snapshot = parts.next()?.parse().ok()?;
    Some((generation, sequence, snapshot))
}

/// Records `ARGV[1] ARGV[2] ARGV[3]` (generation, sequence, snapshot) as the synced mark of `KEYS[1]` if the
/// generation `KEYS[2]` is still `ARGV[1]` and the mark held is not of a later sequence in that generation.
const MARK_IF_LATER: &str = r"
local generation = redis.call('GET', KEYS[2])
if generation ~= ARGV[1] then return 0 end
local held = redis.call('HGET', KEYS[1], 'synced')
if held then
  local g, s = string.match(held, '^(%S+) (%-?%d+) ')
  if g == generation and tonumber(s) > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'synced', ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_a_bucket_compact_at_capacity() {
        assert_eq!(buckets_for(1), 1);
        assert_eq!(buckets_for(100), 1);
        assert_eq!(buckets_for(101), 2);
        // The default: 100 million files in 2^20 buckets, about 95 a bucket.
        assert_eq!(buckets_for(100_000_000), 1 << 20);
        assert_eq!(buckets_for(u64::MAX), 1 << 32);
    }

    #[test]
    fn a_mark_vouches_only_in_its_own_generation_and_two_round_trips_by_the_weaker() {
        let mark = |g: &str, s: i64| Vouch::Mark { generation: g.into(), sequence: s };
        assert_eq!(Vouch::of(Some("g".into()), Some("g 5 99")), mark("g", 5));
        assert_eq!(Vouch::of(Some("h".into()), Some("g 5 99")), Vouch::Nothing { generation: Some("h".into()) });
        assert_eq!(Vouch::of(None, Some("g 5 99")), Vouch::Nothing { generation: None });
        assert_eq!(Vouch::of(Some("g".into()), None), Vouch::Nothing { generation: Some("g".into()) });
        assert_eq!(mark("g", 5).weakest(mark("g", 3)), mark("g", 3));
        assert_eq!(mark("g", 5).weakest(mark("h", 7)), Vouch::Nothing { generation: Some("h".into()) });
        assert_eq!(mark("g", 5).weakest(Vouch::Nothing { generation: None }), Vouch::Nothing { generation: None });
    }

    #[test]
    fn marks_parse_back() {
        assert_eq!(parse_mark("g-1 12 -345"), Some(("g-1".into(), 12, -345)));
        assert_eq!(parse_mark("g-1 12"), None);
        assert_eq!(parse_mark("g-1 x 3"), None);
    }
}
