//! The Redis connection pool the Redis stores share: a bounded deadpool of multiplexed connections (TLS with
//! `rediss://`, AUTH from the URL), a timeout on every round trip, and retries with exponential backoff and full
//! jitter while the server is unreachable. Every command poslake sends is idempotent (bit sets, set adds, reads),
//! so a round trip whose answer was lost is simply sent again.
//!
//! While Redis is down the caller waits here, which holds up the pipeline behind it (backpressure): nothing is
//! lost or duplicated, a warning says so (again every 30 s while it lasts), one line says when it is back, and
//! past the configured limit the caller gets [`DedupError::Unavailable`].
//!
//! A Redis Cluster whose slots are spread over several nodes is reached through a cluster connection. Exactness rests
//! on the order in which a commit's writes reach the server (its keys, then its applied mark), and only one hash slot
//! keeps that order: it lives on one primary at a time, whose replicas and append-only file keep it. So the keys are
//! laid out in one of two ways ([`Layout`]): all in one slot, when the key prefix holds a hash tag (`{poslake}`); or
//! each business-date period's filter, generation and applied marks in the period's own slot, spread over the
//! primaries, when it holds none (docs/dedup.md, "Redis client").

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{Hook, Metrics, Object, RecycleError, RecycleResult};
use futures::{StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, Pipeline, RedisError};

use super::DedupError;
use crate::config::{DedupConfig, DedupPeriod};
use crate::error_text::one_line;

pub struct RedisPool {
    connections: Connections,
    /// The URL without its password, for messages.
    url: String,
    prefix: String,
    timeout: Duration,
    limit: Duration,
    /// The generation this process works against (see [`super::Dedup::generation`]).
    generation: Mutex<Option<String>>,
    /// The outage under way, if any: one warning for all the callers it holds up.
    health: Mutex<Health>,
    /// Whether the server may have lost writes since a caller last asked; shared with the pool's connection hook.
    watch: Arc<ServerWatch>,
    layout: Layout,
    /// [`Layout::ByPeriod`]: the periods whose generation this process has checked on first use (see
    /// [`RedisPool::enter`]).
    entered: Mutex<BTreeSet<String>>,
}

/// Where poslake's keys live on a Redis Cluster whose slots several primaries share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every key in one hash slot: one server or endpoint, or a cluster with a hash tag in the key prefix. One
    /// generation and one set of applied marks for the whole store.
    OneSlot,
    /// A cluster with no hash tag in the key prefix: each period's filter, its generation and its applied marks
    /// share the period's hash tag (`{2026-11}`), so periods spread over the primaries while a commit's keys and
    /// its mark stay in order within each period. The shared keys (the store's generation, the commits' period
    /// lists, the file index, the reconcile fence) share the tag `{dedup}`. A commit is applied when every period it
    /// touched holds its mark; every period's generation equals the store's, and a period that lost its state
    /// (its generation gone) makes a new store generation, so that every worker re-adds what it lacks.
    ByPeriod,
}

/// Which periods a commit's keys fall in, for [`RedisPool::mark_applied`] in the [`Layout::ByPeriod`] layout.
pub enum Periods<'a> {
    These(&'a [String]),
    /// Every period the store has (a reload of every key, the marker of an expired history).
    All,
}

/// What tells a caller that the server may have lost its last writes: failed round trips, and new connections that
/// reach another server process than the last ones did.
#[derive(Default)]
struct ServerWatch {
    /// Set by a round trip that succeeded after a failure, or by a new connection to a new server process.
    reconnected: AtomicBool,
    /// Round trips that failed, ever (and new server processes seen): a change tells a caller that the server may
    /// have restarted meanwhile.
    failures: AtomicU64,
    /// The `run_id` of the server process the last new connection reached.
    run_id: Mutex<Option<String>>,
}

impl ServerWatch {
    /// A new connection reached the server process `run_id`. A server that restarted while a connection idled (say,
    /// within a second, from an append-only file that lost its last second) or a replica that took over behind the
    /// same address shows no failed round trip: the pool replaces the dead connection when it pings it at checkout.
    /// Only its `run_id` tells.
    fn saw(&self, run_id: &str, url: &str) {
        let Ok(mut last) = self.run_id.lock() else { return };
        if last.as_deref().is_some_and(|l| l != run_id) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            self.reconnected.store(true, Ordering::SeqCst);
            tracing::info!(
                url,
                "Redis is a new server process (restarted, or another took over): this run's \
                commits are checked again before the next check is trusted"
            );
        }
        *last = Some(run_id.to_owned());
    }
}

type Pool = deadpool::managed::Pool<Connector>;

/// A connection in use within this long is handed out again without a round trip to check it (see
/// [`Connector::recycle`]); one idle for longer is pinged first.
const TRUSTED_IDLE: Duration = Duration::from_secs(5);

/// Makes the pool's multiplexed connections, and checks one before it is handed out again only if it has been idle.
///
/// deadpool-redis's manager pings every connection on every checkout (`UNWATCH` and `PING`): one extra round trip
/// per pipeline, half of all round trips in `poslake dedup bench`. A connection in steady use needs no such check: if
/// it died, the round trip on it fails, the pool's caller counts that as any failure, takes the connection out of the
/// pool ([`Object::take`]) and retries on a new one. A connection idle for longer than [`TRUSTED_IDLE`] (which a
/// server's `timeout`, a proxy or a NAT may have closed) is still pinged, so that a quiet spell does not read as an
/// outage. poslake never sends `WATCH`, so there is nothing to `UNWATCH`.
struct Connector {
    client: redis::Client,
    config: AsyncConnectionConfig,
    pings: AtomicU64,
}

impl deadpool::managed::Manager for Connector {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        self.client.get_multiplexed_async_connection_with_config(&self.config).await
    }

    async fn recycle(&self, conn: &mut MultiplexedConnection, metrics: &Metrics) -> RecycleResult<RedisError> {
        if metrics.last_used() < TRUSTED_IDLE {
            return Ok(());
        }
        let n = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let answer: String = redis::cmd("PING").arg(&n).query_async(conn).await?;
        if answer == n { Ok(()) } else { Err(RecycleError::message(format!("PING {n} answered {answer}"))) }
    }
}

/// How round trips reach the server.
enum Connections {
    /// One endpoint (a server, a primary, a cluster of one node, or a cluster behind a proxy): a bounded pool of
    /// multiplexed connections.
    Single(Pool),
    /// A Redis Cluster whose slots several primaries share. One cluster connection (multiplexed, a connection per
    /// node), made on first use and made again after a failed round trip, so that a cluster that changed meanwhile
    /// (a failover, a node replaced) is read afresh. `nodes`: every node the cluster named at start.
    Cluster {
        client: Box<ClusterClient>,
        connection: tokio::sync::Mutex<Option<ClusterConnection>>,
        nodes: Vec<(String, u16)>,
    },
}

/// Redirects (`MOVED`, `ASK`) and lost node connections the cluster connection retries itself within one round trip:
/// none. Each must reach the pool's own retries, which count it as a failure: a primary that took over after a
/// failover may lack the last writes its replica had not received, and a caller that sees a failure re-checks its
/// run's commits before it trusts a check (see `ingest::pos_stages`). Retried inside the cluster connection, the
/// failover would go unseen. The slot map is read at connect, so no redirect is needed while the cluster stays as it is.
const CLUSTER_RETRIES: u32 = 0;

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
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|e| cfg_err(&e))?;
        let manager = Connector { client, config: conn, pings: AtomicU64::new(0) };
        let watch = Arc::new(ServerWatch::default());
        let hook = {
            let (watch, url) = (watch.clone(), url.clone());
            Hook::async_fn(move |conn: &mut MultiplexedConnection, _: &Metrics| {
                let (watch, url) = (watch.clone(), url.clone());
                Box::pin(async move {
                    // A server that refuses INFO (some managed services rename it) is not watched this way.
                    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query_async(conn).await;
                    if let Some(id) = info.ok().as_deref().and_then(run_id) {
                        watch.saw(id, &url);
                    }
                    Ok(())
                })
            })
        };
        let pool = Pool::builder(manager)
            .post_create(hook)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| cfg_err(&e))?;
        Ok(RedisPool {
            connections: Connections::Single(pool),
            url,
            prefix: config.key_prefix.clone(),
            timeout,
            limit: Duration::from_secs(config.unavailable_limit_secs),
            generation: Mutex::new(None),
            health: Mutex::new(Health::default()),
            watch,
            layout: Layout::OneSlot,
            entered: Mutex::new(BTreeSet::new()),
        })
    }

    /// Connects as [`Self::connect`] does, then looks at what the URL names: a node of a Redis Cluster whose slots
    /// several primaries share is reached through a cluster connection, its keys laid out by the key prefix (see
    /// [`Layout`]).
    pub async fn open(config: &DedupConfig) -> Result<Self, DedupError> {
        let pool = Self::connect(config)?;
        let Some((spread, nodes)) = pool.cluster_spread().await? else { return Ok(pool) };
        let tag = hash_tag(&pool.prefix).map(str::to_owned);
        let timeout = pool.timeout;
        let client = redis::cluster::ClusterClientBuilder::new(seed_urls(&config.redis_url, &nodes))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(CLUSTER_RETRIES)
            .build()
            .map_err(|e| DedupError::Config(format!("Redis Cluster at {}: {e}", pool.url)))?;
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(pool.key(GENERATION));
        let (slot,): (u32,) = pool.query(&pipe).await?;
        let layout = match &tag {
            Some(tag) => {
                tracing::info!(url = %pool.url, %spread, hash_tag = %tag, slot,
                    "Redis Cluster: every poslake key is in one hash slot, on whichever primary serves it (redirects \
                     followed)");
                Layout::OneSlot
            }
            None => {
                tracing::info!(url = %pool.url, %spread, shared_slot = slot,
                    "Redis Cluster: each business-date period's filter and applied marks in the period's own hash \
                     slot, spread over the primaries (the key prefix holds no hash tag)");
                Layout::ByPeriod
            }
        };
        Ok(RedisPool {
            connections: Connections::Cluster {
                client: Box::new(client),
                connection: tokio::sync::Mutex::new(None),
                nodes,
            },
            layout,
            ..pool
        })
    }

    /// Refuses a server that evicts any key to make room (`maxmemory-policy` `allkeys-…`): an evicted filter shard or
    /// file index bucket is lost without a sign, and its transactions and files land again (a chaos audit saw 16,828
    /// rows for 13,916 keys). The other policies evict only keys with a time to live, which the filter and the index
    /// never have, or nothing. A server that does not say (`INFO` refused) gets a warning.
    pub async fn refuse_evicting_policy(&self) -> Result<(), DedupError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("INFO").arg("memory");
        let answers = self.query_answers(&pipe).await?;
        let mut text = String::new();
        answers.iter().for_each(|a| texts_of(a, &mut text));
        let policies: BTreeSet<&str> =
            text.lines().filter_map(|l| l.trim().strip_prefix("maxmemory_policy:")).map(str::trim).collect();
        if policies.is_empty() {
            tracing::warn!(url = %self.url, "could not read the server's maxmemory-policy (INFO refused?): set it to \
                noeviction (or a volatile-… policy); a policy that evicts any key would lose filter shards silently");
            return Ok(());
        }
        match policies.iter().find(|p| p.starts_with("allkeys")) {
            Some(policy) => Err(DedupError::Config(format!(
                "the Redis server at {} has maxmemory-policy {policy}: it may evict the filter's shards and the file \
                 index's buckets to make room, losing keys without a sign (their sales would land again); set \
                 maxmemory-policy noeviction (or volatile-lru, which evicts only keys with a time to live), or give \
                 poslake a server of its own",
                self.url
            ))),
            None => Ok(()),
        }
    }

    /// The business-date period the store's filters are partitioned by: the one it was made with, kept in the store
    /// (since session 36; an older store's is told from the periods it lists), else `configured`, which `record`
    /// keeps for the workers after. Another configured period is overruled, with a log line: keys partitioned two
    /// ways would be looked for where they are not (an audit saw re-sent files land again after a change of period).
    pub async fn store_period(&self, configured: DedupPeriod, record: bool) -> Result<DedupPeriod, DedupError> {
        let key = self.key(PERIOD);
        let (stored, listed): (Option<String>, Vec<String>) =
            self.query(redis::pipe().cmd("GET").arg(&key).cmd("SRANDMEMBER").arg(self.partitions_key()).arg(1)).await?;
        let period = match stored.as_deref() {
            Some(text) => period_named(text)
                .ok_or_else(|| DedupError::Config(format!("{key} holds a period poslake cannot read: {text:?}")))?,
            None => listed.first().and_then(|label| period_of_label(label)).unwrap_or(configured),
        };
        let period = match (stored, record) {
            (None, true) => {
                // Two workers making the store at once: the first one's stands.
                let mut pipe = redis::pipe();
                pipe.cmd("SET").arg(&key).arg(period_name(period)).arg("NX").ignore().cmd("GET").arg(&key);
                let (now,): (String,) = self.query(&pipe).await?;
                period_named(&now).unwrap_or(period)
            }
            _ => period,
        };
        if period != configured {
            tracing::info!(
                store = period_name(period),
                configured = period_name(configured),
                "the dedup store keeps the business-date period its filters were made with; the configured one is \
                 not used (to change it, rebuild the store under a new key_prefix: `poslake dedup rebuild`)"
            );
        }
        Ok(period)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn by_period(&self) -> bool {
        self.layout == Layout::ByPeriod
    }

    /// Whether round trips go through a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connections, Connections::Cluster { .. })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pipeline for commands that name no key (`INFO`, `SCAN`): on a cluster it starts with a read of one of
    /// poslake's keys, so that it goes to the primary that holds them all, not to any node. (The cluster client takes
    /// the first argument of a command it does not know as a key: `COMMAND INFO` would go by `INFO`'s slot.)
    pub fn keyless_pipe(&self) -> Pipeline {
        let mut pipe = redis::pipe();
        if self.is_cluster() {
            pipe.cmd("TYPE").arg(self.key(GENERATION)).ignore();
        }
        pipe
    }

    /// A key under poslake's prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// The generation a check of period `label` reads in its round trip: the store's, or with [`Layout::ByPeriod`]
    /// the period's own (in the period's slot), which equals the store's while the period keeps its state.
    pub fn generation_key(&self, label: &str) -> String {
        if self.by_period() { self.key(&format!("dedup:{{{label}}}:generation")) } else { self.key(GENERATION) }
    }

    fn period_applied_key(&self, label: &str) -> String {
        self.key(&format!("dedup:{{{label}}}:applied"))
    }

    /// The set of every period the store holds a filter for.
    pub fn partitions_key(&self) -> String {
        if self.by_period() { self.key("{dedup}:partitions") } else { self.key("dedup:partitions") }
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
                let answer = match &self.connections {
                    Connections::Single(pool) => {
                        let mut conn = pool.get().await.map_err(|e| match e {
                            deadpool::managed::PoolError::Backend(e) => Failure::of(e),
                            other => Failure { retry: true, message: other.to_string() },
                        })?;
                        match pipe.query_async::<T>(&mut *conn).await {
                            Ok(answer) => answer,
                            Err(e) => {
                                // The connection may be dead: a recently used one is handed out again unchecked
                                // (see `Connector::recycle`), so it leaves the pool now, and the retry gets another.
                                drop(Object::take(conn));
                                return Err(Failure::of(e));
                            }
                        }
                    }
                    Connections::Cluster { client, connection, .. } => {
                        let mut conn = cluster_connection(client, connection).await?;
                        pipe.query_async::<T>(&mut conn).await.map_err(Failure::of)?
                    }
                };
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
            if let Connections::Cluster { connection, .. } = &self.connections {
                *connection.lock().await = None;
            }
            tries += 1;
            self.watch.failures.fetch_add(1, Ordering::SeqCst);
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
        self.watch.reconnected.store(true, Ordering::SeqCst);
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

    /// For a node of a Redis Cluster that does not serve every hash slot itself, who does (for messages); `None`
    /// for one endpoint: a server that is no cluster node, a cluster of one primary, or a server that cannot say
    /// (`INFO` or `CLUSTER` refused, as some managed services do), which is taken at its word.
    async fn cluster_spread(&self) -> Result<Option<(String, Vec<(String, u16)>)>, DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("cluster");
        let info: String = match self.query::<(String,)>(&pipe).await {
            Ok((info,)) => info,
            Err(DedupError::Redis { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("MYID");
        pipe.cmd("CLUSTER").arg("SLOTS");
        let (me, ranges): (String, Vec<redis::Value>) = match self.query(&pipe).await {
            Ok(answer) => answer,
            Err(DedupError::Redis { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let served = cluster_slots_served_by(&me, &ranges);
        if served.here == CLUSTER_SLOTS {
            return Ok(None);
        }
        let spread = format!(
            "this node serves {} of its {CLUSTER_SLOTS} hash slots, {} other primaries serve {}, and {} are unassigned",
            served.here,
            served.other_primaries,
            served.elsewhere,
            CLUSTER_SLOTS - served.here - served.elsewhere,
        );
        Ok(Some((spread, cluster_nodes(&ranges))))
    }

    /// The store's generation: set once (`SET NX`) by the first process to use the store, so a Redis that lost
    /// its data (restarted without persistence, flushed) shows a different or no generation. With
    /// [`Layout::ByPeriod`] every period's generation is compared with it too (see [`Self::check_periods`]).
    pub async fn generation(&self) -> Result<String, DedupError> {
        let key = self.key(GENERATION);
        let fresh = uuid::Uuid::new_v4().to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(&fresh).arg("NX").ignore().cmd("GET").arg(&key);
        let (current,): (String,) = self.query(&pipe).await?;
        let expected = self.expected_generation();
        if let Some(expected) = expected.as_ref().filter(|e| **e != current) {
            return Err(DedupError::StateLost { expected: expected.clone(), found: current });
        }
        let current = if self.by_period() { self.check_periods(current, expected.is_none()).await? } else { current };
        *self.generation.lock().map_err(|_| poisoned())? = Some(current.clone());
        Ok(current)
    }

    /// [`Layout::ByPeriod`]: whether every period's generation equals the store's `current` one. One that does not
    /// is `StateLost` for a process that expected a generation; a process adopting one (starting, or healing after a
    /// loss, before it re-adds what the store lacks) sets them right: if a period lost its state (its generation
    /// gone), the store gets a new generation first, so that every other worker notices and re-adds too.
    async fn check_periods(&self, current: String, adopting: bool) -> Result<String, DedupError> {
        let labels = self.period_labels().await?;
        let states = self.period_generations(&labels).await?;
        let stale: Vec<(&String, &Option<String>)> =
            labels.iter().zip(&states).filter(|(_, g)| g.as_deref() != Some(current.as_str())).collect();
        let Some((label, state)) = stale.first() else { return Ok(current) };
        if !adopting {
            return Err(DedupError::StateLost {
                expected: current.clone(),
                found: format!("period {label}: {}", state.as_deref().unwrap_or("(none)")),
            });
        }
        let lost: Vec<&str> = stale.iter().filter(|(_, g)| g.is_none()).map(|(l, _)| l.as_str()).collect();
        let current = if lost.is_empty() {
            current
        } else {
            let renewed = uuid::Uuid::new_v4().to_string();
            self.query::<()>(redis::pipe().cmd("SET").arg(self.key(GENERATION)).arg(&renewed).ignore()).await?;
            tracing::warn!(periods = %lost.join(" "), generation = %renewed,
                "dedup periods lost their state: the store takes a new generation, so that every worker re-adds \
                 the keys it lacks before it trusts a check");
            renewed
        };
        let to_set: Vec<&String> = labels
            .iter()
            .zip(&states)
            .filter(|(_, g)| g.as_deref() != Some(current.as_str()))
            .map(|(l, _)| l)
            .collect();
        // By index: a closure over borrowed items trips the compiler's `Send` analysis.
        let (current, to_set) = (&current, &to_set);
        futures::stream::iter(0..to_set.len())
            .map(|i| async move {
                let key = self.generation_key(to_set[i]);
                self.query::<()>(redis::pipe().cmd("SET").arg(key).arg(current).ignore()).await
            })
            .buffer_unordered(PERIOD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(current.clone())
    }

    /// Every period the store lists, and those this process entered (a listing lost with the shared slot's last
    /// writes).
    async fn period_labels(&self) -> Result<Vec<String>, DedupError> {
        let (listed,): (Vec<String>,) = self.query(redis::pipe().cmd("SMEMBERS").arg(self.partitions_key())).await?;
        let mut labels: BTreeSet<String> = listed.into_iter().collect();
        labels.extend(self.entered.lock().map_err(|_| poisoned())?.iter().cloned());
        Ok(labels.into_iter().collect())
    }

    /// Each period's own generation, if it has one.
    async fn period_generations(&self, labels: &[String]) -> Result<Vec<Option<String>>, DedupError> {
        futures::stream::iter(0..labels.len())
            .map(|i| async move {
                let (g,): (Option<String>,) =
                    self.query(redis::pipe().cmd("GET").arg(self.generation_key(&labels[i]))).await?;
                Ok::<_, DedupError>(g)
            })
            .buffered(PERIOD_CONCURRENCY)
            .try_collect()
            .await
    }

    /// [`Layout::ByPeriod`]: makes these periods' generations on first use by this process, and checks them. A
    /// period the store lists was made before, so one with no generation lost its state: that is `StateLost`, and its
    /// generation is not made again here (the heal that follows makes it, with a new store generation, so that every
    /// worker notices). A period is listed only once its generation is made. A period stamped with an older store
    /// generation (the shared slot lost its state, or a heal stamping the periods stopped half-way) kept its own
    /// state: it is stamped again. This process adopted the store's generation with a full recovery (at start, or in
    /// a heal), and a worker still on the older one notices at its next check there. Nothing to do in the one-slot
    /// layout, whose one generation every round trip reads.
    pub async fn enter(&self, labels: &[String]) -> Result<(), DedupError> {
        if !self.by_period() {
            return Ok(());
        }
        let new: Vec<&String> = {
            let entered = self.entered.lock().map_err(|_| poisoned())?;
            labels.iter().filter(|l| !entered.contains(*l)).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let expected = match self.expected_generation() {
            Some(g) => g,
            None => self.generation().await?,
        };
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.key(GENERATION));
        for label in &new {
            pipe.cmd("SISMEMBER").arg(self.partitions_key()).arg(label.as_str());
        }
        let answers: Vec<redis::Value> = self.query(&pipe).await?;
        let mut answers = answers.into_iter();
        let store: Option<String> = answers.next().and_then(|v| redis::from_redis_value(v).ok());
        self.check_generation(store)?;
        // An answer that does not read as a flag counts as listed: never a reason to make a generation again.
        let listed: Vec<bool> = answers.map(|v| redis::from_redis_value(v).unwrap_or(true)).collect();
        // By index: a closure over borrowed items trips the compiler's `Send` analysis.
        let (new, listed, expected) = (&new, &listed, &expected);
        futures::stream::iter(0..new.len())
            .map(|i| {
                let (label, listed) = (new[i], listed.get(i).copied().unwrap_or(true));
                async move {
                    let key = self.generation_key(label);
                    let mut pipe = redis::pipe();
                    if !listed {
                        pipe.cmd("SET").arg(&key).arg(expected).arg("NX").ignore();
                    }
                    pipe.cmd("GET").arg(&key);
                    let (found,): (Option<String>,) = self.query(&pipe).await?;
                    match found {
                        Some(found) if found == *expected => Ok(()),
                        Some(older) => {
                            tracing::info!(period = %label, %older, generation = %expected,
                                "dedup period stamped with an older store generation: stamped again");
                            self.query::<()>(redis::pipe().cmd("SET").arg(&key).arg(expected).ignore()).await
                        }
                        None => Err(DedupError::StateLost {
                            expected: expected.clone(),
                            found: format!("period {label}: (none)"),
                        }),
                    }
                }
            })
            .buffer_unordered(PERIOD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(self.partitions_key()).arg(new).ignore();
        self.query::<()>(&pipe).await?;
        self.entered.lock().map_err(|_| poisoned())?.extend(new.iter().map(|l| (*l).clone()));
        Ok(())
    }

    /// Adopts the store's current generation after recovering from a loss. Counted as a failure: what a check saw
    /// before may be gone (see `redis_bitmap::SeenBits`).
    pub async fn renew_generation(&self) -> Result<String, DedupError> {
        if let Ok(mut g) = self.generation.lock() {
            *g = None;
        }
        self.watch.failures.fetch_add(1, Ordering::SeqCst);
        self.generation().await
    }

    /// The generation this process expects, to check alongside a query.
    pub fn expected_generation(&self) -> Option<String> {
        self.generation.lock().ok().and_then(|g| g.clone())
    }

    /// Round trips that failed so far (see the field).
    pub fn failures(&self) -> u64 {
        self.watch.failures.load(Ordering::SeqCst)
    }

    pub fn take_reconnected(&self) -> bool {
        self.watch.reconnected.swap(false, Ordering::SeqCst)
    }

    /// Records that every key of `commits` is added. The marks are made only if the generation is still the
    /// expected one (atomically, in a script): a Redis that lost the keys must not gain their marks. One slot: one
    /// set of commit ids. [`Layout::ByPeriod`]: the mark in each of `periods` first (in the period's slot, with the
    /// period's generation, after the period's keys), then the list of those periods in the shared slot.
    pub async fn mark_applied(&self, commits: &[String], periods: Periods<'_>) -> Result<(), DedupError> {
        if commits.is_empty() {
            return Ok(());
        }
        let expected = self.expected_generation().unwrap_or_default();
        if !self.by_period() {
            for chunk in commits.chunks(MARKS_PER_SCRIPT) {
                self.mark_if_generation(
                    MARK_IF_GENERATION,
                    &self.key(GENERATION),
                    &self.key(APPLIED),
                    &expected,
                    chunk,
                )
                .await?;
            }
            return Ok(());
        }
        let labels: Vec<String> = match periods {
            Periods::These(labels) => labels.iter().collect::<BTreeSet<_>>().into_iter().cloned().collect(),
            Periods::All => self.period_labels().await?,
        };
        let (labels, expected) = (&labels, &expected);
        futures::stream::iter(0..labels.len())
            .map(|i| async move {
                for chunk in commits.chunks(MARKS_PER_SCRIPT) {
                    let (generation, applied) = (self.generation_key(&labels[i]), self.period_applied_key(&labels[i]));
                    self.mark_if_generation(MARK_IF_GENERATION, &generation, &applied, expected, chunk).await?;
                }
                Ok::<_, DedupError>(())
            })
            .buffer_unordered(PERIOD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let joined = labels.join(" ");
        let pairs: Vec<&str> = commits.iter().flat_map(|c| [c.as_str(), joined.as_str()]).collect();
        for chunk in pairs.chunks(MARKS_PER_SCRIPT * 2) {
            self.mark_if_generation(
                MARK_PERIODS_IF_GENERATION,
                &self.key(GENERATION),
                &self.key(APPLIED_IN),
                expected,
                chunk,
            )
            .await?;
        }
        Ok(())
    }

    async fn mark_if_generation<A: redis::ToRedisArgs>(
        &self,
        script: &str,
        generation: &str,
        marks: &str,
        expected: &str,
        args: &[A],
    ) -> Result<(), DedupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(script).arg(2).arg(generation).arg(marks).arg(expected).arg(args);
        let (found,): (Option<String>,) = self.query(&pipe).await?;
        match found {
            None => Ok(()),
            Some(found) => Err(DedupError::StateLost { expected: expected.to_owned(), found }),
        }
    }

    /// Which of `commits` are marked applied ([`Layout::ByPeriod`]: listed in the shared slot, and marked in every
    /// period listed with it).
    pub async fn applied(&self, commits: &[String]) -> Result<Vec<bool>, DedupError> {
        if !self.by_period() {
            return self.members(&self.key(APPLIED), commits).await;
        }
        let mut lists: Vec<Option<String>> = Vec::with_capacity(commits.len());
        for chunk in commits.chunks(1000) {
            let (found,): (Vec<Option<String>>,) =
                self.query(redis::pipe().cmd("HMGET").arg(self.key(APPLIED_IN)).arg(chunk)).await?;
            lists.extend(found);
        }
        let mut asked: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
        for (i, list) in lists.iter().enumerate() {
            for label in list.iter().flat_map(|l| l.split_whitespace()) {
                asked.entry(label).or_default().push(i);
            }
        }
        let mut out: Vec<bool> = lists.iter().map(Option::is_some).collect();
        let asked: Vec<(&str, Vec<usize>)> = asked.into_iter().collect();
        let asked = &asked;
        let answers: Vec<(usize, Vec<bool>)> = futures::stream::iter(0..asked.len())
            .map(|a| async move {
                let (label, idx) = &asked[a];
                let ids: Vec<String> = idx.iter().map(|&i| commits[i].clone()).collect();
                Ok::<_, DedupError>((a, self.members(&self.period_applied_key(label), &ids).await?))
            })
            .buffer_unordered(PERIOD_CONCURRENCY)
            .try_collect()
            .await?;
        for (a, marked) in answers {
            for (&i, m) in asked[a].1.iter().zip(marked) {
                out[i] &= m;
            }
        }
        Ok(out)
    }

    /// Whether each of `members` is in the set `key`.
    async fn members(&self, key: &str, members: &[String]) -> Result<Vec<bool>, DedupError> {
        let mut out = Vec::with_capacity(members.len());
        // SISMEMBER, pipelined, rather than SMISMEMBER: the latter needs Redis 6.2, and Azure Cache for Redis still
        // offers 6.0.
        for chunk in members.chunks(1000) {
            let mut pipe = redis::pipe();
            for m in chunk {
                pipe.cmd("SISMEMBER").arg(key).arg(m);
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

    /// Claims keys in flight for the share of the staging area that holds them (see `ingest::claims`): a key no one
    /// claims is claimed, one its own share claims stays so; the answer says, key by key, whether another share
    /// holds it. Each key is `(period label, digest, share)`. Claims live in one hash per period, a field per key
    /// (`HSETNX`: four arguments a key, where a claim by script cost more than a check and an add together). A store
    /// that lost its state since this process last looked lost its claims with it: that is `StateLost`, never
    /// "unclaimed".
    pub async fn claim(&self, keys: &[(&str, u128, &str)]) -> Result<Vec<bool>, DedupError> {
        let groups = by_period(keys.iter().map(|k| k.0));
        let groups = &groups;
        let answers: Vec<(usize, Vec<bool>)> = futures::stream::iter(0..groups.len())
            .map(|g| async move {
                let (label, idx) = &groups[g];
                Ok::<_, DedupError>((g, self.claim_in(label, &idx.iter().map(|&i| keys[i]).collect::<Vec<_>>()).await?))
            })
            .buffer_unordered(PERIOD_CONCURRENCY)
            .try_collect()
            .await?;
        let mut elsewhere = vec![false; keys.len()];
        for (g, found) in answers {
            for (&i, other) in groups[g].1.iter().zip(found) {
                elsewhere[i] = other;
            }
        }
        Ok(elsewhere)
    }

    /// [`Self::claim`] for keys of one period.
    async fn claim_in(&self, label: &str, keys: &[(&str, u128, &str)]) -> Result<Vec<bool>, DedupError> {
        let hash = self.claims_key(label);
        let mut elsewhere = vec![false; keys.len()];
        let mut asking: Vec<usize> = (0..keys.len()).collect();
        // A claim released between a `HSETNX` that found it and the read of its holder is tried again; three rounds
        // end any such race in practice, and a key still unsettled after them is taken as held elsewhere (it is then
        // quarantined, never landed twice).
        for _ in 0..3 {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(self.generation_key(label));
            for &i in &asking {
                pipe.cmd("HSETNX").arg(&hash).arg(&keys[i].1.to_le_bytes()[..]).arg(keys[i].2);
            }
            pipe.cmd("PEXPIRE").arg(&hash).arg(CLAIMS_IDLE_TTL.as_millis() as u64).ignore();
            let answers: Vec<redis::Value> = self.query(&pipe).await?;
            let mut answers = answers.into_iter();
            let generation: Option<String> =
                answers.next().map(redis::from_redis_value).transpose().map_err(|e| self.protocol(e))?;
            self.check_generation(generation)?;
            let mut held = Vec::new();
            for (&i, answer) in asking.iter().zip(answers) {
                if redis::from_redis_value::<i64>(answer).map_err(|e| self.protocol(e))? == 0 {
                    held.push(i);
                }
            }
            if held.is_empty() {
                return Ok(elsewhere);
            }
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(&hash);
            for &i in &held {
                pipe.arg(&keys[i].1.to_le_bytes()[..]);
            }
            let (holders,): (Vec<Option<Vec<u8>>>,) = self.query(&pipe).await?;
            asking.clear();
            for (i, holder) in held.into_iter().zip(holders) {
                match holder {
                    Some(h) => elsewhere[i] = h != keys[i].2.as_bytes(),
                    None => asking.push(i),
                }
            }
            if asking.is_empty() {
                return Ok(elsewhere);
            }
        }
        for i in asking {
            elsewhere[i] = true;
        }
        Ok(elsewhere)
    }

    /// Ends claims this process made (`(period label, digest)` each): their keys are in the store, or their batch
    /// was given up.
    pub async fn release_claims(&self, keys: &[(&str, u128)]) -> Result<(), DedupError> {
        let groups = by_period(keys.iter().map(|k| k.0));
        let groups = &groups;
        futures::stream::iter(0..groups.len())
            .map(|g| async move {
                let (label, idx) = &groups[g];
                let mut pipe = redis::pipe();
                pipe.cmd("HDEL").arg(self.claims_key(label));
                for &i in idx {
                    pipe.arg(&keys[i].1.to_le_bytes()[..]);
                }
                pipe.ignore();
                self.query::<()>(&pipe).await
            })
            .buffer_unordered(PERIOD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// How many keys of the period `label` are claimed (see [`Self::claim`]), run out or not.
    pub async fn claims_held(&self, label: &str) -> Result<u64, DedupError> {
        let (n,): (u64,) = self.query(redis::pipe().cmd("HLEN").arg(self.claims_key(label))).await?;
        Ok(n)
    }

    /// A period's claims: a hash of key digests to the share that claims each, in the period's slot beside its
    /// generation (on a cluster whose key prefix holds a tag, the prefix's tag rules, as for every key).
    fn claims_key(&self, label: &str) -> String {
        self.key(&format!("claims:{{{label}}}"))
    }

    fn protocol(&self, e: impl std::fmt::Display) -> DedupError {
        DedupError::Redis { url: self.url.clone(), error: format!("unexpected answer: {e}") }
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
    /// An `INFO` section of the server that holds poslake's keys; spread by period over a cluster, of each node the
    /// cluster named at start, replicas included (so that figures add up over the primaries; a replica adds its own
    /// copy's memory and replication CPU).
    async fn info(&self, section: &str) -> Result<Vec<String>, DedupError> {
        if let (Connections::Cluster { client, connection, nodes }, Layout::ByPeriod) = (&self.connections, self.layout)
        {
            use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
            let failed = |error: String| DedupError::Redis { url: self.url.clone(), error };
            let mut out = Vec::with_capacity(nodes.len());
            for (host, port) in nodes {
                let mut conn = cluster_connection(client, connection).await.map_err(|f| failed(f.message))?;
                let node =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
                let mut info = redis::cmd("INFO");
                info.arg(section);
                let answer = conn.route_command(info, node).await.map_err(|e| failed(e.to_string()))?;
                out.push(redis::from_redis_value(answer).map_err(|e| failed(e.to_string()))?);
            }
            return Ok(out);
        }
        let mut pipe = self.keyless_pipe();
        pipe.cmd("INFO").arg(section);
        let (info,): (String,) = self.query(&pipe).await?;
        Ok(vec![info])
    }

    /// The server's CPU seconds so far (user + system, from `INFO cpu`; summed over a spread cluster's nodes), if it
    /// reports them.
    pub async fn server_cpu_seconds(&self) -> Result<Option<f64>, DedupError> {
        let mut total = None;
        for info in self.info("cpu").await? {
            let field =
                |name: &str| info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()));
            if let (Some(u), Some(s)) = (field("used_cpu_user:"), field("used_cpu_sys:")) {
                total = Some(total.unwrap_or(0.0) + u + s);
            }
        }
        Ok(total)
    }

    /// Bytes the server's data takes (`used_memory` of `INFO memory`; summed over a spread cluster's nodes).
    pub async fn used_memory(&self) -> Result<Option<u64>, DedupError> {
        let mut total = None;
        for info in self.info("memory").await? {
            if let Some(used) =
                info.lines().find_map(|l| l.strip_prefix("used_memory:").and_then(|v| v.trim().parse::<u64>().ok()))
            {
                total = Some(total.unwrap_or(0) + used);
            }
        }
        Ok(total)
    }

    /// Microseconds the server spent in each command so far (`INFO commandstats`; summed over a spread cluster's
    /// nodes), by command name in lower case.
    pub async fn command_usec(&self) -> Result<std::collections::HashMap<String, f64>, DedupError> {
        let mut out = std::collections::HashMap::new();
        for info in self.info("commandstats").await? {
            for l in info.lines() {
                let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
                let Some(usec) = rest.split(',').find_map(|kv| kv.strip_prefix("usec=")?.parse::<f64>().ok()) else {
                    continue;
                };
                // Module commands are listed as registered: `BF.MADD` by valkey-bloom, `bf.madd` by Redis Stack.
                *out.entry(name.to_ascii_lowercase()).or_insert(0.0) += usec;
            }
        }
        Ok(out)
    }

    /// Spread by period over a cluster, the primary (`host:port`) that serves each of these periods now; `None` in the
    /// one-slot layout.
    pub async fn primaries_of(&self, labels: &[String]) -> Result<Vec<Option<String>>, DedupError> {
        if !self.by_period() || labels.is_empty() {
            return Ok(vec![None; labels.len()]);
        }
        // One command a round trip: the cluster client sends a command that names no key to any node.
        let (ranges,): (Vec<redis::Value>,) = self.query(redis::pipe().cmd("CLUSTER").arg("SLOTS")).await?;
        let mut out = Vec::with_capacity(labels.len());
        for label in labels {
            let (slot,): (i64,) =
                self.query(redis::pipe().cmd("CLUSTER").arg("KEYSLOT").arg(self.generation_key(label))).await?;
            out.push(slot_primary(&ranges, slot));
        }
        Ok(out)
    }

    /// Deletes every key under this pool's prefix (the bench's throwaway filters).
    pub async fn delete_prefix(&self) -> Result<u64, DedupError> {
        let pattern = format!("{}:*", self.prefix);
        if let (Connections::Cluster { client, connection, nodes }, Layout::ByPeriod) = (&self.connections, self.layout)
        {
            return self.delete_on_every_node(client, connection, nodes, &pattern).await;
        }
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut pipe = self.keyless_pipe();
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

impl RedisPool {
    /// [`Self::delete_prefix`] for keys spread over a cluster's primaries: `SCAN` runs on each node the cluster
    /// named at start (a replica lists its primary's keys again, which then delete nothing), `UNLINK` key by key.
    async fn delete_on_every_node(
        &self,
        client: &ClusterClient,
        connection: &tokio::sync::Mutex<Option<ClusterConnection>>,
        nodes: &[(String, u16)],
        pattern: &str,
    ) -> Result<u64, DedupError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let failed = |e: redis::RedisError| DedupError::Redis { url: self.url.clone(), error: e.to_string() };
        let mut deleted = 0u64;
        for (host, port) in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut conn = cluster_connection(client, connection)
                    .await
                    .map_err(|f| DedupError::Redis { url: self.url.clone(), error: f.message })?;
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
                let node =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
                let answer = conn.route_command(scan, node).await.map_err(failed)?;
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(answer)
                    .map_err(|e| DedupError::Redis { url: self.url.clone(), error: e.to_string() })?;
                for key in keys {
                    let (n,): (u64,) = self.query(redis::pipe().cmd("UNLINK").arg(&key)).await?;
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

/// The generation and the applied marks share a hash tag, so the script below may touch both in a cluster.
pub const GENERATION: &str = "{dedup}:generation";
pub const APPLIED: &str = "{dedup}:applied";
/// The business-date period the store's filters are partitioned by (see [`RedisPool::store_period`]).
const PERIOD: &str = "{dedup}:period";
/// The key digests a running `poslake reconcile` promotes (a set; see [`RedisPool::fence`]).
const RECONCILE_FENCE: &str = "{dedup}:reconcile-fence";

/// [`Layout::ByPeriod`]: each commit's list of periods (a hash), in the generation's slot.
const APPLIED_IN: &str = "{dedup}:applied-in";
/// Commits per marking script: `unpack` in Redis's Lua takes a few thousand values at most.
const MARKS_PER_SCRIPT: usize = 1000;
/// Round trips in flight to different periods.
const PERIOD_CONCURRENCY: usize = 8;

/// Claims of one round trip, at most.
const CLAIMS_PER_ROUND_TRIP: usize = 500;

/// How long a period's claims outlive the last claim made in it: claims are ended by their commits, and only those
/// of a process that died and whose share no one takes again (another layout of workers) are left for this to end.
const CLAIMS_IDLE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The positions of `labels` grouped by label, each group at most [`CLAIMS_PER_ROUND_TRIP`] long.
fn by_period<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<(&'a str, Vec<usize>)> {
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, label) in labels.enumerate() {
        groups.entry(label).or_default().push(i);
    }
    groups
        .into_iter()
        .flat_map(|(label, idx)| idx.chunks(CLAIMS_PER_ROUND_TRIP).map(|c| (label, c.to_vec())).collect::<Vec<_>>())
        .collect()
}

/// SADD the commits if the generation is ARGV[1]; otherwise return the generation found.
const MARK_IF_GENERATION: &str = r"
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return g or '(none)' end
redis.call('SADD', KEYS[2], unpack(ARGV, 2))
return false
";

/// HSET each commit (ARGV[2], ARGV[4], ...) to its periods (ARGV[3], ARGV[5], ...) if the generation is ARGV[1];
/// otherwise return the generation found.
const MARK_PERIODS_IF_GENERATION: &str = r"
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return g or '(none)' end
for i = 2, #ARGV - 1, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
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

/// The cluster connection, made now if there is none (the first round trip, or the first after a failure).
async fn cluster_connection(
    client: &ClusterClient,
    connection: &tokio::sync::Mutex<Option<ClusterConnection>>,
) -> Result<ClusterConnection, Failure> {
    let mut held = connection.lock().await;
    if let Some(conn) = held.as_ref() {
        return Ok(conn.clone());
    }
    let conn = client.get_async_connection().await.map_err(Failure::of)?;
    *held = Some(conn.clone());
    Ok(conn)
}

/// The URLs a cluster connection starts from, each time it is made: the configured one, and for a plain `redis://`
/// URL every node the cluster named at start (with the URL's user, password and database), so that a connection made
/// again after the configured node died still finds the cluster. A TLS URL is used alone: nodes are named by address,
/// which a certificate for the configured host name would not match.
fn seed_urls(configured: &str, nodes: &[(String, u16)]) -> Vec<String> {
    let mut urls = vec![configured.to_owned()];
    let Ok(base) = url::Url::parse(configured) else { return urls };
    if base.scheme() != "redis" {
        return urls;
    }
    for (host, port) in nodes {
        let mut node = base.clone();
        if node.set_host(Some(host)).is_ok() && node.set_port(Some(*port)).is_ok() {
            let node = node.to_string();
            if !urls.contains(&node) {
                urls.push(node);
            }
        }
    }
    urls
}

/// The primary (`host:port`) that `CLUSTER SLOTS` says serves `slot`.
fn slot_primary(ranges: &[redis::Value], slot: i64) -> Option<String> {
    use redis::Value;
    ranges.iter().find_map(|range| {
        let Value::Array(parts) = range else { return None };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&slot) {
            return None;
        }
        let host = match primary.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = primary.get(1) else { return None };
        Some(format!("{host}:{port}"))
    })
}

/// Every node `CLUSTER SLOTS` names (primaries and replicas), by address.
fn cluster_nodes(ranges: &[redis::Value]) -> Vec<(String, u16)> {
    use redis::Value;
    let mut nodes = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        for node in parts.iter().skip(2) {
            let Value::Array(fields) = node else { continue };
            let host = match fields.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = fields.get(1) else { continue };
            let Ok(port) = u16::try_from(*port) else { continue };
            if !host.is_empty() && !nodes.contains(&(host.clone(), port)) {
                nodes.push((host, port));
            }
        }
    }
    nodes
}

/// The `run_id` field of `INFO server`: random per server process.
fn run_id(info: &str) -> Option<&str> {
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(str::trim).filter(|id| !id.is_empty())
}

/// The hash tag of a key prefix, as Redis Cluster reads it: what lies between the first `{` and the first `}` after
/// it, if that is not empty. Every key that starts with such a prefix is in the tag's hash slot.
fn hash_tag(prefix: &str) -> Option<&str> {
    let open = prefix.find('{')?;
    let close = prefix[open + 1..].find('}')?;
    Some(&prefix[open + 1..open + 1 + close]).filter(|tag| !tag.is_empty())
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
fn period_name(period: DedupPeriod) -> &'static str {
    match period {
        DedupPeriod::Day => "day",
        DedupPeriod::Month => "month",
        DedupPeriod::Year => "year",
    }
}

fn period_named(name: &str) -> Option<DedupPeriod> {
    [DedupPeriod::Day, DedupPeriod::Month, DedupPeriod::Year].into_iter().find(|p| period_name(*p) == name)
}

/// The period a partition's label is of ([`DedupPeriod::label`]: `2026-11-29`, `2026-11`, `2026`).
fn period_of_label(label: &str) -> Option<DedupPeriod> {
    match label.len() {
        10 => Some(DedupPeriod::Day),
        7 => Some(DedupPeriod::Month),
        4 => Some(DedupPeriod::Year),
        _ => None,
    }
}

/// Every text in an answer, a line each (a cluster answers `INFO` once per node).
fn texts_of(answer: &redis::Value, out: &mut String) {
    match answer {
        redis::Value::BulkString(b) => out.push_str(&String::from_utf8_lossy(b)),
        redis::Value::SimpleString(s) => out.push_str(s),
        redis::Value::VerbatimString { text, .. } => out.push_str(text),
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().for_each(|i| texts_of(i, out)),
        redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            texts_of(k, out);
            texts_of(v, out);
        }),
        _ => {}
    }
    out.push('\n');
}

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
        assert_eq!(cluster_nodes(&split), [("127.0.0.1".to_owned(), 7000)], "every node, once");
        assert_eq!(slot_primary(&split, 5_461).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(slot_primary(&split, 16_100), None, "an unassigned slot has no primary");
    }

    #[test]
    fn a_cluster_is_sought_at_every_node_it_named_with_the_urls_credentials() {
        let nodes = [("10.0.0.2".to_owned(), 7001), ("10.0.0.1".to_owned(), 7000)];
        assert_eq!(
            seed_urls("redis://app:pw@10.0.0.1:7000/0", &nodes),
            ["redis://app:pw@10.0.0.1:7000/0", "redis://app:pw@10.0.0.2:7001/0"]
        );
        assert_eq!(seed_urls("rediss://app:pw@cache.example:6380", &nodes), ["rediss://app:pw@cache.example:6380"]);
    }

    #[test]
    fn a_hash_tag_is_read_as_redis_cluster_reads_it() {
        assert_eq!(hash_tag("{poslake}"), Some("poslake"));
        assert_eq!(hash_tag("acme:{poslake}:prod"), Some("poslake"));
        assert_eq!(hash_tag("{a}{b}"), Some("a"), "the first tag");
        assert_eq!(hash_tag("poslake"), None);
        assert_eq!(hash_tag("{}poslake"), None, "an empty tag hashes the whole key");
        assert_eq!(hash_tag("{poslake"), None);
        assert_eq!(hash_tag("}x{y}"), Some("y"));
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("rediss://default:s3cret@cache:6380/0"), "rediss://default:***@cache:6380/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
