//! `poslake parse`: what files yield, without a lake.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use poslake::{Dialect, ParseOptions, parse_file};

/// Parses `files` (folders walked) and prints each one's records as JSON, or one summary line each and a total.
pub fn parse(files: &[PathBuf], dialect: Option<Dialect>, summary: bool) -> anyhow::Result<ExitCode> {
    let opts = ParseOptions { dialect, ..ParseOptions::default() };
    let files = expand(files)?;
    let (mut failed, mut bytes_total, mut transactions) = (0usize, 0u64, 0u64);
    let started = std::time::Instant::now();
    for path in &files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) => {
                failed += 1;
                let line = format!("read: {}: {err}", path.display());
                poslake::telemetry::notice(poslake::telemetry::Notice::Failure, &line);
                continue;
            }
        };
        bytes_total += bytes.len() as u64;
        let name = path.display().to_string();
        match parse_file(&name, &bytes, &opts) {
            Ok(parsed) if summary => {
                let f = &parsed.facts;
                transactions += u64::from(f.transaction_count);
                say!(
                    "{name}: {} site={} transactions={} lines={} discounts={} bytes={}",
                    f.dialect,
                    f.site.as_deref().unwrap_or("-"),
                    f.transaction_count,
                    f.line_count,
                    f.discount_count,
                    f.bytes
                );
            }
            Ok(parsed) => say!("{}", serde_json::to_string_pretty(&parsed)?),
            Err(err) => {
                failed += 1;
                poslake::telemetry::notice(poslake::telemetry::Notice::Failure, &format!("{}: {err}", err.kind()));
            }
        }
    }
    if summary {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        say!(
            "total: {} files ({failed} failed), {transactions} transactions, {:.1} MB in {secs:.2}s: \
             {:.0} files/s, {:.1} MB/s on one core",
            files.len(),
            bytes_total as f64 / 1e6,
            files.len() as f64 / secs,
            bytes_total as f64 / 1e6 / secs
        );
    }
    // 1, not 2: clap exits 2 on a usage error, and a script must tell a bad file from a mistyped flag.
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Files as given, folders walked (sorted, so output order is stable) for `*.xml` and `*.gz`.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut stack = vec![p.clone()];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "xml" || e == "gz") {
                    found.push(path);
                }
            }
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}
