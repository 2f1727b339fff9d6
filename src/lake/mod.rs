//! The lake: parsed files → Arrow batches → Snappy Parquet → Iceberg tables in a local warehouse with a SQLite
//! catalog.
//!
//! - [`tables`]: table definitions (columns, partitioning) from which schemas and batches are both made;
//! - [`columns`]: typed Arrow column building, with schema checks on every value;
//! - [`rows`]: parsed files → rows per table and business date;
//! - [`commit_log`]: commits across tables made atomic by rolling forward a durable intent;
//! - [`expire`]: snapshot histories, and expiring old snapshots so that metadata stays bounded;
//! - [`merge`]: merging small manifests so that manifest lists stay short;
//! - [`orphans`]: deleting files no snapshot references (left by failed runs);
//! - [`warehouse`]: the catalog, table creation and checking, appends with snapshot properties, reads;
//! - [`catalog_row`]: the catalog's row for a table, read back after every commit;
//! - [`query`]: SQL over the tables (DataFusion).

mod catalog_row;
pub mod columns;
pub mod commit_log;
pub mod expire;
pub mod merge;
pub mod orphans;
pub mod query;
pub mod rows;
pub mod tables;
pub mod verify;
pub mod warehouse;

use std::path::PathBuf;

pub use commit_log::{COMMIT_PROPERTY, IntentLock, LiveIntent, PreparedCommit, PreparedTable};
pub use rows::{DeadLetter, LedgerEntry, Outcome, Rows};
pub use warehouse::{Commit, LakeWriter, Warehouse};

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("table {table}: {reason}")]
    Schema { table: &'static str, reason: String },
    #[error("iceberg: {0}{hint}", hint = locked_catalog_hint(&crate::error_text::chain(.0)))]
    Iceberg(#[from] iceberg::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The orphan sweep found a referenced file outside the table's folder: a layout it does not understand.
    #[error("{table}: {path} is referenced but not under {root}; not sweeping")]
    UnsafeSweep { table: String, path: PathBuf, root: PathBuf },
    /// A table's write task was cancelled (the runtime is shutting down); nothing of the batch is committed.
    #[error("table {table}: its write was cancelled")]
    Cancelled { table: &'static str },
    /// The catalog cannot be used: a URL of another kind, a database that refuses the connection, or one that holds
    /// another lake's tables.
    #[error("{0}")]
    Catalog(String),
    /// A commit that iceberg-catalog-sql returned as made, which the catalog database did not record (it refused the
    /// transaction's `COMMIT`, and the crate drops that result).
    #[error(
        "table {table}: the catalog {catalog} did not record the change just made to it (its database refused the \
         COMMIT: locked by another connection past the busy timeout, or out of space); nothing of it is visible"
    )]
    Unrecorded { table: String, catalog: String },
    /// Writing or closing a table's data files failed (a full disk, say): the error, with the table it was for.
    #[error("table {table}: writing its data files: {source}")]
    Write { table: &'static str, source: Box<LakeError> },
}

/// What a SQLite catalog's "database is locked" means, for an error that says only that (iceberg-catalog-sql's,
/// opening the lake or loading a table while another process holds the catalog's write lock past the busy timeout).
pub(crate) fn locked_catalog_hint(error: &str) -> &'static str {
    match error.contains("database is locked") {
        true => {
            " (another process holds the SQLite catalog's lock past its busy timeout: a poslake stopped or frozen \
             mid-write, or a long reader; nothing was changed by this, and a later run tries again)"
        }
        false => "",
    }
}

impl LakeError {
    /// Commit conflicts and I/O may pass on retry; a schema mismatch will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            LakeError::Schema { .. }
            | LakeError::Arrow(_)
            | LakeError::Parquet(_)
            | LakeError::UnsafeSweep { .. }
            | LakeError::Catalog(_) => false,
            LakeError::Iceberg(e) => e.retryable(),
            LakeError::Io { .. } | LakeError::Cancelled { .. } | LakeError::Unrecorded { .. } => true,
            LakeError::Write { source, .. } => source.is_retryable(),
        }
    }

    /// Names `table` in an error of Iceberg, Parquet or Arrow, which do not say what they were writing.
    pub(crate) fn in_table(self, table: &'static str) -> LakeError {
        match self {
            e @ (LakeError::Iceberg(_) | LakeError::Parquet(_) | LakeError::Arrow(_)) => {
                LakeError::Write { table, source: Box::new(e) }
            }
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_sqlite_catalog_is_named_as_such() {
        let locked = std::io::Error::other("error returned from database: (code: 5) database is locked");
        let e = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "operation failed for hitting sqlx error")
            .with_source(locked);
        let text = LakeError::Iceberg(e).to_string();
        assert!(text.contains("another process holds the SQLite catalog's lock"), "{text}");
        let other = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "something else");
        assert!(!LakeError::Iceberg(other).to_string().contains("SQLite catalog"));
    }
}
