//! Parses one generated file in a loop: a target for profilers (`perf record`, `valgrind --tool=callgrind`).
//! Usage: parse_loop DIALECT ITERATIONS

fn main() {
    let mut args = std::env::args().skip(1);
    let dialect: poslake::Dialect =
        args.next().unwrap_or_else(|| "verifone-commander".into()).parse().expect("dialect");
    let iterations: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let (xml, _) = poslake::generate::generate_file(dialect, 7, 75);
    let opts = poslake::ParseOptions::default();
    let only_tokenize = args.next().as_deref() == Some("tokenize");
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
    println!(
        "{dialect}: {iterations} x {} bytes, {txs} transactions, {:.1} MB/s",
        xml.len(),
        xml.len() as f64 * f64::from(iterations) / secs / 1e6
    );
}

/// The floor: quick-xml tokenizing the same text with no work per event (`parse_loop DIALECT N tokenize`).
fn tokenize(xml: &str) -> usize {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut n = 0;
    while let Ok(ev) = reader.read_event() {
        if matches!(ev, quick_xml::events::Event::Eof) {
            break;
        }
        n += 1;
    }
    n
}
