//! `poslake dedup bench`: measures a dedup store as the ingest uses it — every key checked, then added — on
//! random keys in a throwaway key prefix, and reports keys/s, the Redis server's own CPU, memory per key against
//! the Bloom formula, and the false-positive rate measured on fresh keys.

use std::time::Instant;

use futures::StreamExt;

use chrono::NaiveDate;
use serde::Serialize;

use super::{Dedup, DedupError, DedupKey, DedupStore};
use crate::config::{DedupBackend, DedupConfig, DedupPeriod};

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub keys: u64,
    pub keys_per_call: usize,
    /// Calls in flight at once (check then add, each).
    pub callers: usize,
    /// Business-date periods the keys spread over (each its own filter; spread over a cluster's primaries when the
    /// key prefix holds no hash tag).
    pub periods: u32,
    pub seconds: f64,
    /// Keys checked and then added, per second.
    pub keys_per_second: f64,
    /// CPU seconds the Redis server spent per wall second (1.0 = one core busy), when it reports them.
    pub redis_cpu: Option<f64>,
    /// Server time per key in the check and add commands (`INFO commandstats`), microseconds.
    pub redis_usec_per_key_check: f64,
    pub redis_usec_per_key_add: f64,
    pub memory_bytes: u64,
    pub bytes_per_key: f64,
    /// The textbook Bloom filter's bytes per key at the target rate.
    pub formula_bytes_per_key: f64,
    pub fp_target: f64,
    /// Positives among keys never added.
    pub fp_measured: f64,
    pub fp_probes: u64,
    /// The file index, sized for as many files as `keys`: that many file ids added, then looked up.
    pub file_index: FileIndexBench,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileIndexBench {
    pub files: u64,
    pub adds_per_second: f64,
    pub lookups_per_second: f64,
    /// Growth of the server's `used_memory` over the adds, per file.
    pub bytes_per_file: Option<f64>,
}

/// `n` random keys over `periods` business-date periods (key i in the `i % periods`-th, counting back from
/// 2026-11-15), the same for the same seed.
pub fn random_keys_over(n: u64, seed: u64, periods: u32, period: DedupPeriod) -> Vec<DedupKey> {
    let periods = periods.max(1);
    let last = NaiveDate::from_ymd_opt(2026, 11, 15).unwrap_or_default();
    let dates: Vec<NaiveDate> = (0..periods)
        .map(|p| match period {
            DedupPeriod::Day => last - chrono::Days::new(u64::from(p)),
            DedupPeriod::Month => last - chrono::Months::new(p),
            DedupPeriod::Year => last - chrono::Months::new(p.saturating_mul(12)),
        })
        .collect();
    random_keys(n, seed).into_iter().enumerate().map(|(i, k)| DedupKey { date: dates[i % dates.len()], ..k }).collect()
}

/// `n` random keys of one business date, the same for the same seed (for the bench and the tests).
pub fn random_keys(n: u64, seed: u64) -> Vec<DedupKey> {
    let date = NaiveDate::from_ymd_opt(2026, 11, 15).unwrap_or_default();
    (0..n)
        .map(|i| {
            let h = blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
            let mut d = [0u8; 16];
            d.copy_from_slice(&h.as_bytes()[..16]);
            DedupKey { digest: u128::from_le_bytes(d), date }
        })
        .collect()
}

/// Runs the bench against the store `config` names, under a fresh key prefix sized for `keys`, and deletes what
/// it wrote afterwards.
pub async fn run(
    config: &DedupConfig,
    keys: u64,
    keys_per_call: usize,
    callers: usize,
    periods: u32,
) -> Result<BenchReport, DedupError> {
    let periods = periods.max(1);
    let prefix = format!("{}-bench-{}", config.key_prefix, uuid::Uuid::new_v4().simple());
    let config = DedupConfig {
        key_prefix: prefix.clone(),
        expected_keys_per_period: (keys / u64::from(periods)).max(1),
        backend: if config.backend == DedupBackend::Embedded { DedupBackend::Redis } else { config.backend },
        // A measurement need not wait minutes for a server that is not there.
        unavailable_limit_secs: config.unavailable_limit_secs.min(10),
        ..config.clone()
    };
    let scratch = std::env::temp_dir().join(&prefix);
    let store = std::sync::Arc::new(Dedup::open(&config, &scratch).await?);
    let pool = match &*store {
        Dedup::RedisBitmap(d) => d.pool(),
        Dedup::RedisBloom(d) => d.pool(),
        Dedup::Embedded(_) => return Err(DedupError::Config("the bench measures a Redis store".into())),
    };
    // What the bench wrote is deleted however it ends: done, failed, or stopped by a signal, so that no throwaway
    // filter of hundreds of MB stays in the server. The measurement stops at a signal by starting no new call, and
    // waits for those under way (never dropped: what they sent would land after the deletion and re-make keys).
    let measured = measure(&config, &store, pool, keys, keys_per_call, callers, periods).await;
    let deleted = pool.delete_prefix().await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = measured?;
    deleted?;
    Ok(report)
}

/// The bench itself, on the throwaway store `store` (see [`run`]).
async fn measure(
    config: &DedupConfig,
    store: &std::sync::Arc<Dedup>,
    pool: &super::RedisPool,
    keys: u64,
    keys_per_call: usize,
    callers: usize,
    periods: u32,
) -> Result<BenchReport, DedupError> {
    let keys_v = random_keys_over(keys, 1, periods, config.period);
    let cpu_before = pool.server_cpu_seconds().await?;
    let usec_before = pool.command_usec().await?;
    let started = Instant::now();
    // Each caller checks a chunk, then adds its new keys. With several callers one chunk's add overlaps the next
    // one's check, as the ingest's batcher and committer overlap in a run.
    let store_ref = store;
    let calls: Vec<Result<(), DedupError>> = futures::stream::iter(keys_v.chunks(keys_per_call.max(1)))
        .take_while(|_| futures::future::ready(!crate::drain::requested()))
        .map(|chunk| async move {
            let seen = store_ref.contains(chunk).await?;
            let new: Vec<DedupKey> = chunk.iter().zip(seen).filter(|(_, s)| !s).map(|(k, _)| *k).collect();
            store_ref.add(&new).await
        })
        .buffer_unordered(callers.max(1))
        .collect()
        .await;
    calls.into_iter().collect::<Result<Vec<()>, _>>()?;
    stopped()?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = pool.server_cpu_seconds().await?;
    let usec_after = pool.command_usec().await?;
    let spent = |cmds: &[&str]| {
        cmds.iter().map(|c| usec_after.get(*c).unwrap_or(&0.0) - usec_before.get(*c).unwrap_or(&0.0)).sum::<f64>()
            / keys.max(1) as f64
    };
    let (check_cmds, add_cmds): (&[&str], &[&str]) = match &**store {
        Dedup::RedisBloom(_) => (&["bf.mexists"], &["bf.insert"]),
        _ => (&["getrange"], &["bitfield"]),
    };
    let (usec_check, usec_add) = (spent(check_cmds), spent(add_cmds));
    let stats = store.stats().await?;
    let memory: u64 = stats.iter().map(|s| s.memory_bytes).sum();
    let probes = (keys / 4).clamp(10_000, 1_000_000);
    let fresh = random_keys_over(probes, 2, periods, config.period);
    let mut positives = 0u64;
    for chunk in fresh.chunks(keys_per_call.max(1)) {
        stopped()?;
        positives += store.contains(chunk).await?.into_iter().filter(|s| *s).count() as u64;
    }
    let file_index = file_index(store.clone(), pool, keys).await?;
    Ok(BenchReport {
        backend: store.describe(),
        keys,
        keys_per_call,
        callers,
        periods,
        seconds,
        keys_per_second: keys as f64 / seconds.max(1e-9),
        redis_cpu: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some((b - a) / seconds.max(1e-9)),
            _ => None,
        },
        redis_usec_per_key_check: usec_check,
        redis_usec_per_key_add: usec_add,
        memory_bytes: memory,
        bytes_per_key: memory as f64 / keys.max(1) as f64,
        formula_bytes_per_key: super::bloom::formula_bits_per_key(config.false_positive_rate) / 8.0,
        fp_target: config.false_positive_rate,
        fp_measured: positives as f64 / probes as f64,
        fp_probes: probes,
        file_index,
    })
}

/// Ends the bench once a signal asked the process to stop: between calls, never inside one.
fn stopped() -> Result<(), DedupError> {
    match crate::drain::requested() {
        true => Err(DedupError::Stopped("the bench did not finish; what it wrote is deleted".into())),
        false => Ok(()),
    }
}

/// Adds `files` random file ids to a file index sized for them, as a full sync from the ledger does, then looks
/// them up as discovery does.
async fn file_index(
    store: std::sync::Arc<Dedup>,
    pool: &super::RedisPool,
    files: u64,
) -> Result<FileIndexBench, DedupError> {
    let index = super::FileIndex::open(store, files).await?;
    let ids: Vec<u128> = random_keys(files, 3).iter().map(|k| k.digest).collect();
    let before = pool.used_memory().await?;
    let started = Instant::now();
    for chunk in ids.chunks(100_000) {
        stopped()?;
        index.add(chunk.to_vec()).await?;
    }
    let add_seconds = started.elapsed().as_secs_f64();
    let after = pool.used_memory().await?;
    let started = Instant::now();
    let mut held = 0u64;
    for chunk in ids.chunks(512) {
        stopped()?;
        held += index.contain(chunk.to_vec()).await?.into_iter().filter(|h| *h).count() as u64;
    }
    let lookup_seconds = started.elapsed().as_secs_f64();
    if held != files {
        return Err(DedupError::Config(format!("the file index holds {held} of the {files} files added")));
    }
    Ok(FileIndexBench {
        files,
        adds_per_second: files as f64 / add_seconds.max(1e-9),
        lookups_per_second: files as f64 / lookup_seconds.max(1e-9),
        bytes_per_file: match (before, after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / files.max(1) as f64),
            _ => None,
        },
    })
}
