//! Feeds arbitrary bytes to `poslake::parse_file`: once with dialect detection and once per forced dialect.
//! Any panic, hang or runaway allocation is a bug; an `Err` is fine, but it must name the file and any position
//! it carries must be 1-based.

#![no_main]

use libfuzzer_sys::fuzz_target;
use poslake::{Dialect, ParseOptions, parse_file};

const NAME: &str = "fuzz-input.xml";

fn check(data: &[u8], opts: &ParseOptions) {
    match parse_file(NAME, data, opts) {
        Ok(parsed) => {
            assert_eq!(parsed.facts.transaction_count as usize, parsed.transactions.len());
        }
        Err(err) => {
            let shown = err.to_string();
            assert!(shown.starts_with(NAME), "error does not name the file: {shown}");
            if let Some(pos) = err.position() {
                assert!(pos.line >= 1 && pos.column >= 1, "position not 1-based: {pos:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Deflate expands at most ~1032:1, so with libFuzzer's input sizes the default 256 MiB limit is never near.
    let base = ParseOptions::default();
    check(data, &base);
    for dialect in Dialect::ALL {
        check(data, &ParseOptions { dialect: Some(dialect), ..base.clone() });
    }
});
