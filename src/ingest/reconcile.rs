//! `poslake reconcile`: verifies the quarantine exactly. Every key in `sales_duplicates` is looked up in
//! `sales_header` (an anti-join through DataFusion); a key that is not there was a false positive of the Bloom
//! filter, and its first quarantined copy is promoted into the silver and bronze tables — through the same
//! commit protocol as the ingest, so a crash mid-promotion is finished by the next start and nothing lands twice
//! (a promoted key is in `sales_header` from then on, so the anti-join never picks it again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use serde::Serialize;

use super::IngestError;
use super::commit::Committer;
use crate::config::DedupConfig;
use crate::dedup::{Dedup, DedupKey};
use crate::lake::query::{QueryError, sql};
use crate::lake::rows::Source;
use crate::lake::{COMMIT_PROPERTY, LakeError, LakeWriter, PreparedCommit, Warehouse};
use crate::model::Transaction;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Rows in the quarantine.
    pub quarantined: u64,
    /// Quarantined keys already in `sales_header`: true duplicates (or promoted earlier).
    pub confirmed_duplicates: u64,
    /// Keys not in `sales_header` (false positives), promoted now.
    pub promoted: u64,
    /// The commit that promoted them.
    pub commit: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("another reconcile holds {0}; run one at a time")]
    Busy(std::path::PathBuf),
    #[error("quarantined transaction {key} cannot be read back: {reason}")]
    Corrupt { key: String, reason: String },
}

const CANDIDATES: &str = "\
SELECT q.source_file, q.dialect, q.source_hash, q.transaction FROM sales_duplicates q \
WHERE NOT EXISTS (SELECT 1 FROM sales_header h WHERE h.site = q.site AND h.business_date = q.business_date \
  AND h.sequence = q.sequence AND h.key_variant = q.key_variant \
  AND coalesce(h.register, '') = coalesce(q.register, '')) \
ORDER BY q.detected_at, q.source_file";

pub async fn reconcile(
    lake: &std::path::Path,
    catalog: Option<&str>,
    dedup: &DedupConfig,
) -> Result<ReconcileReport, ReconcileError> {
    let warehouse = Arc::new(Warehouse::open_with(lake, catalog).await.map_err(IngestError::from)?);
    let lock_path = warehouse.root().join("reconcile.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|source| IngestError::Lake(LakeError::Io { path: lock_path.clone(), source }))?;
    if lock.try_lock().is_err() {
        return Err(ReconcileError::Busy(lock_path));
    }
    let store = Arc::new(Dedup::open(dedup, warehouse.root()).await.map_err(IngestError::from)?);
    let committer = Committer::new(warehouse.clone(), store);
    committer.recover(None).await?;

    let mut report = ReconcileReport {
        quarantined: warehouse.row_count("sales_duplicates").await.map_err(IngestError::from)?,
        ..Default::default()
    };
    let candidates = sql(&warehouse, CANDIDATES).await?;
    let mut rows = warehouse.rows();
    let mut keys: Vec<DedupKey> = Vec::new();
    let mut seen = HashSet::new();
    for batch in &candidates {
        let col = |name: &str| string_column(batch, name);
        let (file, dialect, hash, json) =
            (col("source_file")?, col("dialect")?, col("source_hash")?, col("transaction")?);
        for i in 0..batch.num_rows() {
            let tx: Transaction = serde_json::from_str(json.value(i))
                .map_err(|e| ReconcileError::Corrupt { key: format!("in {}", file.value(i)), reason: e.to_string() })?;
            let key = DedupKey::of(&tx.header.key);
            // The same false positive may be quarantined more than once (a re-sent file): promote it once.
            if !seen.insert(key.digest) {
                continue;
            }
            let source = Source { name: file.value(i), dialect: dialect.value(i), content_hash: hash.value(i) };
            rows.add_transaction(&source, &tx).map_err(IngestError::from)?;
            keys.push(key);
        }
    }
    report.promoted = keys.len() as u64;
    let distinct = distinct_quarantined(&warehouse).await?;
    report.confirmed_duplicates = distinct.saturating_sub(report.promoted);
    if keys.is_empty() {
        return Ok(report);
    }
    let id = format!("reconcile/{}", uuid::Uuid::new_v4());
    let mut writer = LakeWriter::new(warehouse.clone());
    writer.write(rows).await.map_err(IngestError::from)?;
    let tables = writer.prepare().await.map_err(IngestError::from)?;
    let properties = HashMap::from([(COMMIT_PROPERTY.to_owned(), id.clone())]);
    committer.commit(PreparedCommit { id: id.clone(), properties, tables }, &keys).await?;
    report.commit = Some(id);
    tracing::info!(promoted = report.promoted, confirmed = report.confirmed_duplicates, "reconciled the quarantine");
    Ok(report)
}

async fn distinct_quarantined(warehouse: &Warehouse) -> Result<u64, ReconcileError> {
    let q = "SELECT count(*) AS n FROM (SELECT DISTINCT site, business_date, coalesce(register, '') AS r, sequence, \
             key_variant FROM sales_duplicates) d";
    let batches = sql(warehouse, q).await?;
    Ok(batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow_array::Int64Array>().map(|a| a.value(0) as u64))
        .unwrap_or(0))
}

/// A string column as plain UTF-8 (DataFusion may hand back string views).
fn string_column(batch: &RecordBatch, name: &str) -> Result<StringArray, ReconcileError> {
    let bad = |reason: String| ReconcileError::Corrupt { key: "sales_duplicates".into(), reason };
    let column = batch.column_by_name(name).ok_or_else(|| bad(format!("no column {name}")))?;
    let utf8 = datafusion::arrow::compute::cast(column, &arrow_schema::DataType::Utf8)
        .map_err(|e| bad(format!("column {name}: {e}")))?;
    utf8.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| bad(format!("column {name} is not a string")))
}
