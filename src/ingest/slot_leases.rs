//! Workers that find their share themselves (`workers = "auto"`): the staging area's route keys hash to
//! [`SLOTS`] slots, and each worker holds a lease in Redis on the slots it takes. A worker takes only files of slots
//! it holds, so no file is read by two workers, and a station's re-sends still meet in one worker.
//!
//! - **Who is live.** Each worker heartbeats into a sorted set (`{route}:workers`, scored by the expiry of its
//!   heartbeat, in the server's clock), every third of the lease. One that stops heartbeating (killed, cut off)
//!   drops out after one lease.
//! - **Who takes what.** Rendezvous hashing over the live workers: each slot prefers the worker with the highest
//!   BLAKE3 of (worker, slot). Every worker computes the same preference from the same membership, and a worker
//!   joining or leaving moves only the slots it gains or loses.
//! - **Leases.** At the start of a run a worker takes the leases of its preferred slots (`SET NX PX`); a slot still
//!   leased by another worker (finishing a run under an older membership) is left to it for this run. Leases are
//!   renewed while the run lasts and released at its end. A worker killed mid-run leaves its leases to expire.
//! - **A lease lost mid-run** (the worker was cut off from Redis, or paused, for a whole lease) may already be another
//!   worker's, with its files. So each commit renews the leases after its intent is written (fenced, naming the
//!   slots) and before any table is committed; if one was lost, the intent is removed and everything uncommitted
//!   abandoned, and the run ends: the files are done by whoever holds their slots now. Recovery drops a fenced
//!   intent whose process died before the renewal. A worker that takes slots waits, before it reads the ledger, for
//!   the commits in progress on them (intents locked by live processes), and leaves out of its run the slots of one
//!   that outlasts a lease. Together: a commit whose renewal succeeded has its intent in place before a slot can
//!   pass to another worker, which then waits for it and sees its files in the ledger; a commit whose renewal
//!   failed, or never came, commits nothing.
//!
//! - **One way to route.** Every live worker must map paths to slots alike: the fleet routes as its longest-running
//!   worker does, and a worker that routes otherwise is refused and left out.
//!
//! Claims happen only when a run starts, so a membership change takes effect at each worker's next run (a worker
//! alone at its first claim, or seeing fewer workers than before, first waits a beat for the others to show): this
//! suits a service whose runs are short against its interval. A long backload is split by a fixed count instead.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::config::DedupConfig;
use crate::dedup::DedupError;
use crate::dedup::redis_pool::RedisPool;

/// Slots the route keys hash to. Every worker of one staging area must agree on it.
pub const SLOTS: u32 = 256;

/// Heartbeats, scored by expiry in the server's clock, and records when the worker joined and how it routes
/// (`joined_ms|ARGV[4]`) beside it; returns the live workers and those records, alternating. `TIME` makes the
/// script non-deterministic, which Redis before 5 accepts only with effects replication, asked for where it exists.
const HEARTBEAT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSETNX', KEYS[2], ARGV[1], now .. '|' .. ARGV[4])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
for _, w in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not redis.call('ZSCORE', KEYS[1], w) then redis.call('HDEL', KEYS[2], w) end
end
local out = {}
for _, w in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = w
  out[#out + 1] = redis.call('HGET', KEYS[2], w) or ''
end
return out
";

/// Over slot keys: the first ARGV[3] are taken (free, or already ours) and the next ARGV[4] renewed (only if still
/// ours), each for ARGV[2] ms; the rest are released if still ours. Returns 1 or 0 for each taken or renewed key.
const LEASE: &str = r"
local me, ttl = ARGV[1], ARGV[2]
local take, renew = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i, key in ipairs(KEYS) do
  if i <= take and redis.call('SET', key, me, 'NX', 'PX', ttl) then
    out[i] = 1
  elseif i <= take + renew then
    if redis.call('GET', key) == me then
      redis.call('PEXPIRE', key, ttl)
      out[i] = 1
    else
      out[i] = 0
    end
  elseif redis.call('GET', key) == me then
    redis.call('DEL', key)
  end
end
return out
";

/// What a claim got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Slots leased by this worker for the run.
    pub held: u32,
    /// Slots this worker is preferred for; the others of them are still leased by other workers.
    pub preferred: u32,
    /// Live workers, this one included.
    pub workers: u32,
}

/// A live worker, as its heartbeat records it.
struct Member {
    id: String,
    /// When it joined, in the server's clock.
    joined_ms: u64,
    routing: String,
}

/// This worker's leases, and the task that keeps its heartbeat and leases alive.
pub struct SlotLeases {
    pool: RedisPool,
    me: String,
    /// How this worker routes paths to slots: every live worker must route the same way.
    routing: String,
    ttl: Duration,
    held: [AtomicU64; (SLOTS / 64) as usize],
    /// Slots lost since the run's claim: the next commit must not go ahead.
    lost: Mutex<Vec<u32>>,
    /// Between the claim and the release of a run: leases are renewed only then.
    in_run: AtomicBool,
    /// One claim, renewal or release at a time, so that a renewal never writes back a stale set of held slots.
    busy: tokio::sync::Mutex<()>,
    /// Left the live workers: the keeper must not heartbeat it back in.
    left: AtomicBool,
    /// Live workers at the last claim (0 before the first).
    workers_seen: AtomicU32,
}

impl SlotLeases {
    /// Connects (a pool of two connections, the dedup store's URL, TLS and timeouts), joins the live workers, and
    /// starts heartbeating every third of `ttl` for as long as the returned value lives. `route_by` is the pattern
    /// the worker routes by (absent: by folder), which every live worker must share.
    pub async fn join(config: &DedupConfig, ttl: Duration, route_by: Option<&str>) -> Result<Arc<Self>, DedupError> {
        let pool = RedisPool::open(&DedupConfig { pool_size: 2, ..config.clone() }).await?;
        let host = crate::config::worker_name();
        let me = format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let leases = Arc::new(SlotLeases {
            pool,
            me,
            routing: format!(
                "{SLOTS} slots, route_by {}",
                route_by.map_or("absent (by folder)".into(), |p| format!("{p:?}"))
            ),
            ttl,
            held: Default::default(),
            lost: Mutex::new(Vec::new()),
            in_run: AtomicBool::new(false),
            busy: tokio::sync::Mutex::new(()),
            left: AtomicBool::new(false),
            workers_seen: AtomicU32::new(0),
        });
        leases.heartbeat(true).await?;
        tokio::spawn(keep(Arc::downgrade(&leases), ttl / 3));
        tracing::info!(worker = %leases.me, lease_secs = ttl.as_secs_f64(), "joined the workers that share staging");
        Ok(leases)
    }

    /// This worker's id in Redis.
    pub fn id(&self) -> &str {
        &self.me
    }

    /// How long a lease lasts unrenewed.
    pub fn lease_time(&self) -> Duration {
        self.ttl
    }

    pub fn holds(&self, slot: u32) -> bool {
        let slot = slot % SLOTS;
        self.held[(slot / 64) as usize].load(Ordering::SeqCst) & (1 << (slot % 64)) != 0
    }

    pub fn held(&self) -> Vec<u32> {
        (0..SLOTS).filter(|&s| self.holds(s)).collect()
    }

    fn set_held(&self, slots: &[u32]) {
        let mut words = [0u64; (SLOTS / 64) as usize];
        for &s in slots {
            words[(s / 64) as usize] |= 1 << (s % 64);
        }
        for (word, bits) in self.held.iter().zip(words) {
            word.store(bits, Ordering::SeqCst);
        }
    }

    /// At a run's start: heartbeats, works out this worker's preferred slots among the live workers, takes their
    /// leases where free, and releases any other it still holds.
    pub async fn claim(&self) -> Result<Claim, DedupError> {
        // Alone at its first claim, or seeing fewer workers than at its last (Redis restarted and lost the
        // heartbeats, or a worker stopped), it waits one beat, so that workers starting beside it, or heartbeating
        // again, are counted: else this run's share would be all of it.
        let first = self.heartbeat(true).await?;
        let (seen, before) = (first.len() as u32, self.workers_seen.load(Ordering::SeqCst));
        let wait = (before == 0 && seen == 1) || seen < before;
        if wait {
            tokio::time::sleep(self.ttl / 3 + Duration::from_millis(100)).await;
        }
        let _one = self.busy.lock().await;
        let members = if wait { self.heartbeat(true).await? } else { first };
        // Workers that route differently would each take some of the same files. The oldest live worker's routing
        // is the fleet's: a worker that routes otherwise is refused, and the others leave it out.
        let fleet = members.iter().min_by_key(|m| (m.joined_ms, &m.id)).map(|m| m.routing.clone());
        if let Some(fleet) = fleet.filter(|f| *f != self.routing) {
            let oldest = members.iter().min_by_key(|m| (m.joined_ms, &m.id)).map_or("", |m| m.id.as_str());
            return Err(DedupError::Config(format!(
                "the workers sharing this staging area route by {fleet} (as the longest-running, {oldest}, does), \
                 this one by {}: every worker must route the same way, or a file may go to two of them",
                self.routing
            )));
        }
        let members: Vec<String> = members.into_iter().filter(|m| m.routing == self.routing).map(|m| m.id).collect();
        let preferred: Vec<u32> = (0..SLOTS).filter(|&s| owner(s, &members) == Some(self.me.as_str())).collect();
        let release: Vec<u32> = self.held().into_iter().filter(|s| !preferred.contains(s)).collect();
        let got = self.lease(&preferred, &[], &release).await?;
        let held: Vec<u32> = preferred.iter().zip(&got).filter(|(_, ok)| **ok).map(|(s, _)| *s).collect();
        self.set_held(&held);
        self.lost.lock().map_err(|_| poisoned())?.clear();
        self.in_run.store(true, Ordering::SeqCst);
        let claim = Claim { held: held.len() as u32, preferred: preferred.len() as u32, workers: members.len() as u32 };
        self.workers_seen.store(claim.workers, Ordering::SeqCst);
        metrics::gauge!(crate::telemetry::metric::ROUTE_SLOTS).set(f64::from(claim.held));
        metrics::gauge!(crate::telemetry::metric::ROUTE_WORKERS).set(f64::from(claim.workers));
        tracing::info!(
            slots = claim.held,
            still_held_by_others = claim.preferred - claim.held,
            of = SLOTS,
            workers = claim.workers,
            "claimed this run's share of staging"
        );
        Ok(claim)
    }

    /// Leaves `slots` out of this run: their files are not taken, and their leases are released.
    pub async fn set_aside(&self, slots: &[u32]) -> Result<(), DedupError> {
        let _one = self.busy.lock().await;
        let keep: Vec<u32> = self.held().into_iter().filter(|s| !slots.contains(s)).collect();
        self.set_held(&keep);
        self.lease(&[], &[], slots).await.map(drop)
    }

    /// Before a commit: renews every lease of the run. Returns the slots lost since the claim (none: go ahead).
    pub async fn confirm(&self) -> Result<Vec<u32>, DedupError> {
        self.renew().await?;
        Ok(self.lost.lock().map_err(|_| poisoned())?.clone())
    }

    /// At a run's end: releases its leases, so that the next claim of any worker may take them.
    pub async fn release(&self) -> Result<(), DedupError> {
        let _one = self.busy.lock().await;
        self.in_run.store(false, Ordering::SeqCst);
        let held = self.held();
        self.set_held(&[]);
        self.lease(&[], &[], &held).await.map(drop)
    }

    /// When the process stops: releases every lease and leaves the live workers, so that the others need not wait
    /// a lease to take its share.
    pub async fn leave(&self) -> Result<(), DedupError> {
        self.release().await?;
        let _one = self.busy.lock().await;
        self.left.store(true, Ordering::SeqCst);
        self.heartbeat(false).await.map(drop)
    }

    /// The keeper's beat: heartbeat (unless left), and renew a run's leases.
    async fn beat(&self) -> Result<(), DedupError> {
        {
            let _one = self.busy.lock().await;
            if self.left.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.heartbeat(true).await?;
        }
        self.renew().await
    }

    async fn renew(&self) -> Result<(), DedupError> {
        let _one = self.busy.lock().await;
        if !self.in_run.load(Ordering::SeqCst) {
            return Ok(());
        }
        let held = self.held();
        let kept = self.lease(&[], &held, &[]).await?;
        let lost: Vec<u32> = held.iter().zip(&kept).filter(|(_, ok)| !**ok).map(|(s, _)| *s).collect();
        if !lost.is_empty() {
            // Discovery stops taking files of these slots at once; the next commit abandons what it has.
            let still: Vec<u32> = held.iter().zip(&kept).filter(|(_, ok)| **ok).map(|(s, _)| *s).collect();
            self.set_held(&still);
            tracing::warn!(
                slots = lost.len(),
                first = ?&lost[..lost.len().min(8)],
                "lost route slot leases: Redis lost them (restarted, flushed) or this worker could not renew them for \
                 a whole lease (cut off, paused)"
            );
            metrics::counter!(crate::telemetry::metric::ROUTE_LEASES_LOST).increment(lost.len() as u64);
            self.lost.lock().map_err(|_| poisoned())?.extend(lost);
        }
        Ok(())
    }

    /// Heartbeats (or, not `live`, leaves); returns the live workers.
    async fn heartbeat(&self, live: bool) -> Result<Vec<Member>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(HEARTBEAT)
            .arg(2)
            .arg(self.pool.key("{route}:workers"))
            .arg(self.pool.key("{route}:routing"));
        pipe.arg(&self.me).arg(self.ttl.as_millis() as u64).arg(if live { "1" } else { "0" }).arg(&self.routing);
        let (flat,): (Vec<String>,) = self.pool.query(&pipe).await?;
        Ok(flat
            .chunks_exact(2)
            .map(|pair| {
                let (joined, routing) = pair[1].split_once('|').unwrap_or(("", pair[1].as_str()));
                Member {
                    id: pair[0].clone(),
                    joined_ms: joined.parse().unwrap_or(u64::MAX),
                    routing: routing.to_owned(),
                }
            })
            .collect())
    }

    /// Runs [`LEASE`]: takes `take`, renews `renew`, releases `release`; one flag for each taken or renewed slot.
    async fn lease(&self, take: &[u32], renew: &[u32], release: &[u32]) -> Result<Vec<bool>, DedupError> {
        if take.is_empty() && renew.is_empty() && release.is_empty() {
            return Ok(Vec::new());
        }
        let keys = take.iter().chain(renew).chain(release).map(|s| self.pool.key(&format!("{{route}}:slot:{s}")));
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(LEASE).arg(take.len() + renew.len() + release.len());
        for key in keys {
            pipe.arg(key);
        }
        pipe.arg(&self.me).arg(self.ttl.as_millis() as u64).arg(take.len()).arg(renew.len());
        let (flags,): (Vec<i64>,) = self.pool.query(&pipe).await?;
        if flags.len() != take.len() + renew.len() {
            return Err(DedupError::Redis {
                url: self.pool.url().to_owned(),
                error: format!(
                    "the lease script answered {} flags for {} slots",
                    flags.len(),
                    take.len() + renew.len()
                ),
            });
        }
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }
}

/// One worker sharing the staging area, as `poslake dedup stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetMember {
    pub id: String,
    /// Still heartbeating (else it stopped, and its leases wait to expire).
    pub live: bool,
    pub routing: String,
    /// Seconds it has been a member (server clock), if live.
    pub for_secs: Option<u64>,
    pub slots: u32,
}

/// The workers that share the staging area with `workers = "auto"` (none if no worker ever did), and the slots
/// nobody leases now.
pub async fn fleet(config: &DedupConfig) -> Result<(Vec<FleetMember>, u32), DedupError> {
    let pool = RedisPool::open(&DedupConfig { pool_size: 1, ..config.clone() }).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    pipe.cmd("ZRANGE").arg(pool.key("{route}:workers")).arg(0).arg(-1).arg("WITHSCORES");
    pipe.cmd("HGETALL").arg(pool.key("{route}:routing"));
    pipe.cmd("MGET");
    for s in 0..SLOTS {
        pipe.arg(pool.key(&format!("{{route}}:slot:{s}")));
    }
    type Reply = ((u64, u64), Vec<(String, f64)>, std::collections::HashMap<String, String>, Vec<Option<String>>);
    let ((secs, micros), live, routing, holders): Reply = pool.query(&pipe).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let live: Vec<String> = live.into_iter().filter(|(_, expiry)| *expiry as u64 > now_ms).map(|(id, _)| id).collect();
    let mut ids: Vec<String> = live.clone();
    ids.extend(holders.iter().flatten().filter(|h| !live.contains(h)).cloned());
    ids.sort();
    ids.dedup();
    let members = ids
        .into_iter()
        .map(|id| {
            let record = routing.get(&id).map(String::as_str).unwrap_or("");
            let (joined, routing) = record.split_once('|').unwrap_or(("", record));
            let is_live = live.contains(&id);
            FleetMember {
                live: is_live,
                routing: routing.to_owned(),
                for_secs: joined.parse::<u64>().ok().filter(|_| is_live).map(|j| now_ms.saturating_sub(j) / 1000),
                slots: holders.iter().flatten().filter(|h| **h == id).count() as u32,
                id,
            }
        })
        .collect();
    let free = holders.iter().filter(|h| h.is_none()).count() as u32;
    Ok((members, free))
}

/// Heartbeats (and renews a run's leases) every `tick` while the leases are alive.
async fn keep(leases: Weak<SlotLeases>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(leases) = leases.upgrade() else { return };
        if let Err(e) = leases.beat().await {
            tracing::warn!(error = %e, "could not renew this worker's heartbeat or leases");
        }
    }
}

/// The live worker a slot prefers: the highest BLAKE3 of (worker, slot), so that every worker agrees.
pub fn owner(slot: u32, members: &[String]) -> Option<&str> {
    let score = |member: &String| {
        let mut hasher = blake3::Hasher::new();
        hasher.update(member.as_bytes());
        hasher.update(&slot.to_le_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    };
    members.iter().max_by_key(|m| score(m)).map(String::as_str)
}

fn poisoned() -> DedupError {
    DedupError::Config("a lock of the route leases was poisoned by a panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_prefers_one_live_worker_and_a_leaving_worker_moves_only_its_own() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut per = std::collections::HashMap::new();
        for s in 0..SLOTS {
            *per.entry(owner(s, &three).expect("owner")).or_insert(0u32) += 1;
        }
        assert!(per.values().all(|&n| (50..=120).contains(&n)), "{per:?}");
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        for s in 0..SLOTS {
            let before = owner(s, &three).expect("owner");
            let after = owner(s, &two).expect("owner");
            if before != "b" {
                assert_eq!(before, after, "slot {s} moved though its worker stayed");
            }
        }
        assert_eq!(owner(0, &[]), None);
    }
}
