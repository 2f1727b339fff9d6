//! Golden tests: every fixture of ours and every public sample in `../shared/samples/` parses to the records
//! written out under `tests/golden/`, compared field by field. After a deliberate change, re-bless with
//! `POSLAKE_BLESS=1 cargo test --test golden` and review the diff like code.
//!
//! Public samples are not copied into the project: their goldens keep the silver records and facts, and of the
//! bronze only the entry count and a BLAKE3 digest.

use std::path::{Path, PathBuf};

use poslake::{ParseOptions, parse_file};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dialects")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn shared_samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples")
}

fn xml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "xml" || x == "gz") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The parse of `path` as JSON, with the file name made relative so goldens do not depend on the checkout.
fn record(path: &Path, rel: &str, public: bool) -> Value {
    let bytes = std::fs::read(path).expect("read fixture");
    let parsed = parse_file(rel, &bytes, &ParseOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut v = serde_json::to_value(&parsed).expect("serialize");
    if public {
        for tx in v["transactions"].as_array_mut().expect("transactions") {
            let bronze = tx["bronze"].take();
            let text = serde_json::to_string(&bronze).expect("bronze json");
            tx["bronze"] = json!({
                "entries": bronze.as_array().map_or(0, Vec::len),
                "blake3": blake3::hash(text.as_bytes()).to_hex().to_string(),
            });
        }
        let env = v["envelope"].take();
        v["envelope"] = json!({ "entries": env.as_array().map_or(0, Vec::len) });
    }
    v
}

/// Lists every path where `got` and `want` differ.
fn diff(path: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                diff(&format!("{path}.{k}"), g.get(k).unwrap_or(&Value::Null), wv, out);
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{k}: unexpected field"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            if g.len() != w.len() {
                out.push(format!("{path}: {} items, expected {}", g.len(), w.len()));
            }
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                diff(&format!("{path}[{i}]"), gv, wv, out);
            }
        }
        _ if got != want => out.push(format!("{path}: got {got}, expected {want}")),
        _ => {}
    }
}

fn check(path: &Path, rel: &str, public: bool) -> Result<(), String> {
    let got = record(path, rel, public);
    let golden = golden_dir().join(format!("{}.json", rel.trim_end_matches(".xml")));
    if std::env::var_os("POSLAKE_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
        std::fs::write(&golden, serde_json::to_string_pretty(&got).expect("json") + "\n").expect("write golden");
        return Ok(());
    }
    let text = std::fs::read_to_string(&golden)
        .map_err(|e| format!("{rel}: no golden at {} ({e}); bless with POSLAKE_BLESS=1", golden.display()))?;
    let want: Value = serde_json::from_str(&text).map_err(|e| format!("{rel}: bad golden: {e}"))?;
    let mut diffs = Vec::new();
    diff("", &got, &want, &mut diffs);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("{rel}: {} difference(s):\n  {}", diffs.len(), diffs.join("\n  ")))
    }
}

#[test]
fn fixtures_match_their_goldens() {
    let files = xml_files(&fixtures());
    assert!(files.len() >= 12, "expected two fixtures per dialect, found {}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(fixtures()).expect("under fixtures").to_string_lossy().into_owned();
        if let Err(e) = check(f, &format!("fixtures/{rel}"), false) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_dialect_has_fixtures() {
    for d in poslake::Dialect::ALL {
        let dir = fixtures().join(d.id());
        let files = xml_files(&dir);
        assert!(files.len() >= 2, "{d}: {} fixtures", files.len());
        for f in files {
            let bytes = std::fs::read(&f).expect("read");
            let parsed = parse_file("f.xml", &bytes, &ParseOptions::default()).expect("parses");
            assert_eq!(parsed.facts.dialect, d, "{} detected as {}", f.display(), parsed.facts.dialect);
        }
    }
}

#[test]
fn public_samples_match_their_goldens() {
    let root = shared_samples();
    if !root.is_dir() {
        eprintln!("SKIPPED: {} is absent; public sample goldens not checked", root.display());
        return;
    }
    let files = xml_files(&root);
    assert!(!files.is_empty(), "no samples under {}", root.display());
    let mut failures = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).expect("under samples").to_string_lossy().into_owned();
        if let Err(e) = check(f, &format!("samples/{rel}"), true) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
