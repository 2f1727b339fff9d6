//! Parse throughput per dialect on generated files of ~75 transactions (silver + bronze records, file facts).
//! Target (issue 2): at least 300 MB/s per core for each dialect. Run: `cargo bench --bench parse`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use poslake::{Dialect, ParseOptions, parse_file};

/// The allocator the `poslake` binary parses with (glibc's malloc costs a parse about 8% more).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn parse(c: &mut Criterion) {
    let opts = ParseOptions::default();
    let mut group = c.benchmark_group("parse");
    for dialect in Dialect::ALL {
        let (xml, keys) = poslake::generate::generate_file(dialect, 7, 75);
        let bytes = xml.into_bytes();
        let parsed = parse_file("bench.xml", &bytes, &opts).expect("generated file parses");
        assert_eq!(parsed.transactions.len(), keys.len());
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(dialect.id(), |b| {
            b.iter(|| parse_file("bench.xml", std::hint::black_box(&bytes), &opts).map(|p| p.transactions.len()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = parse
}
criterion_main!(benches);
