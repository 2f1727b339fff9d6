//! Fills the embedded dedup store the way an ingest does (check a batch, then add it) and prints, every
//! million keys, the live heap, the process's RSS and the LSM tree's shape: to see what grows with history.
//! Usage: dedup_memory [KEYS=7500000] [BATCH=2500] [DIR=a temporary directory].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use poslake::dedup::{DedupKey, DedupStore, EmbeddedDedup};

/// Counts live heap bytes, so the figures are the store's own and not the allocator's retained pages.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator, under the caller's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let now = if new_size >= layout.size() {
            LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size()
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed) - (layout.size() - new_size)
        };
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(7_500_000);
    let batch: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2_500);
    let tmp = tempfile::tempdir()?;
    let dir = args.next().map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let store = EmbeddedDedup::open(&dir)?;
    let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).ok_or_else(|| anyhow::anyhow!("date"))?;
    let start = std::time::Instant::now();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        // xorshift: digests as uniform as the real BLAKE3-derived ones, without hashing cost.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    println!("keys_m\tlive_mib\tpeak_mib\trss_mib\ttables\tl0\tsealed\twbuf_mib\tcache_mib\tdisk_mib\tkeys_per_s");
    let mut done = 0u64;
    let mut report_at = 0u64;
    while done < total {
        let keys: Vec<DedupKey> =
            (0..batch).map(|_| DedupKey { digest: (u128::from(next()) << 64) | u128::from(next()), date }).collect();
        let seen = store.contains(&keys).await?;
        let fresh: Vec<DedupKey> = keys.into_iter().zip(seen).filter(|(_, s)| !s).map(|(k, _)| k).collect();
        store.add(&fresh).await?;
        done += batch;
        if done >= report_at {
            let i = store.internals();
            let mib = |b: u64| b as f64 / 1048576.0;
            println!(
                "{:.2}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}\t{}\t{:.1}\t{:.1}\t{:.0}\t{:.0}",
                done as f64 / 1e6,
                mib(LIVE.load(Ordering::Relaxed) as u64),
                mib(PEAK.load(Ordering::Relaxed) as u64),
                rss_mib(),
                i.tables,
                i.l0_tables,
                i.sealed_memtables,
                mib(i.write_buffer_bytes),
                mib(i.cache_bytes),
                mib(i.disk_bytes),
                done as f64 / start.elapsed().as_secs_f64()
            );
            report_at += 500_000;
        }
    }
    Ok(())
}
