//! The index of files already ingested, in Redis: the file index of workers that share a lake and a Redis store.
//!
//! An exact set, so that a file is skipped only if the ledger really holds it. Each file id (128 bits of BLAKE3
//! over size and path) falls in one of a power-of-two number of buckets by its low bits; a bucket is a Redis hash
//! whose fields are the id's top 96 bits and whose values are empty. Sized so that a bucket holds about 50-100
//! files at the design capacity, every bucket stays in Redis's compact listpack (ziplist before Redis 7) encoding
//! (128 entries by default): about 16 bytes a file, against 70 or more for a member of a plain set. Hashes, not
//! sets, because sets of strings are compact only from Redis 7.2 on, and Azure Cache for Redis still offers 6.0.
//!
//! A meta hash records the bucket count (fixed by the first worker to use the index) and an approximate file count.
//! A mark records the ledger snapshot the index is known to hold every file of, tagged with the store's generation:
//! a Redis that lost its data (a new generation) has a mark that no longer matches, and the next start reads the
//! whole ledger again.
//!
//! On a Redis Cluster spread by period ([`Layout::ByPeriod`]) the buckets are spread too, in [`GROUPS`] groups of
//! their own hash tag (`poslake:{files:3f}:…`), each with its own mark beside its buckets: a primary that loses its
//! data, or comes back without its last writes, loses a group's files together with the group's mark, and the
//! index is vouched for only while every group's mark is. One slot: one group, whose mark is in the meta hash.

use futures::{StreamExt, TryStreamExt};

use super::DedupError;
use super::redis_pool::{GENERATION, Layout, RedisPool};

/// The meta hash: in the generation's hash slot, so that the marking script may read both in a cluster.
const META: &str = "{dedup}:files";
/// Which lake's ledger the index holds: see [`RedisFiles::lake_record`].
const LAKE: &str = "{dedup}:lake";
/// Files a bucket holds at the design capacity, at most: below the default `hash-max-listpack-entries` (128),
/// with room for the spread of a random fill.
const FILES_PER_BUCKET: u64 = 100;
/// File ids per round trip.
const IDS_PER_ROUND_TRIP: usize = 1000;
/// Round trips in flight while adding or looking up.
const CONCURRENCY: usize = 4;
/// Round trips in flight in one lookup: spread over a cluster, a listing page's lookup touches every group with a
/// few ids each, and the cluster connection pipelines them all.
const LOOKUP_CONCURRENCY: usize = GROUPS as usize;
/// How long a sync's tickets outlive a sync that never marked (see [`RedisFiles::begin_sync`]).
const TICKET_SECS: u64 = 7 * 24 * 3600;
/// Groups of buckets on a cluster spread by period, at most: enough that they spread evenly over the primaries of
/// any cluster poslake would use, few enough that a lookup of a listing page takes few round trips.
pub const GROUPS: u64 = 64;

/// How the index is laid out; the state lives in Redis.
pub struct RedisFiles {
    buckets: u64,
    groups: Vec<Group>,
}

/// Buckets that share a hash slot, and their mark.
struct Group {
    /// What its bucket keys start with (the bucket's number in hex follows).
    prefix: String,
    /// The hash whose `synced` field is the group's mark.
    mark: String,
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
    /// Groups of buckets: one, or spread over a cluster's primaries, up to [`GROUPS`].
    pub groups: u64,
    /// Groups without a mark of the store's generation: none, or all of them before the first sync; else groups
    /// whose primary lost its data.
    pub groups_unmarked: u64,
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
        let index = Self::laid_out(pool, buckets)?;
        if index.buckets != wanted {
            tracing::info!(
                buckets = index.buckets,
                wanted,
                "the file index keeps the bucket count it was created with"
            );
        }
        Ok(index)
    }

    /// Opens the index only to look at it: `None` if no worker has made it yet.
    pub async fn open_to_read(pool: &RedisPool) -> Result<Option<Self>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(pool.key(META)).arg("buckets");
        let (buckets,): (Option<u64>,) = pool.query(&pipe).await?;
        buckets.map(|b| Self::laid_out(pool, Some(b))).transpose()
    }

    fn laid_out(pool: &RedisPool, buckets: Option<u64>) -> Result<Self, DedupError> {
        let buckets = buckets.filter(|b| b.is_power_of_two()).ok_or_else(|| {
            DedupError::Config(format!("the file index's bucket count in {} is not a power of two", pool.key(META)))
        })?;
        let groups = match pool.layout() {
            Layout::OneSlot => vec![Group { prefix: pool.key("files:"), mark: pool.key(META) }],
            Layout::ByPeriod => (0..buckets.min(GROUPS))
                .map(|g| {
                    let tag = pool.key(&format!("{{files:{g:x}}}"));
                    Group { prefix: format!("{tag}:"), mark: tag }
                })
                .collect(),
        };
        Ok(RedisFiles { buckets, groups })
    }

    pub fn capacity(&self) -> u64 {
        self.buckets * FILES_PER_BUCKET
    }

    /// The group of a file id: by the low bits of its bucket, so that a bucket lies in one group.
    fn group_of(&self, id: u128) -> usize {
        ((id as u64) & (self.buckets - 1) & (self.groups.len() as u64 - 1)) as usize
    }

    /// The bucket key and the field of a file id.
    fn place(&self, id: u128) -> (String, [u8; 12]) {
        let bucket = (id as u64) & (self.buckets - 1);
        let mut field = [0u8; 12];
        field.copy_from_slice(&id.to_be_bytes()[..12]);
        (format!("{}{bucket:x}", self.groups[self.group_of(id)].prefix), field)
    }

    /// The ids of each group that has some, with their places in `ids`: a round trip goes to one hash slot.
    fn by_group(&self, ids: &[u128]) -> Vec<(usize, Vec<(usize, u128)>)> {
        let mut groups: Vec<Vec<(usize, u128)>> = vec![Vec::new(); self.groups.len()];
        for (i, &id) in ids.iter().enumerate() {
            groups[self.group_of(id)].push((i, id));
        }
        groups.into_iter().enumerate().filter(|(_, ids)| !ids.is_empty()).collect()
    }

    /// The store's generation, for a sync's mark: read before the sync's first add, so that a store that loses the
    /// files meanwhile has another and refuses the mark. A store that has none (it lost its data and no worker has
    /// healed it yet) gets one, as a worker starting then would make it: else no mark could be made, and every
    /// lookup would read the ledger again.
    pub async fn generation(pool: &RedisPool) -> Result<String, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(pool.key(GENERATION)).arg(uuid::Uuid::new_v4().to_string()).arg("NX").ignore();
        pipe.cmd("GET").arg(pool.key(GENERATION));
        let (generation,): (String,) = pool.query(&pipe).await?;
        Ok(generation)
    }

    /// The snapshot the index holds every ledger file of, if every group holds a mark of the store's current
    /// generation: the earliest of those marks.
    pub async fn synced_to(&self, pool: &RedisPool) -> Result<Option<i64>, DedupError> {
        let (earliest, unmarked) = self.mark_state(pool).await?;
        Ok(earliest.filter(|_| unmarked == 0))
    }

    /// The earliest snapshot a group's mark of the current generation names, and how many groups hold no such mark.
    async fn mark_state(&self, pool: &RedisPool) -> Result<(Option<i64>, usize), DedupError> {
        let marks = self.marks(pool).await?;
        let (generation,): (Option<String>,) = pool.query(redis::pipe().cmd("GET").arg(pool.key(GENERATION))).await?;
        let Some(generation) = generation else { return Ok((None, marks.len())) };
        let mut earliest: Option<(i64, i64)> = None;
        let mut unmarked = 0;
        for mark in marks {
            match mark.as_deref().and_then(parse_mark).filter(|m| m.0 == generation) {
                Some((_, sequence, snapshot)) => {
                    if earliest.is_none_or(|(s, _)| sequence < s) {
                        earliest = Some((sequence, snapshot));
                    }
                }
                None => unmarked += 1,
            }
        }
        Ok((earliest.map(|(_, snapshot)| snapshot), unmarked))
    }

    /// Each group's mark, as written.
    async fn marks(&self, pool: &RedisPool) -> Result<Vec<Option<String>>, DedupError> {
        futures::stream::iter(0..self.groups.len())
            .map(|g| async move {
                let (mark,): (Option<String>,) =
                    pool.query(redis::pipe().cmd("HGET").arg(&self.groups[g].mark).arg("synced")).await?;
                Ok::<_, DedupError>(mark)
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }

    /// Begins a sync: spread over groups, leaves a ticket in every group's slot, which the sync's mark there takes
    /// (see [`Self::add`]); `None` in one slot, where the mark checks the store's generation instead.
    pub async fn begin_sync(&self, pool: &RedisPool) -> Result<Option<String>, DedupError> {
        if pool.layout() == Layout::OneSlot {
            return Ok(None);
        }
        let ticket = uuid::Uuid::new_v4().to_string();
        let ticket_ref = &ticket;
        futures::stream::iter(0..self.groups.len())
            .map(|g| async move {
                let key = self.ticket_key(g, ticket_ref);
                pool.query::<()>(redis::pipe().cmd("SET").arg(key).arg(1).arg("EX").arg(TICKET_SECS).ignore()).await
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(Some(ticket))
    }

    /// A sync's ticket in group `g`'s slot.
    fn ticket_key(&self, g: usize, ticket: &str) -> String {
        format!("{}sync:{ticket}", self.groups[g].prefix)
    }

    /// Adds files (idempotent), then, if given, records in every group that the index holds every ledger file up
    /// to that snapshot, unless a later snapshot is recorded in the same generation. The mark is refused where the
    /// group may have lost the sync's adds: in one slot if the store's generation is no longer `generation`;
    /// spread over groups (whose scripts cannot read the store's generation) if the group no longer holds the
    /// sync's ticket (`ticket`, from [`Self::begin_sync`]), which a primary that lost its data lost with it. True
    /// if no group refused it.
    pub async fn add(
        &self,
        pool: &RedisPool,
        ids: &[u128],
        synced_to: Option<(LedgerMark, &str, Option<&str>)>,
    ) -> Result<bool, DedupError> {
        // Owned chunks, one group's each: a closure over borrowed ones makes a future that is not `Send` for every
        // lifetime, which the pipeline's stages require.
        let chunks: Vec<Vec<u128>> = self
            .by_group(ids)
            .into_iter()
            .flat_map(|(_, ids)| {
                let ids: Vec<u128> = ids.into_iter().map(|(_, id)| id).collect();
                ids.chunks(IDS_PER_ROUND_TRIP).map(<[u128]>::to_vec).collect::<Vec<_>>()
            })
            .collect();
        let added: Vec<u64> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let mut pipe = redis::pipe();
                for id in chunk {
                    let (key, field) = self.place(id);
                    pipe.cmd("HSET").arg(key).arg(&field[..]).arg("");
                }
                let new: Vec<u64> = pool.query(&pipe).await?;
                Ok::<_, DedupError>(new.iter().sum::<u64>())
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let added: u64 = added.iter().sum();
        if added > 0 {
            pool.query::<()>(redis::pipe().cmd("HINCRBY").arg(pool.key(META)).arg("count").arg(added).ignore()).await?;
        }
        let Some((mark, generation, ticket)) = synced_to else { return Ok(true) };
        let one_slot = pool.layout() == Layout::OneSlot;
        if !one_slot && ticket.is_none() {
            return Err(DedupError::Config("a spread file index's sync mark without its ticket".into()));
        }
        let answers: Vec<i64> = futures::stream::iter(0..self.groups.len())
            .map(|g| async move {
                let mut pipe = redis::pipe();
                pipe.cmd("EVAL").arg(MARK_IF_LATER).arg(2).arg(&self.groups[g].mark);
                match ticket {
                    Some(ticket) if !one_slot => pipe.arg(self.ticket_key(g, ticket)),
                    _ => pipe.arg(pool.key(GENERATION)),
                };
                pipe.arg(generation).arg(mark.sequence).arg(mark.snapshot_id);
                pipe.arg(if one_slot { "generation" } else { "ticket" });
                let (answer,): (i64,) = pool.query(&pipe).await?;
                Ok::<_, DedupError>(answer)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(answers.iter().all(|&a| a >= 0))
    }

    /// Which of these files the index holds.
    pub async fn contain(&self, pool: &RedisPool, ids: &[u128]) -> Result<Vec<bool>, DedupError> {
        Ok(self.contain_vouched(pool, ids).await?.0)
    }

    /// [`Self::contain`], and what vouches for the answers: the index's mark and the store's generation, read in
    /// each round trip after the lookups, so that a store that lost its data before or during them shows a mark
    /// missing or of an earlier sequence (its last writes lost), and never vouches for answers read from what was
    /// lost.
    ///
    /// Spread over groups, each group's round trips read its own mark after its answers, and the store's generation
    /// is read after them all: a group whose primary lost its files has lost its mark too, and a store that lost its
    /// shared slot meanwhile has another generation (or none), so that no group's mark vouches any more.
    pub async fn contain_vouched(&self, pool: &RedisPool, ids: &[u128]) -> Result<(Vec<bool>, Vouch), DedupError> {
        let one_slot = pool.layout() == Layout::OneSlot;
        let chunks: Vec<Vec<(usize, u128)>> = self
            .by_group(ids)
            .into_iter()
            .flat_map(|(_, ids)| ids.chunks(IDS_PER_ROUND_TRIP).map(<[(usize, u128)]>::to_vec).collect::<Vec<_>>())
            .collect();
        let answered: Vec<Answered> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let mut pipe = redis::pipe();
                for &(_, id) in &chunk {
                    let (key, field) = self.place(id);
                    pipe.cmd("HEXISTS").arg(key).arg(&field[..]);
                }
                let group = chunk.first().map_or(0, |&(_, id)| self.group_of(id));
                if one_slot {
                    pipe.cmd("GET").arg(pool.key(GENERATION));
                }
                pipe.cmd("HGET").arg(&self.groups[group].mark).arg("synced");
                let mut answers: Vec<redis::Value> = pool.query(&pipe).await?;
                let mark: Option<String> = answers.pop().and_then(|v| redis::from_redis_value(v).ok());
                let generation: Option<String> =
                    if one_slot { answers.pop().and_then(|v| redis::from_redis_value(v).ok()) } else { None };
                if answers.len() != chunk.len() {
                    return Err(DedupError::Redis {
                        url: pool.url().to_owned(),
                        error: format!("{} answers for {} file ids", answers.len(), chunk.len()),
                    });
                }
                let mut held = Vec::with_capacity(chunk.len());
                for (answer, &(i, _)) in answers.into_iter().zip(&chunk) {
                    let h = redis::from_redis_value(answer).map_err(|e| DedupError::Redis {
                        url: pool.url().to_owned(),
                        error: format!("HEXISTS: {e}"),
                    })?;
                    held.push((i, h));
                }
                Ok::<_, DedupError>(Answered { held, generation, mark })
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        // Spread: the store's generation, read after every group's answers.
        let store_generation: Option<String> = if one_slot || answered.is_empty() {
            None
        } else {
            let (g,): (Option<String>,) = pool.query(redis::pipe().cmd("GET").arg(pool.key(GENERATION))).await?;
            g
        };
        let mut out = vec![false; ids.len()];
        let mut vouch: Option<Vouch> = None;
        for Answered { held, generation, mark } in answered {
            for (i, h) in held {
                out[i] = h;
            }
            let generation = if one_slot { generation } else { store_generation.clone() };
            let this = Vouch::of(generation, mark.as_deref());
            vouch = Some(match vouch {
                None => this,
                Some(before) => before.weakest(this),
            });
        }
        Ok((out, vouch.unwrap_or(Vouch::Nothing { generation: None })))
    }

    pub async fn stats(&self, pool: &RedisPool) -> Result<FileIndexStats, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(pool.key(META)).arg("count");
        let (files,): (Option<u64>,) = pool.query(&pipe).await?;
        let (earliest, unmarked) = self.mark_state(pool).await?;
        Ok(FileIndexStats {
            files: files.unwrap_or(0),
            buckets: self.buckets,
            capacity: self.capacity(),
            synced_to: earliest.filter(|_| unmarked == 0),
            groups: self.groups.len() as u64,
            groups_unmarked: unmarked as u64,
        })
    }
}

/// One round trip's lookups: each id's place in the call and whether it is held; the store's generation (one slot)
/// and the group's mark, read after them.
struct Answered {
    held: Vec<(usize, bool)>,
    generation: Option<String>,
    mark: Option<String>,
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
/// Records the lake's ledger (`HSETNX table`), and its sequence in `KEYS[1]` if higher than the one held; returns ''
/// then, or, leaving it as it is, the table of another lake's ledger that `KEYS[1]` holds.
const RECORD_LAKE: &str = r"
redis.call('HSETNX', KEYS[1], 'table', ARGV[1])
local table = redis.call('HGET', KEYS[1], 'table')
if table ~= ARGV[1] then return table end
local held = tonumber(redis.call('HGET', KEYS[1], 'sequence') or '-1')
if tonumber(ARGV[2]) > held then redis.call('HSET', KEYS[1], 'sequence', ARGV[2]) end
return ''
";

impl RedisFiles {
    /// The ledger this index was last brought up to: its table's UUID, and the highest sequence number.
    pub async fn lake_record(pool: &RedisPool) -> Result<Option<(String, i64)>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(pool.key(LAKE)).arg("table").arg("sequence");
        let ((table, sequence),): ((Option<String>, Option<i64>),) = pool.query(&pipe).await?;
        Ok(table.map(|t| (t, sequence.unwrap_or(0))))
    }

    /// Records the ledger the index holds (see [`Self::lake_record`]), keeping the highest sequence; leaves a record
    /// of another ledger table as it is, and returns that table.
    pub async fn record_lake(pool: &RedisPool, table: &str, sequence: i64) -> Result<Option<String>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(RECORD_LAKE).arg(1).arg(pool.key(LAKE)).arg(table).arg(sequence);
        let (other,): (String,) = pool.query(&pipe).await?;
        Ok(Some(other).filter(|t| !t.is_empty()))
    }
}

fn parse_mark(mark: &str) -> Option<(String, i64, i64)> {
    let mut parts = mark.split(' ');
    let generation = parts.next()?.to_owned();
    let sequence = parts.next()?.parse().ok()?;
    let snapshot = parts.next()?.parse().ok()?;
    Some((generation, sequence, snapshot))
}

/// Records `ARGV[1] ARGV[2] ARGV[3]` (generation, sequence, snapshot) as the synced mark of `KEYS[1]` unless the
/// mark held is of a later sequence in that generation (0). Refused (-1) if the sync's adds may be lost: with
/// `ARGV[4]` `generation`, the store's generation `KEYS[2]` is no longer `ARGV[1]`; with `ticket`, the sync's ticket
/// `KEYS[2]` is gone (it is taken here).
const MARK_IF_LATER: &str = r"
local generation = ARGV[1]
if ARGV[4] == 'ticket' then
  if redis.call('DEL', KEYS[2]) == 0 then return -1 end
elseif redis.call('GET', KEYS[2]) ~= generation then
  return -1
end
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
