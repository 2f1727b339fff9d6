//! poslake: point-of-sale transaction logs into an Apache Iceberg lakehouse.
//!
//! # Layout
//! - [`backoff`] (feature `lake`): retry pauses, exponential with full jitter.
//! - [`config`]: the ingest configuration file (TOML), validated before anything starts.
//! - [`model`]: the records a file yields (silver `SalesHeader` / `SalesLine` / `SalesDiscount`, bronze, file facts).
//! - [`dialect`]: the six vendor dialects, each a table of element paths → fields, and auto-detection.
//! - [`parse`]: the single streaming pass (quick-xml) that reads any dialect's table; typed errors.
//! - [`error_text`]: errors as one line of text (an error with its causes, a server's answer).
//! - [`generate`]: a deterministic corpus generator for all six dialects, with planted duplicates and a manifest.
//! - [`drain`] (feature `lake`): the process's drain request (a signal), which ends long waits at once.
//! - [`dedup`] (feature `lake`): which keys the lake holds: embedded exact set, or a Bloom filter in Redis.
//! - [`ingest`] (feature `lake`): the domain stages of the actor pipeline: staging, archive, dedup, batches.
//! - [`lake`] (feature `lake`, default): Iceberg tables in a local warehouse (SQLite catalog), Snappy Parquet.

#[cfg(feature = "lake")]
pub mod backoff;
pub mod config;
#[cfg(feature = "lake")]
pub mod dedup;
pub mod dialect;
#[cfg(feature = "lake")]
pub mod drain;
pub mod error_text;
#[cfg(feature = "lake")]
pub mod failpoint;
pub mod generate;
#[cfg(feature = "lake")]
pub mod ingest;
#[cfg(feature = "lake")]
pub mod lake;
pub mod model;
pub mod parse;
#[cfg(feature = "lake")]
pub mod telemetry;

pub use dialect::Dialect;

/// Installs rustls's process-wide crypto provider (ring), which TLS to Redis (`rediss://`), to Azure and to an
/// OTLP collector over HTTPS all use; a second call is harmless. Every client that may speak TLS calls it first:
/// without it, building an HTTPS client panics.
#[cfg(feature = "lake")]
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub use model::ParsedFile;
pub use parse::{ParseError, ParseOptions, parse_file};
