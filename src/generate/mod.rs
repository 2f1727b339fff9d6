//! A deterministic corpus generator: realistic files in all six dialects, one folder per site and business date,
//! with duplicates planted at configurable rates (whole files re-sent, single transactions repeated in later files),
//! malformed files, and a manifest of the keys each file must yield.
//!
//! The same seed and arguments always give the same bytes (ChaCha8, no clock, no hash-map order).

mod model;
mod render;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dialect::Dialect;
use model::{GenKind, GenTx};

/// What to generate. Every field has a default; see `poslake generate --help`.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct GenerateArgs {
    /// Folder to write the corpus into: a new or empty one, or one holding an earlier generated corpus, which is
    /// replaced (its files are removed first). A folder with other files is refused.
    #[arg(long, default_value = "poslake-data/staging")]
    pub out: PathBuf,
    /// Seed: the same seed and arguments give the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of sites; site i speaks dialect i modulo the dialect list.
    #[arg(long, default_value_t = 12)]
    pub sites: u32,
    /// Number of business days per site.
    #[arg(long, default_value_t = 2)]
    pub days: u32,
    /// First business day.
    #[arg(long, default_value = "2026-01-05")]
    pub start_date: NaiveDate,
    /// Files per site and business day (POS systems drop a file every few minutes).
    #[arg(long, default_value_t = 4)]
    pub files_per_day: u32,
    /// Fewest transactions in one file.
    #[arg(long, default_value_t = 50)]
    pub min_transactions: u32,
    /// Most transactions in one file.
    #[arg(long, default_value_t = 100)]
    pub max_transactions: u32,
    /// Registers per site; each numbers its own transactions.
    #[arg(long, default_value_t = 4)]
    pub registers: u32,
    /// Dialects to use (comma-separated ids); default all six.
    #[arg(long, value_delimiter = ',')]
    pub dialects: Vec<Dialect>,
    /// Share of files that are re-sent whole under another name.
    #[arg(long, default_value_t = 0.02)]
    pub duplicate_file_rate: f64,
    /// Share of transactions that are copies of a transaction from an earlier file of the same site and day.
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_transaction_rate: f64,
    /// Share of files that are malformed (cut short mid-element).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_rate: f64,
    /// Share of files written gzip-compressed.
    #[arg(long, default_value_t = 0.0)]
    pub gzip_rate: f64,
    /// Share of Verifone sales followed by a rollback mirror record (same register and sequence, by design).
    #[arg(long, default_value_t = 0.01)]
    pub rollback_rate: f64,
    /// Write files without line breaks or indentation between elements, as many POS exports do: about a quarter
    /// fewer bytes for the same transactions.
    #[arg(long)]
    #[serde(default)]
    pub compact: bool,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: GenerateArgs,
        }
        Wrapper::parse_from(["generate"]).args
    }
}

/// What a file in the corpus is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Original,
    /// A byte-identical re-send of another file.
    Resend,
    /// Cut short: must end in the dead letters, and its transactions appear nowhere else.
    Malformed,
}

/// One line of `manifest.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the corpus folder.
    pub path: String,
    pub dialect: Dialect,
    pub site: String,
    pub business_date: NaiveDate,
    pub kind: FileKind,
    /// For a re-send, the path of the original.
    pub duplicate_of: Option<String>,
    pub gzip: bool,
    pub bytes: u64,
    /// Canonical keys of the transactions in file order (see `TransactionKey::canonical`).
    pub keys: Vec<String>,
    /// Positions in `keys` of transactions copied from an earlier file.
    pub repeated: Vec<u32>,
}

/// `manifest.json`: the summary, and what an exact ingest must end with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub args: GenerateArgs,
    pub files: u64,
    pub bytes: u64,
    pub transactions_written: u64,
    /// Distinct keys in the well-formed files: the rows an exact ingest ends with.
    pub unique_keys: u64,
    pub resent_files: u64,
    pub repeated_transactions: u64,
    pub malformed_files: u64,
    pub per_dialect: Vec<(Dialect, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid arguments: {0}")]
    Invalid(String),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Generates the corpus into `args.out` and writes `manifest.json` and `manifest.jsonl` beside the files.
pub fn generate(args: &GenerateArgs) -> Result<Report, GenerateError> {
    validate(args)?;
    let dialects: Vec<Dialect> = if args.dialects.is_empty() { Dialect::ALL.to_vec() } else { args.dialects.clone() };
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GenerateError::Io { path, source }
    };
    clear_earlier_corpus(&args.out)?;
    fs::create_dir_all(&args.out).map_err(io(&args.out))?;
    let manifest_path = args.out.join("manifest.jsonl");
    let mut manifest = BufWriter::new(fs::File::create(&manifest_path).map_err(io(&manifest_path))?);

    let mut report = Report {
        args: args.clone(),
        files: 0,
        bytes: 0,
        transactions_written: 0,
        unique_keys: 0,
        resent_files: 0,
        repeated_transactions: 0,
        malformed_files: 0,
        per_dialect: dialects.iter().map(|d| (*d, 0)).collect(),
    };
    let mut unique: BTreeSet<String> = BTreeSet::new();

    for s in 0..args.sites {
        let dialect = dialects[s as usize % dialects.len()];
        let site = format!("{}", 1000 + s);
        let fuel = matches!(dialect, Dialect::VerifoneCommander | Dialect::NaxmlPassport | Dialect::ConexxusNaxml);
        for day in 0..args.days {
            let date = args.start_date + chrono::Duration::days(i64::from(day));
            let mut next_seq = vec![1u64; args.registers as usize];
            // Transactions of earlier well-formed files of this site-day: the pool repeats are drawn from.
            let mut earlier: Vec<GenTx> = Vec::new();
            for file_no in 1..=args.files_per_day {
                let n = rng.random_range(args.min_transactions..=args.max_transactions);
                let mut txs = Vec::with_capacity(n as usize);
                let mut repeated = Vec::new();
                while txs.len() < n as usize {
                    if !earlier.is_empty() && rng.random_bool(args.duplicate_transaction_rate) {
                        repeated.push(txs.len() as u32);
                        txs.push(earlier[rng.random_range(0..earlier.len())].clone());
                        continue;
                    }
                    let register = rng.random_range(0..args.registers);
                    let seq = next_seq[register as usize];
                    next_seq[register as usize] += 1;
                    let tx = model::transaction(&mut rng, &site, date, register + 1, seq, fuel);
                    let mirror = dialect == Dialect::VerifoneCommander
                        && tx.kind == GenKind::Sale
                        && rng.random_bool(args.rollback_rate);
                    txs.push(tx);
                    if mirror && txs.len() < n as usize {
                        let mut m = txs[txs.len() - 1].clone();
                        m.rollback_mirror = true;
                        txs.push(m);
                    }
                }
                let mut xml = render::render(dialect, &site, date, file_no, &txs);
                if args.compact {
                    xml = render::compact(&xml);
                }
                let malformed = rng.random_bool(args.malformed_rate);
                let gzip = rng.random_bool(args.gzip_rate);
                let mut bytes = xml.into_bytes();
                if malformed {
                    // Cut inside the last transaction: well past the root, well before its end.
                    let cut = rng.random_range(bytes.len() * 3 / 4..bytes.len() - 20);
                    bytes.truncate(cut);
                }
                if gzip {
                    bytes = gzip_bytes(&bytes).map_err(io(&args.out))?;
                }
                let ext = if gzip { "xml.gz" } else { "xml" };
                let rel = format!("{}/site={site}/date={date}/{site}_{date}_{file_no:03}.{ext}", dialect.id());
                let keys: Vec<String> = txs.iter().map(|t| t.canonical_key(dialect)).collect();
                write_file(&args.out.join(&rel), &bytes)?;
                let kind = if malformed { FileKind::Malformed } else { FileKind::Original };
                let entry = ManifestFile {
                    path: rel.clone(),
                    dialect,
                    site: site.clone(),
                    business_date: date,
                    kind,
                    duplicate_of: None,
                    gzip,
                    bytes: bytes.len() as u64,
                    keys,
                    repeated,
                };
                account(&mut report, &entry);
                if malformed {
                    report.malformed_files += 1;
                } else {
                    report.repeated_transactions += entry.repeated.len() as u64;
                    unique.extend(entry.keys.iter().cloned());
                    earlier.extend(txs);
                }
                write_manifest_line(&mut manifest, &manifest_path, &entry)?;

                if !malformed && rng.random_bool(args.duplicate_file_rate) {
                    let resend = rel.replace(&format!("_{file_no:03}."), &format!("_{file_no:03}_resend."));
                    write_file(&args.out.join(&resend), &bytes)?;
                    let entry = ManifestFile { path: resend, kind: FileKind::Resend, duplicate_of: Some(rel), ..entry };
                    account(&mut report, &entry);
                    report.resent_files += 1;
                    write_manifest_line(&mut manifest, &manifest_path, &entry)?;
                }
            }
        }
    }
    manifest.flush().map_err(io(&manifest_path))?;
    report.unique_keys = unique.len() as u64;
    let summary = args.out.join("manifest.json");
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| GenerateError::Io { path: summary.clone(), source: e.into() })?;
    fs::write(&summary, json).map_err(io(&summary))?;
    Ok(report)
}

/// Makes room for a corpus in `out`: nothing to do if it is missing or empty; an earlier corpus there (the files its
/// `manifest.jsonl` lists, and its manifests) is removed, so that none of its files is ingested with the new one. A
/// folder holding anything else is refused, and then nothing is removed.
fn clear_earlier_corpus(out: &Path) -> Result<(), GenerateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GenerateError::Io { path, source }
    };
    let mut present = Vec::new();
    let mut folders = vec![out.to_path_buf()];
    while let Some(dir) = folders.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == out => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            // A link is an entry of its own, never followed: nothing outside `out` is ever removed.
            if entry.file_type().map_err(io(&path))?.is_dir() {
                folders.push(path);
            } else {
                present.push(path);
            }
        }
    }
    if present.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| {
        GenerateError::Invalid(format!(
            "{} {why}: generate into a new or empty folder, or one holding only an earlier generated corpus",
            out.display()
        ))
    };
    if !out.join("manifest.jsonl").is_file() {
        return Err(refuse("is not empty and holds no earlier generated corpus (no manifest.jsonl)".into()));
    }
    let mut ours: BTreeSet<PathBuf> = BTreeSet::new();
    for file in read_manifest(out)? {
        let rel = Path::new(&file.path);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(refuse(format!("has a manifest naming {} outside it", file.path)));
        }
        ours.insert(out.join(rel));
    }
    ours.insert(out.join("manifest.jsonl"));
    ours.insert(out.join("manifest.json"));
    if let Some(other) = present.iter().find(|p| !ours.contains(*p)) {
        return Err(refuse(format!("holds {}, which the earlier corpus's manifest does not list", other.display())));
    }
    for path in &present {
        fs::remove_file(path).map_err(io(path))?;
        // Folders the removal emptied go too, up to `out` (a folder still holding something stays).
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == out || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    Ok(())
}

/// Reads `manifest.jsonl` back.
pub fn read_manifest(corpus: &Path) -> Result<Vec<ManifestFile>, GenerateError> {
    let path = corpus.join("manifest.jsonl");
    let text = fs::read_to_string(&path).map_err(|source| GenerateError::Io { path: path.clone(), source })?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| GenerateError::Io { path: path.clone(), source: e.into() }))
        .collect()
}

fn validate(args: &GenerateArgs) -> Result<(), GenerateError> {
    let rate = |name: &str, r: f64| {
        if (0.0..=1.0).contains(&r) {
            Ok(())
        } else {
            Err(GenerateError::Invalid(format!("{name} must be within 0..=1, got {r}")))
        }
    };
    rate("duplicate_file_rate", args.duplicate_file_rate)?;
    rate("duplicate_transaction_rate", args.duplicate_transaction_rate)?;
    rate("malformed_rate", args.malformed_rate)?;
    rate("gzip_rate", args.gzip_rate)?;
    rate("rollback_rate", args.rollback_rate)?;
    if args.min_transactions == 0 || args.min_transactions > args.max_transactions {
        return Err(GenerateError::Invalid(format!(
            "need 1 <= min_transactions <= max_transactions, got {}..{}",
            args.min_transactions, args.max_transactions
        )));
    }
    if args.sites == 0 || args.days == 0 || args.files_per_day == 0 || args.registers == 0 {
        return Err(GenerateError::Invalid("sites, days, files_per_day and registers must be at least 1".into()));
    }
    Ok(())
}

fn account(report: &mut Report, entry: &ManifestFile) {
    report.files += 1;
    report.bytes += entry.bytes;
    report.transactions_written += entry.keys.len() as u64;
    if let Some(d) = report.per_dialect.iter_mut().find(|(d, _)| *d == entry.dialect) {
        d.1 += 1;
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), GenerateError> {
    let err = |source| GenerateError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    fs::write(path, bytes).map_err(err)
}

fn write_manifest_line(out: &mut impl Write, path: &Path, entry: &ManifestFile) -> Result<(), GenerateError> {
    let err = |source| GenerateError::Io { path: path.to_path_buf(), source };
    serde_json::to_writer(&mut *out, entry).map_err(|e| err(e.into()))?;
    out.write_all(b"\n").map_err(err)
}

fn gzip_bytes(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    enc.write_all(bytes)?;
    enc.finish()
}

/// Generates one file's XML in memory without touching disk (for benchmarks and property tests): `transactions`
/// transactions for one site-day in `dialect`.
pub fn generate_file(dialect: Dialect, seed: u64, transactions: u32) -> (String, Vec<String>) {
    generate_file_as(dialect, seed, transactions, false)
}

/// [`generate_file`], compact (see `GenerateArgs::compact`) or pretty-printed.
pub fn generate_file_as(dialect: Dialect, seed: u64, transactions: u32, compact: bool) -> (String, Vec<String>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let date = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap_or_default();
    let site = format!("{}", 1000 + seed % 1000);
    let fuel = matches!(dialect, Dialect::VerifoneCommander | Dialect::NaxmlPassport | Dialect::ConexxusNaxml);
    let txs: Vec<GenTx> = (0..transactions)
        .map(|i| model::transaction(&mut rng, &site, date, i % 4 + 1, u64::from(i / 4 + 1), fuel))
        .collect();
    let keys = txs.iter().map(|t| t.canonical_key(dialect)).collect();
    let xml = render::render(dialect, &site, date, 1, &txs);
    (if compact { render::compact(&xml) } else { xml }, keys)
}
