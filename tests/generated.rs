//! Generated corpora against the parser: every key the manifest names comes out exactly once per file, in
//! order; amounts add up wherever the dialect carries both lines and totals; the generator is deterministic.

use std::collections::BTreeSet;

use poslake::generate::{FileKind, GenerateArgs, generate, generate_file, generate_file_as, read_manifest};
use poslake::model::{ParsedFile, TransactionType};
use poslake::{Dialect, ParseError, ParseOptions, parse_file};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn keys(parsed: &ParsedFile) -> Vec<String> {
    parsed.transactions.iter().map(|t| t.header.key.canonical()).collect()
}

/// Lines minus discounts equal the net amount; net plus tax equals the total; where a dialect carries only a
/// grand total and line taxes (Xstore), lines minus discounts plus line taxes equal it.
fn assert_amounts_add_up(parsed: &ParsedFile) {
    for tx in &parsed.transactions {
        let h = &tx.header;
        if h.transaction_type != TransactionType::Sale {
            continue;
        }
        let lines: Decimal = tx.lines.iter().filter_map(|l| l.extended_amount).sum();
        let discounts: Decimal = tx.discounts.iter().filter_map(|d| d.amount).sum();
        let line_tax: Decimal = tx.lines.iter().filter_map(|l| l.tax_amount).sum();
        let key = h.key.canonical();
        if let Some(net) = h.net_amount {
            assert_eq!(lines - discounts, net, "{key}: lines {lines} - discounts {discounts} != net {net}");
            if let (Some(tax), Some(total)) = (h.tax_amount, h.total_amount) {
                assert_eq!(net + tax, total, "{key}: net + tax != total");
            }
        } else {
            let total = h.total_amount.unwrap_or_else(|| panic!("{key}: neither net nor total"));
            assert_eq!(lines - discounts + line_tax, total, "{key}: lines - discounts + line tax != total");
        }
        for d in &tx.discounts {
            let n = d.line_number.unwrap_or_else(|| panic!("{key}: discount not tied to its line"));
            assert!(tx.lines.iter().any(|l| l.line_number == n), "{key}: discount names line {n}, which is absent");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Real exports come both ways: the whitespace between elements changes nothing the parser yields.
    #[test]
    fn compact_files_parse_like_pretty_printed_ones(
        dialect in prop::sample::select(Dialect::ALL.to_vec()),
        seed in any::<u64>(),
        transactions in 1u32..40,
    ) {
        let (pretty, keys) = generate_file_as(dialect, seed, transactions, false);
        let (compact, same_keys) = generate_file_as(dialect, seed, transactions, true);
        prop_assert_eq!(keys, same_keys);
        prop_assert!(compact.len() < pretty.len(), "compact is smaller: {} against {}", compact.len(), pretty.len());
        let body = compact.trim_end();
        prop_assert!(!body.contains(">\n") && !body.contains("> <"), "no whitespace left between tags");
        let opts = ParseOptions::default();
        let a = parse_file("gen.xml", pretty.as_bytes(), &opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = parse_file("gen.xml", compact.as_bytes(), &opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let json = |p: &ParsedFile| serde_json::to_value(&p.transactions).expect("serializes");
        prop_assert_eq!(json(&a), json(&b));
    }

    #[test]
    fn generated_files_yield_their_keys_and_amounts_add_up(
        dialect in prop::sample::select(Dialect::ALL.to_vec()),
        seed in any::<u64>(),
        transactions in 1u32..120,
    ) {
        let (xml, expected) = generate_file(dialect, seed, transactions);
        let parsed = parse_file("gen.xml", xml.as_bytes(), &ParseOptions::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.facts.dialect, dialect);
        prop_assert_eq!(keys(&parsed), expected.clone());
        let distinct: BTreeSet<_> = expected.iter().collect();
        prop_assert_eq!(distinct.len(), expected.len(), "a generated file repeats no key");
        assert_amounts_add_up(&parsed);
        for tx in &parsed.transactions {
            let bronze_keys: BTreeSet<&str> = tx.bronze.iter().map(|(k, _)| k).collect();
            prop_assert_eq!(bronze_keys.len(), tx.bronze.len(), "bronze keys are distinct: repeats are numbered");
        }
    }
}

fn small_corpus(dir: &std::path::Path, seed: u64) -> GenerateArgs {
    GenerateArgs {
        out: dir.to_path_buf(),
        seed,
        sites: 6,
        days: 2,
        files_per_day: 3,
        min_transactions: 20,
        max_transactions: 40,
        duplicate_file_rate: 0.2,
        duplicate_transaction_rate: 0.05,
        malformed_rate: 0.2,
        gzip_rate: 0.2,
        rollback_rate: 0.05,
        ..GenerateArgs::default()
    }
}

#[test]
fn a_corpus_on_disk_parses_to_its_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = generate(&small_corpus(dir.path(), 11)).expect("generate");
    let manifest = read_manifest(dir.path()).expect("manifest");
    assert_eq!(manifest.len() as u64, report.files);
    assert!(
        report.malformed_files > 0 && report.resent_files > 0 && report.repeated_transactions > 0,
        "the corpus plants every kind of trouble: {report:?}"
    );

    let mut unique = BTreeSet::new();
    let mut gz = 0;
    for entry in &manifest {
        let bytes = std::fs::read(dir.path().join(&entry.path)).expect("read");
        let result = parse_file(&entry.path, &bytes, &ParseOptions::default());
        match entry.kind {
            FileKind::Malformed => match result {
                Err(ParseError::Truncated { .. } | ParseError::Malformed { .. } | ParseError::Decompress { .. }) => {}
                other => panic!("{}: malformed file gave {:?}", entry.path, other.map(|p| p.transactions.len())),
            },
            FileKind::Original | FileKind::Resend => {
                let parsed = result.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(keys(&parsed), entry.keys, "{}", entry.path);
                assert_eq!(parsed.facts.dialect, entry.dialect);
                assert_eq!(parsed.facts.compression == poslake::model::Compression::Gzip, entry.gzip);
                gz += usize::from(entry.gzip);
                assert_amounts_add_up(&parsed);
                unique.extend(keys(&parsed));
            }
        }
    }
    assert!(gz > 0, "some files are gzip-compressed");
    assert_eq!(unique.len() as u64, report.unique_keys);
    // Rollback mirrors share their original's ticket number but are distinct keys.
    assert!(unique.iter().any(|k| k.ends_with("|rollback")), "rollback mirrors planted");
}

#[test]
fn the_generator_is_deterministic() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    generate(&small_corpus(a.path(), 5)).expect("generate a");
    generate(&small_corpus(b.path(), 5)).expect("generate b");
    let ma = read_manifest(a.path()).expect("a");
    let mb = read_manifest(b.path()).expect("b");
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.path, y.path);
        let bx = std::fs::read(a.path().join(&x.path)).expect("read a");
        let by = std::fs::read(b.path().join(&y.path)).expect("read b");
        assert!(bx == by, "{} differs between runs", x.path);
    }
    let other = tempfile::tempdir().expect("tempdir");
    generate(&small_corpus(other.path(), 6)).expect("generate c");
    let mc = read_manifest(other.path()).expect("c");
    assert_ne!(ma.iter().map(|m| &m.keys).collect::<Vec<_>>(), mc.iter().map(|m| &m.keys).collect::<Vec<_>>());
}

/// Every file under `dir` (manifests included), relative to it.
fn files_under(dir: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).expect("under").to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// A second corpus in the same folder replaces the first, so that no file of the first is left to be ingested with
/// it; a folder holding anything else is refused and left as it was.
#[test]
fn a_corpus_replaces_an_earlier_one_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&small_corpus(dir.path(), 5)).expect("first");
    let smaller = GenerateArgs { sites: 2, days: 1, ..small_corpus(dir.path(), 6) };
    generate(&smaller).expect("second");
    let mut expected: BTreeSet<String> =
        read_manifest(dir.path()).expect("manifest").into_iter().map(|m| m.path).collect();
    expected.extend(["manifest.json".to_owned(), "manifest.jsonl".to_owned()]);
    assert_eq!(files_under(dir.path()), expected);

    std::fs::write(dir.path().join("notes.txt"), "mine").expect("write");
    let before = files_under(dir.path());
    let err = generate(&small_corpus(dir.path(), 7)).expect_err("a foreign file");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(files_under(dir.path()), before, "nothing removed");

    // A link in the folder is never followed: a manifest naming a file behind it cannot remove that file.
    std::fs::remove_file(dir.path().join("notes.txt")).expect("rm");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::fs::write(elsewhere.path().join("precious.xml"), "keep").expect("write");
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("vd")).expect("link");
    let mut manifest = std::fs::read_to_string(dir.path().join("manifest.jsonl")).expect("manifest");
    let line = manifest.lines().next().expect("a line").to_owned();
    let first = read_manifest(dir.path()).expect("manifest")[0].path.clone();
    manifest.push_str(&line.replace(&first, "vd/precious.xml"));
    manifest.push('\n');
    std::fs::write(dir.path().join("manifest.jsonl"), manifest).expect("write");
    assert!(generate(&small_corpus(dir.path(), 7)).is_err(), "the link is not the corpus's");
    assert_eq!(std::fs::read_to_string(elsewhere.path().join("precious.xml")).expect("kept"), "keep");

    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(foreign.path().join("a.xml"), "<x/>").expect("write");
    let err = generate(&small_corpus(foreign.path(), 7)).expect_err("no manifest");
    assert!(err.to_string().contains("no manifest.jsonl"), "{err}");
}

#[test]
fn invalid_generator_arguments_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args =
        GenerateArgs { out: dir.path().into(), min_transactions: 10, max_transactions: 5, ..GenerateArgs::default() };
    assert!(generate(&args).is_err());
    let args = GenerateArgs { out: dir.path().into(), malformed_rate: 1.5, ..GenerateArgs::default() };
    assert!(generate(&args).is_err());
}
