//! Parses one generated file in a loop: a target for profilers (`perf record`, `valgrind --tool=callgrind`).
//! Usage: parse_loop DIALECT ITERATIONS [tokenize]. Prints MB/s, and the heap allocations one parse makes.
//! Allocates through jemalloc, as the `poslake` binary does.

use std::alloc::{GlobalAlloc, Layout};

use std::sync::atomic::{AtomicU64, Ordering};
use tikv_jemallocator::Jemalloc;

/// Counts allocations, so that a change that adds or removes them shows in the figures.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to jemalloc, under the caller's contract.
        unsafe { Jemalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let dialect: poslake::Dialect =
        args.next().unwrap_or_else(|| "verifone-commander".into()).parse().expect("dialect");
    let iterations: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let (xml, _) = poslake::generate::generate_file(dialect, 7, 75);
    let opts = poslake::ParseOptions::default();
    let only_tokenize = args.next().as_deref() == Some("tokenize");
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = std::time::Instant::now();
    let mut txs = 0;
    for _ in 0..iterations {
        if only_tokenize {
            txs += tokenize(std::hint::black_box(&xml));
        } else {
            txs += poslake::parse_file("loop.xml", xml.as_bytes(), &opts).map(|p| p.transactions.len()).unwrap_or(0);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    println!(
        "{dialect}: {iterations} x {} bytes, {txs} transactions, {:.1} MB/s, {} allocations per file",
        xml.len(),
        xml.len() as f64 * f64::from(iterations) / secs / 1e6,
        allocations / u64::from(iterations.max(1))
    );
}

/// The floor: quick-xml tokenizing the same text with no work per event (`parse_loop DIALECT N tokenize`).
fn tokenize(xml: &str) -> usize {
    let mut reader = quick_xml::Reader::from_str(xml);
    // As the engine does before an element's first text: indentation makes no event.
    reader.config_mut().trim_text_start = true;
    let mut n = 0;
    while let Ok(ev) = reader.read_event() {
        if matches!(ev, quick_xml::events::Event::Eof) {
            break;
        }
        n += 1;
    }
    n
}
