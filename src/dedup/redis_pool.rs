//! The Redis connection pool the Redis stores share: a bounded deadpool of multiplexed connections (TLS with
//! `rediss://`, AUTH from the URL), a timeout on every round trip, and retries with exponential backoff and full
//! jitter while the server is unreachable. Every command poslake sends is idempotent (bit sets, set adds, reads),
//! so a round trip whose answer was lost is simply sent again.
//!
//! While Redis is down the caller waits here, which holds up the pipeline behind it (backpressure): nothing is
//! lost or duplicated, a warning says so (again every 30 s while it lasts), one line says when it is back, and
//! past the configured limit the caller gets [`DedupError::Unavailable`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, FromRedisValue, Pipeline};

use super::DedupError;
use crate::config::DedupConfig;
use crate::error_text::one_line;

pub struct RedisPool {
    pool: Pool,
    /// The URL without its password, for messages.
    url: String,
    prefix: String,
    timeout: Duration,
    limit: Duration,
    /// The generation this process works against (see [`super::Dedup::generation`]).
    generation: Mutex<Option<String>>,
    reconnected: AtomicBool,
    /// The outage under way, if any: one warning for all the callers it holds up.
    health: Mutex<Health>,
    /// Round trips that failed, ever: a change tells a caller that the server may have restarted meanwhile.
    failures: AtomicU64,
}

/// First backoff; doubled per try up to [`BACKOFF_CAP`], each sleep drawn uniformly below it (full jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// While Redis stays unreachable, a log line this often.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(30);
/// The least time a try is given, even when the limit is nearer: the overshoot of the limit at most.
const LAST_TRY: Duration = Duration::from_secs(1);

impl RedisPool {
    pub fn connect(config: &DedupConfig) -> Result<Self, DedupError> {
        let url = redact(&config.redis_url);
        let cfg_err = |e: &dyn std::fmt::Display| DedupError::Config(format!("Redis URL {url}: {e}"));
        // The client's own parse error names no cause ("did not parse - InvalidClientConfig"): the URL parser's does.
        if let Err(e) = url::Url::parse(&config.redis_url) {
            return Err(cfg_err(&format!(
                "{e} (expected redis://[USER:PASSWORD@]HOST:PORT[/DB], or rediss:// for TLS)"
            )));
        }
        crate::install_tls_provider();
        let timeout = Duration::from_millis(config.timeout_ms);
        let conn =
            AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
        let manager = Manager::new_with_config(config.redis_url.as_str(), conn).map_err(|e| cfg_err(&e))?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| cfg_err(&e))?;
        Ok(RedisPool {
            pool,
            url,
            prefix: config.key_prefix.clone(),
            timeout,
            limit: Duration::from_secs(config.unavailable_limit_secs),
            generation: Mutex::new(None),
            reconnected: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            failures: AtomicU64::new(0),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A key under poslake's prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// Runs the pipeline, retrying while the server is unreachable (see the module docs). No try outlasts the
    /// limit by more than [`LAST_TRY`], whatever the timeout; a drain ([`crate::drain`]) ends the wait at once once
    /// a try has failed (a first try is left to finish, as a drain lets work in flight finish).
    pub async fn query<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, DedupError> {
        self.query_checked(pipe, |_: &T| None).await
    }

    /// [`Self::query`] for a pipeline sent with `ignore_errors`, whose commands' errors come back as answers: an
    /// answer that says the server is busy for now (loading its data after a restart, a failover) is retried as a
    /// lost connection is; the others are the caller's to read.
    pub async fn query_answers(&self, pipe: &Pipeline) -> Result<Vec<redis::Value>, DedupError> {
        self.query_checked(pipe, |answers: &Vec<redis::Value>| answers.iter().find_map(busy_answer)).await
    }

    async fn query_checked<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        busy: impl Fn(&T) -> Option<Failure>,
    ) -> Result<T, DedupError> {
        let started = Instant::now();
        let mut tries: u32 = 0;
        loop {
            let attempt = async {
                let mut conn = self.pool.get().await.map_err(|e| match e {
                    deadpool_redis::PoolError::Backend(e) => Failure::of(e),
                    other => Failure { retry: true, message: other.to_string() },
                })?;
                let answer = pipe.query_async::<T>(&mut conn).await.map_err(Failure::of)?;
                match busy(&answer) {
                    Some(failure) => Err(failure),
                    None => Ok(answer),
                }
            };
            let budget = (self.timeout * 2).min(self.limit.saturating_sub(started.elapsed()).max(LAST_TRY));
            let sent = Instant::now();
            let timed = tokio::time::timeout(budget, attempt);
            let outcome = if tries == 0 {
                timed.await
            } else {
                tokio::select! {
                    outcome = timed => outcome,
                    () = crate::drain::wait() => return Err(self.interrupted(started, "a retry was under way")),
                }
            };
            let failure = match outcome {
                Ok(Ok(value)) => {
                    metrics::histogram!(crate::telemetry::metric::REDIS_ROUND_TRIP)
                        .record(sent.elapsed().as_secs_f64());
                    if tries > 0 {
                        self.report_back();
                    }
                    return Ok(value);
                }
                Ok(Err(f)) => f,
                Err(_) => Failure { retry: true, message: format!("no answer within {budget:?}") },
            };
            if !failure.retry {
                return Err(DedupError::Redis { url: self.url.clone(), error: failure.message });
            }
            tries += 1;
            self.failures.fetch_add(1, Ordering::SeqCst);
            metrics::counter!(crate::telemetry::metric::REDIS_RETRIES).increment(1);
            let waited = started.elapsed();
            if crate::drain::requested() {
                return Err(self.interrupted(started, &failure.message));
            }
            if waited >= self.limit {
                return Err(DedupError::Unavailable {
                    url: self.url.clone(),
                    secs: waited.as_secs_f64(),
                    limit_secs: self.limit.as_secs(),
                    last: failure.message,
                });
            }
            self.report_down(&failure.message, sent);
            tokio::select! {
                () = tokio::time::sleep(backoff(tries).min(self.limit.saturating_sub(waited))) => {}
                () = crate::drain::wait() => return Err(self.interrupted(started, &failure.message)),
            }
        }
    }

    /// Says once per outage that Redis is unreachable, however many callers wait (and again every
    /// [`STILL_DOWN_EVERY`] while it lasts, so that a paused pipeline is not mistaken for a hung one). A try sent
    /// before the last recovery is old news.
    fn report_down(&self, error: &str, sent: Instant) {
        let Ok(mut health) = self.health.lock() else { return };
        let now = Instant::now();
        let stale = health.back_at.is_some_and(|back| sent < back);
        match health.outage.as_mut() {
            None if stale => {}
            None => {
                health.outage = Some(Outage { since: now, reported: now });
                tracing::warn!(url = %self.url, error = %one_line(error), limit_secs = self.limit.as_secs(),
                    "Redis unreachable: the pipeline pauses and retries with backoff");
            }
            Some(o) if now.duration_since(o.reported) >= STILL_DOWN_EVERY => {
                o.reported = now;
                tracing::warn!(url = %self.url, error = %one_line(error), down_secs = now.duration_since(o.since).as_secs(),
                    limit_secs = self.limit.as_secs(), "Redis still unreachable; retrying");
            }
            Some(_) => {}
        }
    }

    /// Says once per outage that Redis answers again (the first caller through says it for all).
    fn report_back(&self) {
        self.reconnected.store(true, Ordering::SeqCst);
        let Ok(mut health) = self.health.lock() else { return };
        if let Some(o) = health.outage.take() {
            health.back_at = Some(Instant::now());
            tracing::info!(url = %self.url, after_secs = o.since.elapsed().as_secs_f64(),
                "Redis is reachable again; resuming");
        }
    }

    fn interrupted(&self, started: Instant, last: &str) -> DedupError {
        DedupError::Interrupted { url: self.url.clone(), secs: started.elapsed().as_secs_f64(), last: one_line(last) }
    }

    /// Refuses a node of a Redis Cluster that does not serve every key itself. poslake sends each round trip to the
    /// one endpoint of its URL and does not follow `MOVED` redirects: against such a node it would take the
    /// redirects for an outage and retry them until `unavailable_limit_secs`. A server that cannot say (`INFO` or
    /// `CLUSTER` refused, as some managed services do) is taken at its word as one endpoint.
    pub async fn check_serves_every_key(&self) -> Result<(), DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("cluster");
        let info: String = match self.query::<(String,)>(&pipe).await {
            Ok((info,)) => info,
            Err(DedupError::Redis { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("MYID");
        pipe.cmd("CLUSTER").arg("SLOTS");
        let (me, ranges): (String, Vec<redis::Value>) = match self.query(&pipe).await {
            Ok(answer) => answer,
            Err(DedupError::Redis { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let served = cluster_slots_served_by(&me, &ranges);
        if served.here == CLUSTER_SLOTS {
            return Ok(());
        }
        Err(DedupError::Config(format!(
            "Redis at {} is a node of a Redis Cluster that serves {} of its {CLUSTER_SLOTS} hash slots itself ({}              other primaries serve {}, and {} are unassigned): poslake needs one endpoint that serves every key (a              single server or primary, or a cluster behind a proxy, such as Azure Managed Redis with the Enterprise              cluster policy) and does not follow a cluster's MOVED redirects",
            self.url,
            served.here,
            served.other_primaries,
            served.elsewhere,
            CLUSTER_SLOTS - served.here - served.elsewhere,
        )))
    }

    /// The store's generation: set once (`SET NX`) by the first process to use the store, so a Redis that lost
    /// its data (restarted without persistence, flushed) shows a different or no generation.
    pub async fn generation(&self) -> Result<String, DedupError> {
        let key = self.key(GENERATION);
        let fresh = uuid::Uuid::new_v4().to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(&fresh).arg("NX").ignore().cmd("GET").arg(&key);
        let (current,): (String,) = self.query(&pipe).await?;
        let mut mine = self.generation.lock().map_err(|_| poisoned())?;
        match mine.as_ref() {
            Some(expected) if *expected != current => {
                Err(DedupError::StateLost { expected: expected.clone(), found: current })
            }
            _ => {
                *mine = Some(current.clone());
                Ok(current)
            }
        }
    }

    /// Adopts the store's current generation after recovering from a loss.
    pub async fn renew_generation(&self) -> Result<String, DedupError> {
        if let Ok(mut g) = self.generation.lock() {
            *g = None;
        }
        self.generation().await
    }

    /// The generation this process expects, to check alongside a query.
    pub fn expected_generation(&self) -> Option<String> {
        self.generation.lock().ok().and_then(|g| g.clone())
    }

    /// Round trips that failed so far (see the field).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    pub fn take_reconnected(&self) -> bool {
        self.reconnected.swap(false, Ordering::SeqCst)
    }

    /// Commit ids whose keys are all added live in one set. The marks are made only if the generation is still
    /// the expected one (atomically, in a script): a Redis that lost the keys must not gain their marks.
    pub async fn mark_applied(&self, commits: &[String]) -> Result<(), DedupError> {
        if commits.is_empty() {
            return Ok(());
        }
        let expected = self.expected_generation().unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(MARK_IF_GENERATION).arg(2).arg(self.key(GENERATION)).arg(self.key(APPLIED));
        pipe.arg(&expected).arg(commits);
        let (found,): (Option<String>,) = self.query(&pipe).await?;
        match found {
            None => Ok(()),
            Some(found) => Err(DedupError::StateLost { expected, found }),
        }
    }

    pub async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        let mut out = Vec::with_capacity(commits.len());
        // SISMEMBER, pipelined, rather than SMISMEMBER: the latter needs Redis 6.2, and Azure Cache for Redis still
        // offers 6.0.
        for chunk in commits.chunks(1000) {
            let mut pipe = redis::pipe();
            for commit in chunk {
                pipe.cmd("SISMEMBER").arg(self.key(APPLIED)).arg(commit);
            }
            let flags: Vec<bool> = self.query(&pipe).await?;
            out.extend(flags);
        }
        Ok(out)
    }

    /// Puts up the reconcile fence: the digests of the keys a `poslake reconcile` is about to promote, for `ttl`
    /// (see `ingest::reconcile`). Added to what an earlier reconcile's fence still holds, which stays up until it
    /// expires.
    pub async fn fence(&self, digests: &[u128], ttl: Duration) -> Result<(), DedupError> {
        let key = self.key(RECONCILE_FENCE);
        for chunk in digests.chunks(1000) {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&key);
            for d in chunk {
                pipe.arg(&d.to_le_bytes()[..]);
            }
            pipe.ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl.as_millis() as u64).ignore();
            self.query::<()>(&pipe).await?;
        }
        Ok(())
    }

    /// Keeps the fence up for `ttl` more. Whether it was still up, in the store this process knows (a store that
    /// lost its state, and the fence with it, is `StateLost`).
    pub async fn renew_fence(&self, ttl: Duration) -> Result<bool, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.key(GENERATION));
        pipe.cmd("PEXPIRE").arg(self.key(RECONCILE_FENCE)).arg(ttl.as_millis() as u64);
        let (generation, renewed): (Option<String>, bool) = self.query(&pipe).await?;
        self.check_generation(generation)?;
        Ok(renewed)
    }

    /// Takes the reconcile fence down.
    pub async fn unfence(&self) -> Result<(), DedupError> {
        self.query::<()>(redis::pipe().cmd("DEL").arg(self.key(RECONCILE_FENCE)).ignore()).await
    }

    /// How many of these digests a running reconcile is promoting: none (one round trip) while no fence is up.
    /// A store that lost its state since this process last looked (a Redis restarted without persistence) may have
    /// lost a fence with it: that is an error (`StateLost`), never "no fence".
    pub async fn fenced(&self, digests: &[u128]) -> Result<usize, DedupError> {
        let key = self.key(RECONCILE_FENCE);
        let (generation, up): (Option<String>, bool) =
            self.query(redis::pipe().cmd("GET").arg(self.key(GENERATION)).cmd("EXISTS").arg(&key)).await?;
        self.check_generation(generation)?;
        if !up {
            return Ok(0);
        }
        let mut n = 0;
        for chunk in digests.chunks(1000) {
            let mut pipe = redis::pipe();
            for d in chunk {
                pipe.cmd("SISMEMBER").arg(&key).arg(&d.to_le_bytes()[..]);
            }
            let flags: Vec<bool> = self.query(&pipe).await?;
            n += flags.into_iter().filter(|&f| f).count();
        }
        Ok(n)
    }

    /// Checks that the generation is still the one this process started with: the first command of a check's
    /// pipeline, so that a lost state is never mistaken for "these keys are new".
    pub fn check_generation(&self, found: Option<String>) -> Result<(), DedupError> {
        match (self.expected_generation(), found) {
            (Some(expected), Some(found)) if expected == found => Ok(()),
            (Some(expected), found) => {
                Err(DedupError::StateLost { expected, found: found.unwrap_or_else(|| "(none)".into()) })
            }
            (None, _) => Ok(()),
        }
    }
}

impl RedisPool {
    /// The server's CPU seconds so far (user + system, from `INFO cpu`), if it reports them.
    pub async fn server_cpu_seconds(&self) -> Result<Option<f64>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("cpu");
        let (info,): (String,) = self.query(&pipe).await?;
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()));
        Ok(match (field("used_cpu_user:"), field("used_cpu_sys:")) {
            (Some(u), Some(s)) => Some(u + s),
            _ => None,
        })
    }

    /// Bytes the server's data takes (`used_memory` of `INFO memory`).
    pub async fn used_memory(&self) -> Result<Option<u64>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("memory");
        let (info,): (String,) = self.query(&pipe).await?;
        Ok(info.lines().find_map(|l| l.strip_prefix("used_memory:").and_then(|v| v.trim().parse().ok())))
    }

    /// Microseconds the server spent in each command so far (`INFO commandstats`), by command name in lower case.
    pub async fn command_usec(&self) -> Result<std::collections::HashMap<String, f64>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("commandstats");
        let (info,): (String,) = self.query(&pipe).await?;
        Ok(info
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let usec = rest.split(',').find_map(|kv| kv.strip_prefix("usec="))?.parse().ok()?;
                // Module commands are listed as registered: `BF.MADD` by valkey-bloom, `bf.madd` by Redis Stack.
                Some((name.to_ascii_lowercase(), usec))
            })
            .collect())
    }

    /// Deletes every key under this pool's prefix (the bench's throwaway filters).
    pub async fn delete_prefix(&self) -> Result<u64, DedupError> {
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let ((next, keys),): ((u64, Vec<String>),) = self.query(&pipe).await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                pipe.cmd("UNLINK").arg(&keys);
                let (n,): (u64,) = self.query(&pipe).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// The generation and the applied marks share a hash tag, so the script below may touch both in a cluster.
pub const GENERATION: &str = "{dedup}:generation";
pub const APPLIED: &str = "{dedup}:applied";
/// The key digests a running `poslake reconcile` promotes (a set; see [`RedisPool::fence`]).
const RECONCILE_FENCE: &str = "{dedup}:reconcile-fence";

/// SADD the commits if the generation is ARGV[1]; otherwise return the generation found.
const MARK_IF_GENERATION: &str = r"
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return g or '(none)' end
redis.call('SADD', KEYS[2], unpack(ARGV, 2))
return false
";

#[derive(Default)]
struct Health {
    outage: Option<Outage>,
    /// When the last outage ended.
    back_at: Option<Instant>,
}

struct Outage {
    since: Instant,
    /// When a warning last said so.
    reported: Instant,
}

struct Failure {
    retry: bool,
    message: String,
}

impl Failure {
    fn of(e: redis::RedisError) -> Failure {
        let mut message = e.to_string();
        // A server with a password, asked without one, says so in its own words (`NOAUTH Authentication
        // required`, or the client's "refused to switch database" when the URL names one): say what to do.
        let no_password = message.contains("NOAUTH") || message.contains("Authentication required");
        if no_password {
            message.push_str(
                " (the server needs a password: give it in the URL, redis://:PASSWORD@HOST:PORT or \
                 redis://USER:PASSWORD@HOST:PORT)",
            );
        }
        let retry = !no_password
            && !matches!(e.kind(), redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig)
            && !matches!(e.retry_method(), redis::RetryMethod::NoRetry);
        Failure { retry, message }
    }
}

fn poisoned() -> DedupError {
    DedupError::Config("the generation lock was poisoned by a panic".into())
}

fn backoff(tries: u32) -> Duration {
    crate::backoff::full_jitter(BACKOFF_BASE, BACKOFF_CAP, tries)
}

/// The URL with any password replaced, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The failure to retry for an answer that says the server is busy for now (`LOADING`, `TRYAGAIN`, `MASTERDOWN`).
fn busy_answer(answer: &redis::Value) -> Option<Failure> {
    match answer {
        redis::Value::ServerError(e) => Some(Failure::of(e.clone().into())).filter(|f| f.retry),
        _ => None,
    }
}

/// A Redis Cluster's hash slots.
const CLUSTER_SLOTS: u32 = 16_384;

/// Who serves a cluster's slots, from `CLUSTER SLOTS` (`[start, end, [ip, port, id, …], replicas…]` per range).
#[derive(Debug, PartialEq)]
struct SlotsServed {
    here: u32,
    elsewhere: u32,
    other_primaries: usize,
}

fn cluster_slots_served_by(me: &str, ranges: &[redis::Value]) -> SlotsServed {
    use redis::Value;
    let mut served = SlotsServed { here: 0, elsewhere: 0, other_primaries: 0 };
    let mut others = std::collections::BTreeSet::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let width = u32::try_from(end - start + 1).unwrap_or(0).min(CLUSTER_SLOTS);
        let id = match primary.get(2) {
            Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
            Some(Value::SimpleString(id)) => id.clone(),
            _ => String::new(),
        };
        if id == me {
            served.here += width;
        } else {
            served.elsewhere += width;
            others.insert(id);
        }
    }
    served.here = served.here.min(CLUSTER_SLOTS);
    served.elsewhere = served.elsewhere.min(CLUSTER_SLOTS - served.here);
    served.other_primaries = others.len();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_does_not_parse_says_why_and_hides_the_password() {
        let config = DedupConfig { redis_url: "redis://:secret@[bad".into(), ..DedupConfig::default() };
        let e = RedisPool::connect(&config).err().expect("refused").to_string();
        assert!(e.contains("invalid IPv6") && e.contains("expected redis://"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn answers_that_say_the_server_is_busy_are_retried_and_others_are_not() {
        let answer = |wire: &str| redis::parse_redis_value(wire.as_bytes()).expect("an answer");
        assert!(busy_answer(&answer("-LOADING Valkey is loading the dataset in memory\r\n")).is_some());
        assert!(busy_answer(&answer("-TRYAGAIN Multiple keys request during rehashing of slot\r\n")).is_some());
        assert!(busy_answer(&answer("-ERR non scaling filter is full\r\n")).is_none());
        assert!(
            busy_answer(&answer("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")).is_none()
        );
        assert!(busy_answer(&answer(":1\r\n")).is_none());
    }

    #[test]
    fn cluster_slots_are_counted_by_their_primary() {
        use redis::Value;
        let node = |id: &str| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(7000),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let range = |a: i64, b: i64, primary: &str, replica: &str| {
            Value::Array(vec![Value::Int(a), Value::Int(b), node(primary), node(replica)])
        };
        let whole = [range(0, 16_383, "me", "r1")];
        assert_eq!(
            cluster_slots_served_by("me", &whole),
            SlotsServed { here: 16_384, elsewhere: 0, other_primaries: 0 }
        );
        let split = [range(0, 5_460, "me", "r1"), range(5_461, 10_922, "b", "r2"), range(10_923, 16_000, "c", "r3")];
        assert_eq!(
            cluster_slots_served_by("me", &split),
            SlotsServed { here: 5_461, elsewhere: 10_540, other_primaries: 2 },
            "383 slots unassigned"
        );
        assert_eq!(cluster_slots_served_by("r1", &whole).here, 0, "a replica serves no slot itself");
        assert_eq!(cluster_slots_served_by("me", &[Value::Nil, Value::Int(3)]).here, 0, "odd answers count nothing");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("rediss://default:s3cret@cache:6380/0"), "rediss://default:***@cache:6380/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
