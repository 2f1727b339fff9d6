//! `poslake dedup`: size a filter, show the store's health, rebuild it, measure it.

use std::process::ExitCode;

use super::args::{DedupCommand, StoreArgs};
use super::lake::existing_lake;

pub async fn dedup(command: DedupCommand) -> anyhow::Result<ExitCode> {
    use poslake::dedup::DedupStore;
    match command {
        DedupCommand::Plan { expected_keys, fp, max_shard_mib } => {
            use poslake::config::{MAX_EXPECTED_KEYS, MAX_SHARD_MIB, MIN_FALSE_POSITIVE_RATE};
            anyhow::ensure!(
                (MIN_FALSE_POSITIVE_RATE..0.5).contains(&fp),
                "--fp must be at least {MIN_FALSE_POSITIVE_RATE:?} and below 0.5, not {fp:?}"
            );
            anyhow::ensure!(
                (1..=MAX_EXPECTED_KEYS).contains(&expected_keys),
                "--expected-keys must be from 1 to {MAX_EXPECTED_KEYS} (use a shorter period for more), not {expected_keys}"
            );
            anyhow::ensure!(
                (1..=MAX_SHARD_MIB).contains(&max_shard_mib),
                "--max-shard-mib must be from 1 to {MAX_SHARD_MIB} (Redis's largest string), not {max_shard_mib}"
            );
            let p = poslake::dedup::Plan::new(expected_keys, fp, max_shard_mib << 20);
            say!("keys per period        {}", p.expected_keys);
            say!("target false positives {}", p.fp_target);
            say!(
                "bits per key           {:.2} (textbook Bloom formula {:.2}; +{:.1}% for 512-bit blocks)",
                p.bits_per_key,
                p.formula_bits_per_key(),
                (p.bits_per_key / p.formula_bits_per_key() - 1.0) * 100.0
            );
            say!("hash functions         {}", p.hashes);
            say!(
                "memory                 {:.1} MiB ({} bytes)",
                p.total_bytes() as f64 / (1 << 20) as f64,
                p.total_bytes()
            );
            say!("shards                 {} of {:.1} MiB", p.shards, p.shard_bytes() as f64 / (1 << 20) as f64);
            say!("false positives at capacity {:.5} (model)", p.fp_at_capacity);
            say!("false positives at 2x capacity {:.5} (model)", p.fp_at(2.0 * p.expected_keys as f64));
            Ok(ExitCode::SUCCESS)
        }
        DedupCommand::Stats { store, json } => dedup_stats(store, json).await,
        DedupCommand::Rebuild { store } => {
            let c = store.config()?;
            existing_lake(&c.lake, c.catalog.as_deref())?;
            let wh = std::sync::Arc::new(poslake::lake::Warehouse::open_with(&c.lake, c.catalog.as_deref()).await?);
            let d = std::sync::Arc::new(poslake::dedup::Dedup::open(&c.dedup, wh.root()).await?);
            let started = std::time::Instant::now();
            let added = poslake::ingest::commit::Committer::new(wh, d.clone()).rebuild().await?;
            say!("rebuilt {}: {added} keys from sales_header in {:.1}s", d.describe(), started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        DedupCommand::Bench { store, keys, keys_per_call, callers, periods, json } => {
            let c = store.config()?;
            let r = poslake::dedup::bench::run(&c.dedup, keys, keys_per_call, callers, periods).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            say!("{}", r.backend);
            say!(
                "{} keys checked and added in {:.2}s: {:.0} keys/s ({} keys per call, {} calls in flight, {} period(s))",
                r.keys,
                r.seconds,
                r.keys_per_second,
                r.keys_per_call,
                r.callers,
                r.periods
            );
            match r.redis_cpu {
                Some(cpu) => say!(
                    "Redis server CPU: {:.0}% of one core; {:.2} µs/key checking, {:.2} µs/key adding",
                    cpu * 100.0,
                    r.redis_usec_per_key_check,
                    r.redis_usec_per_key_add
                ),
                None => say!("Redis server CPU: not reported"),
            }
            say!(
                "memory: {:.1} MiB, {:.3} bytes/key (Bloom formula {:.3} bytes/key at {}: {:+.1}%)",
                r.memory_bytes as f64 / (1 << 20) as f64,
                r.bytes_per_key,
                r.formula_bytes_per_key,
                r.fp_target,
                (r.bytes_per_key / r.formula_bytes_per_key - 1.0) * 100.0
            );
            say!(
                "false positives: {:.5} measured on {} fresh keys (target {})",
                r.fp_measured,
                r.fp_probes,
                r.fp_target
            );
            let f = &r.file_index;
            say!(
                "file index: {} files added at {:.0}/s, looked up at {:.0}/s (512 per round trip); {}",
                f.files,
                f.adds_per_second,
                f.lookups_per_second,
                f.bytes_per_file.map_or("memory not reported".to_owned(), |b| format!("{b:.1} bytes/file in Redis"))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `poslake dedup stats`: the store's partitions, the file index, and the workers sharing staging (with Redis).
pub async fn dedup_stats(store: StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    use poslake::dedup::DedupStore;
    let c = store.config()?;
    existing_lake(&c.lake, c.catalog.as_deref())?;
    let wh = poslake::lake::Warehouse::open_to_read(&c.lake, c.catalog.as_deref()).await?;
    // Looking makes nothing: not a new store's generation, not its file index.
    let d = poslake::dedup::Dedup::open_to_read(&c.dedup, wh.root()).await?;
    let partitions = d.stats().await?;
    let file_index = poslake::dedup::FileIndex::stats_to_read(&d).await?;
    let (fleet, free) = match c.dedup.backend {
        poslake::config::DedupBackend::Embedded => (Vec::new(), None),
        _ => {
            let (fleet, free) = poslake::ingest::slot_leases::fleet(&c.dedup).await?;
            (fleet, Some(free))
        }
    };
    if json {
        // The embedded store is exact: no design capacity (null, not u64::MAX).
        let mut partitions = serde_json::to_value(&partitions)?;
        for p in partitions.as_array_mut().into_iter().flatten() {
            if p["capacity"] == serde_json::json!(u64::MAX) {
                p["capacity"] = serde_json::Value::Null;
            }
        }
        let out = serde_json::json!({
            "store": d.describe(),
            "partitions": partitions,
            "file_index": file_index,
            "workers": fleet,
            "slots_leased_by_none": free,
        });
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("{}", d.describe());
    if let Some(i) = d.as_embedded().map(|e| e.internals()) {
        say!(
            "sorted tables: {} ({} in the newest level), {:.1} MiB on disk; in memory: {:.1} MiB of memtables ({} \
             waiting to be written), {:.1} MiB of cached blocks",
            i.tables,
            i.l0_tables,
            i.disk_bytes as f64 / (1 << 20) as f64,
            i.write_buffer_bytes as f64 / (1 << 20) as f64,
            i.sealed_memtables,
            i.cache_bytes as f64 / (1 << 20) as f64
        );
    }
    // On a Redis Cluster spread by period, where each partition lives.
    let spread = partitions.iter().any(|p| p.primary.is_some());
    let claims = partitions.iter().any(|p| p.claims > 0);
    say!(
        "{:<12} {:>14} {:>14} {:>14} {:>8} {:>10} {:>12}{}{}",
        "partition",
        "adds",
        "est. keys",
        "capacity",
        "fill",
        "fp now",
        "memory MiB",
        if claims { "   claims" } else { "" },
        if spread { "  primary" } else { "" }
    );
    for s in partitions {
        // The embedded store is exact and has no design capacity.
        let capacity = if s.capacity == u64::MAX { "none".to_owned() } else { s.capacity.to_string() };
        say!(
            "{:<12} {:>14} {:>14.0} {:>14} {:>7.2}% {:>10.6} {:>12.1}{}{}{}",
            s.partition,
            s.adds,
            s.estimated_keys,
            capacity,
            s.fill * 100.0,
            s.fp_now,
            s.memory_bytes as f64 / (1 << 20) as f64,
            if claims { format!(" {:>8}", s.claims) } else { String::new() },
            s.primary.as_deref().map(|p| format!("  {p}")).unwrap_or_default(),
            if s.over_capacity { "  OVER CAPACITY" } else { "" }
        );
    }
    if let Some(f) = file_index {
        let groups = match (f.groups, f.groups_unmarked) {
            (0 | 1, _) => String::new(),
            (g, 0) => format!(" in {g} groups spread over the cluster's primaries"),
            (g, u) if u == g => format!(" in {g} groups spread over the cluster's primaries, none marked"),
            (g, u) => format!(
                " in {g} groups spread over the cluster's primaries, {u} of them without a current mark (their \
                 primary lost its data)"
            ),
        };
        say!(
            "file index: about {} files in {} buckets{groups}, design capacity {}{}; holds the ledger to snapshot {}",
            f.files,
            f.buckets,
            f.capacity,
            if f.files > f.capacity { " (OVER CAPACITY: buckets leave the compact encoding)" } else { "" },
            f.synced_to.map_or("(none: the next ingest reads the whole ledger)".to_owned(), |s| s.to_string())
        );
    } else if d.as_embedded().is_none() {
        say!("file index: none yet (no ingest has used this Redis store)");
    }
    if !fleet.is_empty() {
        let live = fleet.iter().filter(|m| m.live).count();
        say!(
            "workers sharing staging (workers = auto): {live} live; {} slots leased by none now",
            free.unwrap_or_default()
        );
        for m in fleet {
            let state = match m.for_secs {
                Some(secs) => format!("live for {}", humantime::format_duration(std::time::Duration::from_secs(secs))),
                None => "stopped (its leases expire)".to_owned(),
            };
            say!("  {:<40} {state}; {} slots leased; {}", m.id, m.slots, m.routing);
        }
    }
    Ok(ExitCode::SUCCESS)
}
