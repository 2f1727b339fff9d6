//! The `poslake ingest` configuration file (TOML). Flags and environment variables override it; it overrides the
//! defaults. Unknown keys are errors, and every value is validated before anything starts. `deploy/poslake.toml`
//! is the documented example.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every setting of an ingest run. The doc comment of each field states its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Where files arrive: a local folder, or an Azure Blob Storage / ADLS Gen2 URL (`az://container/prefix`,
    /// `abfss://…`, `https://…`). Default `poslake-data/staging`.
    pub staging: PathBuf,
    /// The lake root (catalog, warehouse, raw archive, dedup store). Default `poslake-data/lake`.
    pub lake: PathBuf,
    /// Where raw files are archived (`bronze/raw/…` below it), if not in the lake: a local folder, or an Azure Blob
    /// Storage / ADLS Gen2 URL as for staging. Default: absent, the lake root.
    pub archive: Option<PathBuf>,
    /// The Iceberg catalog's database, if not SQLite in the lake: a PostgreSQL URL (`postgres://USER@HOST/DB`),
    /// which workers on several hosts sharing the lake's folder can all use. Default: absent, `<lake>/catalog.db`.
    pub catalog: Option<String>,
    /// Parser actors (CPU bound). Default: one per core.
    pub parsers: Option<usize>,
    /// Downloader actors (I/O bound): the GETs in flight at once. Default 16 for a local folder, 64 for Azure,
    /// where each GET waits on the network (see `downloaders()`).
    pub downloaders: Option<usize>,
    /// Archiver actors (I/O bound): the archive writes in flight at once. Default 8 for an archive in a local
    /// folder (the lake's, by default), 32 for one in Azure, where each write waits on the network (see
    /// `archivers()`).
    pub archivers: Option<usize>,
    /// Files per write batch. Default 16.
    pub batch_files: usize,
    /// A partial batch is written after this many milliseconds. Default 500.
    pub flush_interval_ms: u64,
    /// Files in flight at most; bounds memory. Default 32 for a local folder, 128 for Azure staging (enough for its
    /// downloaders and the stages after them), 64 when only the archive is in Azure.
    pub max_files_in_flight: Option<u32>,
    /// Raw MiB in flight at most; bounds memory (parsed files take several times their raw size). Default 32.
    pub max_mib_in_flight: u64,
    /// Files per Iceberg commit. Default 2000.
    pub commit_files: u64,
    /// Seconds between commits at most. Default 10.
    pub commit_interval_secs: u64,
    /// Tries per file before it is dead-lettered. Default 3.
    pub max_attempts: u32,
    /// Runs that try a file whose reads (or archive copy) keep failing: each but the last defers it to the next
    /// run, and the last gives it up as a dead letter (`poslake replay` takes it again). Bounds the ledger and
    /// dead-letter rows a file that can never be read adds. Default 24 (4 hours of a service ingesting every 10
    /// minutes).
    pub max_deferred_runs: u32,
    /// Snapshots kept per table: older ones are expired once their commits are complete, so that each commit's
    /// cost stays bounded. 0 keeps every snapshot. Default 100.
    pub keep_snapshots: usize,
    /// Small manifests (under 1 MiB) a table may gather before they are merged into one, checked at the expiry's
    /// times, or every 25 commits when `keep_snapshots` is 0 (like Java Iceberg's
    /// `commit.manifest.min-count-to-merge`). 0 never merges. Default 100.
    pub min_manifests_to_merge: usize,
    /// Run as a service: ingest again every this many seconds (files arrive all day), until SIGTERM or Ctrl-C. 0
    /// runs once and exits. Default 0.
    pub every_secs: u64,
    /// As a service, consecutive failed runs after which the process gives up (exit 1), so that an orchestrator
    /// sees it; each failed run is logged and the next one tries again. Default 3.
    pub max_failed_runs: u32,
    /// Workers sharing one staging area and one lake (with a Redis dedup store): each takes only the files routed
    /// to it. A count (each worker given its `worker_index`), or `"auto"`: the live workers share the staging area
    /// out among themselves through leases in Redis, and take over the share of one that stops. Default 1.
    pub workers: Workers,
    /// This worker's index, from 0 to `workers` - 1 (a count of workers only). Default 0.
    pub worker_index: u32,
    /// With `workers = "auto"`: how long a worker's heartbeat and leases last unrenewed (they are renewed every third
    /// of it), which is how long the share of a worker that was killed waits. Default 30.
    pub route_lease_secs: u64,
    /// How long a run waits at its start for the commits other processes have in progress (their files may be its
    /// own), and, with a shared dedup store, how old a commit's checks may be before it checks its keys again (its
    /// process was paused, and another may have landed the same sales meanwhile). Default 60.
    pub commit_wait_secs: u64,
    /// A regular expression whose first capture group, found in a file's staging path, routes the file to a worker
    /// (e.g. `site=([^/]+)`); absent or not matching, the file's folder does. Default: absent.
    pub route_by: Option<String>,
    /// Which transactions are new: the `[dedup]` section.
    pub dedup: DedupConfig,
}

/// How the workers sharing a staging area split it: a fixed count, or `auto` (leases in Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Count(u32),
    Auto,
}

impl Workers {
    /// More than one worker may be taking files.
    pub fn is_shared(self) -> bool {
        self != Workers::Count(1)
    }
}

impl std::str::FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Workers::Auto),
            n => n.parse().map(Workers::Count).map_err(|_| format!("workers is a count or \"auto\", not {n:?}")),
        }
    }
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Count(n) => write!(f, "{n}"),
            Workers::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Count(n) => s.serialize_u32(*n),
            Workers::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Count(i64),
            Word(String),
            // Anything else, so that the error can quote it (serde's own for an untagged enum names neither).
            Other(toml::Value),
        }
        let not = |shown: &dyn std::fmt::Display| format!("workers is a count or \"auto\", not {shown}");
        match Written::deserialize(d)? {
            Written::Count(n) => u32::try_from(n).map(Workers::Count).map_err(|_| serde::de::Error::custom(not(&n))),
            Written::Word(w) => w.parse().map_err(serde::de::Error::custom),
            Written::Other(v) => Err(serde::de::Error::custom(not(&v))),
        }
    }
}

/// Where dedup keeps the keys already ingested (`[dedup]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// `embedded` (exact, in the lake; no server), `redis-bitmap` (Bloom filter in plain Redis strings, any
    /// Redis-protocol server), `redis-bloom` (the server's `BF.*` commands) or `redis` (`redis-bloom` when the
    /// server has it, else `redis-bitmap`). Default `embedded`.
    pub backend: DedupBackend,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Prefix of every Redis key poslake uses. Default `poslake`.
    pub key_prefix: String,
    /// Redis connections at most. Default 20.
    pub pool_size: usize,
    /// Keys per round trip to Redis. Default 500.
    pub keys_per_round_trip: usize,
    /// Timeout of one connect or round trip, ms. Default 5000.
    pub timeout_ms: u64,
    /// How long the pipeline waits for an unreachable Redis before the run fails, s. Default 300.
    pub unavailable_limit_secs: u64,
    /// Filters are partitioned by business-date period: `day`, `month` or `year`. Default `month`.
    pub period: DedupPeriod,
    /// Distinct keys one period's filter is sized for. Default 100,000,000.
    pub expected_keys_per_period: u64,
    /// Target false-positive rate at that many keys. Default 0.001.
    pub false_positive_rate: f64,
    /// Largest Redis string of a filter shard, MiB. Default 128.
    pub max_shard_mib: u64,
    /// Files the Redis file index (the files already ingested, shared by the workers) is sized for when it is
    /// created. Default 100,000,000.
    pub expected_files: u64,
    /// Whether a worker of several claims its keys in flight in Redis, so that two workers taking one sale at once
    /// land it once (see `ingest::claims`). Default true; off saves about a Redis command per key where routing by
    /// site already keeps each sale's copies on one worker.
    pub claim_in_flight: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DedupBackend {
    Embedded,
    Redis,
    RedisBitmap,
    RedisBloom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DedupPeriod {
    Day,
    Month,
    Year,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            backend: DedupBackend::Embedded,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "poslake".into(),
            pool_size: 20,
            keys_per_round_trip: 500,
            timeout_ms: 5000,
            unavailable_limit_secs: 300,
            period: DedupPeriod::Month,
            expected_keys_per_period: 100_000_000,
            false_positive_rate: 0.001,
            max_shard_mib: 128,
            expected_files: 100_000_000,
            claim_in_flight: true,
        }
    }
}

impl DedupConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts: [(&str, u64); 7] = [
            ("dedup.pool_size", self.pool_size as u64),
            ("dedup.keys_per_round_trip", self.keys_per_round_trip as u64),
            ("dedup.timeout_ms", self.timeout_ms),
            ("dedup.expected_keys_per_period", self.expected_keys_per_period),
            ("dedup.max_shard_mib", self.max_shard_mib),
            ("dedup.unavailable_limit_secs", self.unavailable_limit_secs),
            ("dedup.expected_files", self.expected_files),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        let ceilings: [(&str, u64, u64, &str); 6] = [
            ("dedup.expected_keys_per_period", self.expected_keys_per_period, MAX_EXPECTED_KEYS, ""),
            ("dedup.expected_files", self.expected_files, MAX_EXPECTED_KEYS, ""),
            ("dedup.max_shard_mib", self.max_shard_mib, MAX_SHARD_MIB, " (Redis's largest string)"),
            ("dedup.timeout_ms", self.timeout_ms, MAX_TIMEOUT_MS, ""),
            ("dedup.unavailable_limit_secs", self.unavailable_limit_secs, MAX_UNAVAILABLE_SECS, ""),
            ("dedup.keys_per_round_trip", self.keys_per_round_trip as u64, MAX_KEYS_PER_ROUND_TRIP, ""),
        ];
        if let Some((name, value, most, why)) = ceilings.iter().find(|(_, v, most, _)| v > most) {
            return Err(ConfigError::Invalid(format!("{name} must be at most {most}{why}, not {value}")));
        }
        if !(self.false_positive_rate >= MIN_FALSE_POSITIVE_RATE && self.false_positive_rate < 0.5) {
            return Err(ConfigError::Invalid(format!(
                "dedup.false_positive_rate must be at least {MIN_FALSE_POSITIVE_RATE} and below 0.5, not {}",
                self.false_positive_rate
            )));
        }
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://")) {
            return Err(ConfigError::Invalid(format!(
                "dedup.redis_url must start with redis:// or rediss://, not {:?}",
                self.redis_url
            )));
        }
        // The whole URL is read now, so that a typo is refused before anything (the lake folder) is made. Its
        // text is not repeated: it may hold a password.
        #[cfg(feature = "lake")]
        if self.backend != DedupBackend::Embedded {
            redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())
                .map_err(|e| ConfigError::Invalid(format!("dedup.redis_url is not a Redis URL: {e}")))?;
        }
        Ok(())
    }
}

/// The most keys one period's filter may be sized for: a trillion (about 1.9 TB of Redis at 0.1%). Past it, a
/// shorter `period` splits the keys over more filters.
pub const MAX_EXPECTED_KEYS: u64 = 1_000_000_000_000;
/// A shard is one Redis string, and Redis strings hold at most 512 MiB.
pub const MAX_SHARD_MIB: u64 = 512;
/// The lowest false-positive rate a filter is sized for (about 45 bits per key).
pub const MIN_FALSE_POSITIVE_RATE: f64 = 1e-9;
/// The longest timeout of one connect or round trip: ten minutes.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// The longest wait for an unreachable Redis: a day.
pub const MAX_UNAVAILABLE_SECS: u64 = 24 * 3600;
/// Keys per round trip at most: a pipeline of more would hold the server up for other clients.
pub const MAX_KEYS_PER_ROUND_TRIP: u64 = 100_000;

/// The most runs `max_deferred_runs` may let try a file.
pub const MAX_DEFERRED_RUNS: u32 = 100;

/// The longest interval of a service (`every_secs`): a week.
pub const MAX_EVERY_SECS: u64 = 7 * 24 * 3600;

/// The staging location as a URL, if it is written as one (`az://…`, `file://…`); else it is a folder path. The one
/// rule both the staging store (`ingest::staging::Staging::open`) and the remote defaults follow.
pub fn staging_url(staging: &Path) -> Option<&str> {
    staging.to_str().filter(|s| s.contains("://"))
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            staging: PathBuf::from("poslake-data/staging"),
            lake: PathBuf::from("poslake-data/lake"),
            archive: None,
            catalog: None,
            parsers: None,
            downloaders: None,
            archivers: None,
            batch_files: 16,
            flush_interval_ms: 500,
            max_files_in_flight: None,
            max_mib_in_flight: 32,
            commit_files: 2000,
            commit_interval_secs: 10,
            max_attempts: 3,
            max_deferred_runs: 24,
            keep_snapshots: 100,
            min_manifests_to_merge: 100,
            every_secs: 0,
            max_failed_runs: 3,
            workers: Workers::Count(1),
            worker_index: 0,
            route_lease_secs: 30,
            commit_wait_secs: 60,
            route_by: None,
            dedup: DedupConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: PathBuf, error: Box<toml::de::Error> },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The lake is a local folder (staging and the archive may be URLs; the lake may not): a URL given as the lake would
/// otherwise be taken as a relative folder named `file:` or `az:`, and a file in its place fails later and vaguely.
pub fn check_lake(lake: &std::path::Path) -> Result<(), ConfigError> {
    let text = lake.to_string_lossy();
    if let Some((scheme, rest)) = text.split_once("://") {
        let hint = if scheme == "file" { format!(" (give the path itself: {rest})") } else { String::new() };
        return Err(ConfigError::Invalid(format!(
            "the lake is a local folder, not a URL: {text}{hint}; staging and the archive may be URLs"
        )));
    }
    if lake.exists() && !lake.is_dir() {
        return Err(ConfigError::Invalid(format!("the lake {text} is a file: the lake is a folder")));
    }
    Ok(())
}

impl IngestConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file without validating it: for flags to be applied over it first (a file may leave
    /// to a flag what makes it valid, e.g. `workers = "auto"` with `--dedup redis`).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.into(), error })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), error: Box::new(e) })
    }

    /// Whether staging is a remote store (a URL other than `file://`): each GET then waits on the network, and
    /// more of them must be in flight. With 20 ms added to each response (a proxy in front of Azurite, 1,015 files
    /// of 206 KB, 2 cores), 64 downloaders and 128 files in flight ran 637-690 files/s against 402-453 with the
    /// folder defaults; without the added latency, 756-766 against 730-735 (peak RSS 158-181 MiB against 123-130).
    pub fn staging_is_remote(&self) -> bool {
        staging_url(&self.staging).is_some_and(|url| !url.starts_with("file://"))
    }

    /// Downloaders, resolved: the setting, else 16 for a folder and 64 for a remote store.
    pub fn downloaders(&self) -> usize {
        self.downloaders.unwrap_or(if self.staging_is_remote() { 64 } else { 16 })
    }

    /// Whether the raw archive is in a remote store: each archive write then waits on the network.
    pub fn archive_is_remote(&self) -> bool {
        self.archive.as_deref().and_then(staging_url).is_some_and(|url| !url.starts_with("file://"))
    }

    /// Archivers, resolved: the setting, else 8 for a local archive and 32 for a remote one.
    pub fn archivers(&self) -> usize {
        self.archivers.unwrap_or(if self.archive_is_remote() { 32 } else { 8 })
    }

    /// Files in flight at most, resolved: the setting, else 128 with remote staging (downloads wait on the network),
    /// 64 with a remote archive and local staging, 32 with both local. A file waits for its archive write after it
    /// was parsed, holding its rows, so a remote archive gets fewer than remote staging: with an archive behind a
    /// 20 ms proxy in front of Azurite (1,015 files of 206 KB, 2 cores), 32 archivers and 64 files ran 346-354
    /// files/s at 183-191 MiB peak, 64 and 128 ran 355-372 files/s at 255-259 MiB, and 8 and 32 ran 229-241 files/s
    /// at 139-145 MiB.
    pub fn max_files_in_flight(&self) -> u32 {
        let default = if self.staging_is_remote() {
            128
        } else if self.archive_is_remote() {
            64
        } else {
            32
        };
        self.max_files_in_flight.unwrap_or(default)
    }

    /// Every count and bound must be at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&str, u64); 12] = [
            ("parsers", self.parsers.map_or(1, |p| p as u64)),
            ("downloaders", self.downloaders() as u64),
            ("archivers", self.archivers() as u64),
            ("batch_files", self.batch_files as u64),
            ("flush_interval_ms", self.flush_interval_ms),
            ("max_files_in_flight", u64::from(self.max_files_in_flight())),
            ("max_mib_in_flight", self.max_mib_in_flight),
            ("commit_files", self.commit_files),
            ("commit_interval_secs", self.commit_interval_secs),
            ("max_attempts", u64::from(self.max_attempts)),
            ("max_failed_runs", u64::from(self.max_failed_runs)),
            ("workers", if let Workers::Count(n) = self.workers { u64::from(n) } else { 1 }),
        ];
        if let Some((name, _)) = checks.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        if !(1..=MAX_DEFERRED_RUNS).contains(&self.max_deferred_runs) {
            return Err(ConfigError::Invalid(format!(
                "max_deferred_runs must be between 1 and {MAX_DEFERRED_RUNS}, not {}",
                self.max_deferred_runs
            )));
        }
        check_lake(&self.lake)?;
        if self.every_secs > MAX_EVERY_SECS {
            return Err(ConfigError::Invalid(format!(
                "every_secs (--every) {} s is over a week ({MAX_EVERY_SECS} s): run the ingest from a scheduler instead",
                self.every_secs
            )));
        }
        if let Some(url) = &self.catalog
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "catalog must be a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE), or absent for SQLite in the lake"
                    .into(),
            ));
        }
        if self.workers == Workers::Auto && self.worker_index != 0 {
            return Err(ConfigError::Invalid(
                "worker_index is for a count of workers: with workers = auto each worker claims its share itself"
                    .into(),
            ));
        }
        #[cfg(feature = "lake")]
        self.route().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.workers.is_shared() && self.dedup.backend == DedupBackend::Embedded {
            return Err(ConfigError::Invalid(format!(
                "workers = {} share one lake and need a shared dedup store (redis-bitmap, redis-bloom or redis): the \
                 embedded store is open to one process at a time",
                self.workers
            )));
        }
        if !(3..=3600).contains(&self.route_lease_secs) {
            return Err(ConfigError::Invalid(format!(
                "route_lease_secs must be between 3 and 3600, not {}",
                self.route_lease_secs
            )));
        }
        if !(1..=3600).contains(&self.commit_wait_secs) {
            return Err(ConfigError::Invalid(format!(
                "commit_wait_secs must be between 1 and 3600, not {}",
                self.commit_wait_secs
            )));
        }
        self.dedup.validate()
    }

    /// Which staging files this worker takes, with a count of workers (with `auto`, the route this worker's
    /// leases make: [`crate::ingest::route::Route::leased`]; this checks its pattern).
    #[cfg(feature = "lake")]
    pub fn route(&self) -> Result<crate::ingest::route::Route, crate::ingest::route::RouteError> {
        let workers = if let Workers::Count(n) = self.workers { n } else { 1 };
        crate::ingest::route::Route::new(workers, self.worker_index, self.route_by.as_deref())
    }

    #[cfg(feature = "lake")]
    pub fn pipeline(&self) -> poslake_actors::PipelineConfig {
        let mut p = poslake_actors::PipelineConfig {
            downloaders: self.downloaders(),
            archivers: self.archivers(),
            batch_files: self.batch_files,
            flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            limits: poslake_actors::FlowLimits {
                max_files: self.max_files_in_flight(),
                max_bytes: self.max_mib_in_flight << 20,
            },
            max_attempts: self.max_attempts,
            ..poslake_actors::PipelineConfig::default()
        };
        if let Some(n) = self.parsers {
            p.parsers = n;
        }
        p
    }

    #[cfg(feature = "lake")]
    pub fn commit_policy(&self) -> crate::ingest::CommitPolicy {
        crate::ingest::CommitPolicy {
            files: self.commit_files,
            interval: std::time::Duration::from_secs(self.commit_interval_secs),
            keep_snapshots: self.keep_snapshots,
            min_manifests_to_merge: self.min_manifests_to_merge,
        }
    }
}

/// This worker's name in commit ids and among the workers sharing staging: `POSLAKE_WORKER_ID`, else `HOSTNAME`,
/// else `local`. A variable set but empty counts as unset (it gave a nameless worker).
pub fn worker_name() -> String {
    ["POSLAKE_WORKER_ID", "HOSTNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "local".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_workers_need_a_shared_store_and_a_valid_route() {
        let invalid = |c: IngestConfig, says: &str| match c.validate() {
            Err(ConfigError::Invalid(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected an error about {says}: {other:?}"),
        };
        invalid(IngestConfig { workers: Workers::Count(2), ..IngestConfig::default() }, "shared dedup store");
        invalid(IngestConfig { workers: Workers::Auto, ..IngestConfig::default() }, "workers = auto share");
        let redis = DedupConfig { backend: DedupBackend::RedisBitmap, ..DedupConfig::default() };
        let two = IngestConfig { workers: Workers::Count(2), worker_index: 1, dedup: redis, ..IngestConfig::default() };
        assert!(two.validate().is_ok());
        invalid(IngestConfig { worker_index: 2, ..two.clone() }, "worker_index 2");
        invalid(IngestConfig { workers: Workers::Count(0), ..two.clone() }, "workers must be at least 1");
        let auto = IngestConfig { workers: Workers::Auto, worker_index: 0, ..two.clone() };
        assert!(auto.validate().is_ok());
        invalid(IngestConfig { worker_index: 1, ..auto.clone() }, "claims its share itself");
        invalid(IngestConfig { route_lease_secs: 1, ..auto.clone() }, "route_lease_secs");
        invalid(IngestConfig { commit_wait_secs: 0, ..auto.clone() }, "commit_wait_secs");
        assert_eq!(toml::from_str::<IngestConfig>("workers = \"auto\"").expect("auto").workers, Workers::Auto);
        assert_eq!(toml::from_str::<IngestConfig>("workers = 4").expect("4").workers, Workers::Count(4));
        assert!(toml::from_str::<IngestConfig>("workers = \"many\"").is_err());
        assert_eq!("auto".parse::<Workers>(), Ok(Workers::Auto));
        assert!("-1".parse::<Workers>().is_err());
        invalid(IngestConfig { route_by: Some("site=(".into()), ..two.clone() }, "route_by");
        invalid(IngestConfig { route_by: Some("site=[0-9]+".into()), ..two }, "capture group");
        invalid(IngestConfig { every_secs: u64::MAX, ..IngestConfig::default() }, "over a week");
        for runs in [0, MAX_DEFERRED_RUNS + 1] {
            invalid(IngestConfig { max_deferred_runs: runs, ..IngestConfig::default() }, "max_deferred_runs");
        }
    }

    #[test]
    fn dedup_settings_have_ceilings_and_the_redis_url_is_read_whole() {
        let refused = |d: DedupConfig, says: &str| match d.validate() {
            Err(ConfigError::Invalid(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected an error about {says}: {other:?}"),
        };
        let base = DedupConfig { backend: DedupBackend::RedisBitmap, ..DedupConfig::default() };
        assert!(base.validate().is_ok());
        let at_most = DedupConfig {
            expected_keys_per_period: MAX_EXPECTED_KEYS,
            max_shard_mib: MAX_SHARD_MIB,
            false_positive_rate: MIN_FALSE_POSITIVE_RATE,
            timeout_ms: MAX_TIMEOUT_MS,
            unavailable_limit_secs: MAX_UNAVAILABLE_SECS,
            ..base.clone()
        };
        assert!(at_most.validate().is_ok(), "the ceilings themselves are allowed");
        refused(DedupConfig { expected_keys_per_period: u64::MAX, ..base.clone() }, "expected_keys_per_period");
        refused(DedupConfig { expected_files: MAX_EXPECTED_KEYS + 1, ..base.clone() }, "expected_files");
        refused(DedupConfig { max_shard_mib: 513, ..base.clone() }, "Redis's largest string");
        refused(DedupConfig { timeout_ms: u64::MAX, ..base.clone() }, "dedup.timeout_ms must be at most");
        refused(DedupConfig { unavailable_limit_secs: u64::MAX, ..base.clone() }, "unavailable_limit_secs");
        refused(DedupConfig { false_positive_rate: 1e-300, ..base.clone() }, "false_positive_rate");
        refused(DedupConfig { redis_url: "redis://:pw@[bad".into(), ..base.clone() }, "is not a Redis URL");
        // The embedded store never uses the URL.
        assert!(DedupConfig { redis_url: "redis://:pw@[bad".into(), ..DedupConfig::default() }.validate().is_ok());
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/poslake.toml");
        assert_eq!(IngestConfig::load(&path).expect("example loads"), IngestConfig::default());
    }

    #[test]
    fn a_workers_value_that_is_neither_a_count_nor_auto_is_quoted_in_the_error() {
        assert_eq!(toml::from_str::<IngestConfig>("workers = 3").expect("count").workers, Workers::Count(3));
        assert_eq!(toml::from_str::<IngestConfig>("workers = \"auto\"").expect("auto").workers, Workers::Auto);
        for (text, quoted) in
            [("workers = -1", "not -1"), ("workers = 1.5", "not 1.5"), ("workers = \"three\"", "not \"three\"")]
        {
            let e = toml::from_str::<IngestConfig>(text).expect_err(text).to_string();
            assert!(e.contains("workers is a count or \"auto\"") && e.contains(quoted), "{text}: {e}");
        }
    }

    #[test]
    fn a_lake_given_as_a_url_or_a_file_is_refused_with_the_reason() {
        let url = IngestConfig { lake: "file:///tmp/lake".into(), ..IngestConfig::default() };
        let e = url.validate().expect_err("a URL").to_string();
        assert!(e.contains("not a URL") && e.contains("/tmp/lake)"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("afile");
        std::fs::write(&file, b"x").expect("file");
        let e = IngestConfig { lake: file, ..IngestConfig::default() }.validate().expect_err("a file").to_string();
        assert!(e.contains("is a file"), "{e}");
        assert!(IngestConfig { lake: dir.path().join("new"), ..IngestConfig::default() }.validate().is_ok());
    }

    #[test]
    fn round_trips_and_refuses_unknown_keys_and_zeros() {
        let c = IngestConfig { parsers: Some(3), commit_files: 7, ..IngestConfig::default() };
        let text = toml::to_string(&c).expect("serialize");
        assert_eq!(toml::from_str::<IngestConfig>(&text).expect("parse"), c);
        assert!(toml::from_str::<IngestConfig>("batchfiles = 3").is_err(), "a misspelt key is an error");
        let zero = IngestConfig { batch_files: 0, ..IngestConfig::default() };
        assert!(matches!(zero.validate(), Err(ConfigError::Invalid(m)) if m.contains("batch_files")));
        let zero = IngestConfig { downloaders: Some(0), ..IngestConfig::default() };
        assert!(matches!(zero.validate(), Err(ConfigError::Invalid(m)) if m.contains("downloaders")));
        let zero = IngestConfig { commit_interval_secs: 0, ..IngestConfig::default() };
        assert!(matches!(zero.validate(), Err(ConfigError::Invalid(m)) if m.contains("commit_interval_secs")));
    }

    #[test]
    fn remote_staging_gets_more_downloads_in_flight_unless_told_otherwise() {
        let folder = IngestConfig::default();
        assert_eq!((folder.downloaders(), folder.max_files_in_flight()), (16, 32));
        let file_url = IngestConfig { staging: "file:///data/pos".into(), ..IngestConfig::default() };
        assert_eq!((file_url.downloaders(), file_url.max_files_in_flight()), (16, 32));
        let azure = IngestConfig { staging: "az://landing/pos".into(), ..IngestConfig::default() };
        assert_eq!((azure.downloaders(), azure.max_files_in_flight()), (64, 128));
        let p = azure.pipeline();
        assert_eq!((p.downloaders, p.limits.max_files), (64, 128));
        let set = IngestConfig { downloaders: Some(8), max_files_in_flight: Some(16), ..azure };
        assert_eq!((set.downloaders(), set.max_files_in_flight()), (8, 16));
    }

    #[test]
    fn a_catalog_must_be_postgres() {
        let with = |url: &str| IngestConfig { catalog: Some(url.into()), ..IngestConfig::default() }.validate();
        assert!(with("postgres://poslake@db:5432/lake").is_ok());
        assert!(with("postgresql://poslake:secret@db/lake").is_ok());
        let err = with("mysql://root@db/lake").expect_err("not PostgreSQL").to_string();
        assert!(err.contains("PostgreSQL"), "{err}");
        assert!(with("/var/lib/poslake/catalog.db").is_err());
    }

    #[test]
    fn a_remote_archive_gets_more_writes_in_flight_unless_told_otherwise() {
        let in_lake = IngestConfig::default();
        assert_eq!((in_lake.archivers(), in_lake.max_files_in_flight()), (8, 32));
        let folder = IngestConfig { archive: Some("/mnt/archive".into()), ..IngestConfig::default() };
        assert_eq!((folder.archivers(), folder.max_files_in_flight()), (8, 32));
        let azure = IngestConfig { archive: Some("az://archive/pos".into()), ..IngestConfig::default() };
        assert_eq!((azure.archivers(), azure.downloaders(), azure.max_files_in_flight()), (32, 16, 64));
        let p = azure.pipeline();
        assert_eq!((p.archivers, p.limits.max_files), (32, 64));
        let both = IngestConfig { staging: "az://landing/pos".into(), ..azure.clone() };
        assert_eq!((both.archivers(), both.downloaders(), both.max_files_in_flight()), (32, 64, 128));
        let set = IngestConfig { archivers: Some(4), ..azure };
        assert_eq!(set.archivers(), 4);
        assert!(IngestConfig { archivers: Some(0), ..IngestConfig::default() }.validate().is_err());
    }
}
