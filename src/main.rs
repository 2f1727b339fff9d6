//! The `poslake` command line: the binary edge, where errors become messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use poslake::{Dialect, ParseOptions, parse_file};

#[derive(Parser)]
#[command(
    name = "poslake",
    version,
    about = "Lands POS transaction-log XML in an Iceberg lakehouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse POS files and print what they yield as JSON (one object per file), or a one-line summary each.
    Parse {
        /// Files to parse (plain or gzip-compressed XML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Parse as this dialect instead of detecting it.
        #[arg(long)]
        dialect: Option<Dialect>,
        /// Print one summary line per file instead of the full records.
        #[arg(long)]
        summary: bool,
    },
    /// Generate a deterministic corpus of POS files in all six dialects, with a manifest of expected keys.
    Generate(poslake::generate::GenerateArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parse {
            files,
            dialect,
            summary,
        } => {
            let opts = ParseOptions {
                dialect,
                ..ParseOptions::default()
            };
            let mut failed = 0usize;
            for path in &files {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let name = path.display().to_string();
                match parse_file(&name, &bytes, &opts) {
                    Ok(parsed) if summary => {
                        let f = &parsed.facts;
                        println!(
                            "{name}: {} site={} transactions={} lines={} discounts={} bytes={}",
                            f.dialect,
                            f.site.as_deref().unwrap_or("-"),
                            f.transaction_count,
                            f.line_count,
                            f.discount_count,
                            f.bytes
                        );
                    }
                    Ok(parsed) => println!("{}", serde_json::to_string_pretty(&parsed)?),
                    Err(err) => {
                        failed += 1;
                        eprintln!("{err}");
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Generate(args) => {
            let report = poslake::generate::generate(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
