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
use crate::dedup::{Dedup, DedupKey, DedupStore};
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
    /// Keys quarantined after this reconcile read the quarantine (ingests ran beside it) and not in `sales_header`:
    /// the next reconcile's. The four figures are read together, after the promotion, so they add up: the distinct
    /// quarantined keys are `confirmed_duplicates + promoted + left`.
    pub left: u64,
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
    #[error(
        "{count} commits in progress (first {first}) did not end within {secs} s: nothing promoted; run reconcile \
         again"
    )]
    CommitsInProgress { count: usize, first: std::path::PathBuf, secs: u64 },
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
    warehouse.check_writable().map_err(IngestError::from)?;
    let lock_path = warehouse.root().join("reconcile.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|source| IngestError::Lake(LakeError::Io { path: lock_path.clone(), source }))?;
    if lock.try_lock().is_err() {
        return Err(ReconcileError::Busy(lock_path));
    }
    let store = Arc::new(Dedup::open(dedup, warehouse.root()).await.map_err(IngestError::from)?);
    let committer = Committer::new(warehouse.clone(), store);
    committer.refuse_a_store_of_another_lake().await?;
    committer.recover(None).await?;

    let mut report = ReconcileReport::default();
    let mut candidates = read_candidates(&warehouse).await?;
    if !candidates.is_empty() {
        if committer.dedup().is_shared() {
            // Ingests may run meanwhile (a shared store), and one may land a candidate between the read above and
            // the commit below: both would then land it. See `promote_fenced`.
            report.commit = promote_fenced(&warehouse, &committer, &mut candidates).await?;
        } else {
            let unfenced: Option<std::future::Ready<Result<(), IngestError>>> = None;
            report.commit = Some(promote(&warehouse, &committer, &candidates, unfenced).await?);
        }
        report.promoted = candidates.len() as u64;
    }
    // Read together, after the promotion: an audit saw figures from reads before and after it (beside ingests)
    // that could not add up (385 rows, 209 confirmed, 203 promoted).
    let (rows, keys, absent) = tally(&warehouse).await?;
    report.quarantined = rows;
    report.left = absent;
    report.confirmed_duplicates = keys.saturating_sub(absent).saturating_sub(report.promoted);
    tracing::info!(
        promoted = report.promoted,
        confirmed = report.confirmed_duplicates,
        left = report.left,
        "reconciled the quarantine"
    );
    Ok(report)
}

/// How long the reconcile fence stays up: past the wait for commits in progress, and then long enough for the
/// commits of keys that ingests checked before the keys reached the filter (their next commit, seconds to minutes
/// away). It is renewed when reconcile commits, and left to expire after.
pub const FENCE_TTL: std::time::Duration = std::time::Duration::from_secs(900);
/// Keys checked longer ago than this are checked again before their commit (see `Dedup::added_since`).
pub const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(FENCE_TTL.as_secs() / 2);
/// How long reconcile waits for commits in progress to end before giving up (promoting nothing).
const COMMITS_IN_PROGRESS_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A quarantined transaction whose key is not in `sales_header`.
struct Candidate {
    key: DedupKey,
    file: String,
    dialect: String,
    hash: String,
    tx: Transaction,
}

/// The quarantined transactions whose keys `sales_header` lacks, each key once (its first quarantined copy).
async fn read_candidates(warehouse: &Warehouse) -> Result<Vec<Candidate>, ReconcileError> {
    let batches = sql(warehouse, CANDIDATES).await?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for batch in &batches {
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
            out.push(Candidate {
                key,
                file: file.value(i).to_owned(),
                dialect: dialect.value(i).to_owned(),
                hash: hash.value(i).to_owned(),
                tx,
            });
        }
    }
    Ok(out)
}

/// Promotes the candidates beside running ingests, each key from one side only:
/// 1. their keys go into the filter, so that ingests' later checks quarantine them;
/// 2. the reconcile fence goes up over them: a commit that holds one (checked before step 1) commits nothing;
/// 3. the commits in progress end (intents locked by live processes: they passed their fence check before step 2),
///    and those of processes that died are finished;
/// 4. the anti-join is read again, leaving out what those commits landed, and the rest is committed, with the
///    fence checked still up in the store this process knows (a Redis that lost its state lost the fence).
///
/// The fence is left to expire, for the ingests still holding keys checked before step 1. The commit's id, if
/// anything was left to promote.
async fn promote_fenced(
    warehouse: &Arc<Warehouse>,
    committer: &Committer,
    candidates: &mut Vec<Candidate>,
) -> Result<Option<String>, ReconcileError> {
    let store = committer.dedup();
    let keys: Vec<DedupKey> = candidates.iter().map(|c| c.key).collect();
    store.add(&keys).await.map_err(IngestError::from)?;
    store.fence(&keys, FENCE_TTL).await.map_err(IngestError::from)?;
    let every_slot: Vec<u32> = (0..super::slot_leases::SLOTS).collect();
    committer.recover(None).await?;
    let (_, waiting) = committer.settle(COMMITS_IN_PROGRESS_LIMIT, &every_slot).await?;
    if let Some(intent) = waiting.first() {
        return Err(ReconcileError::CommitsInProgress {
            count: waiting.len(),
            first: intent.path.clone(),
            secs: COMMITS_IN_PROGRESS_LIMIT.as_secs(),
        });
    }
    let still_absent: HashSet<u128> = read_candidates(warehouse).await?.into_iter().map(|c| c.key.digest).collect();
    candidates.retain(|c| still_absent.contains(&c.key.digest));
    if candidates.is_empty() {
        return Ok(None);
    }
    let fence = async {
        match store.renew_fence(FENCE_TTL).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(IngestError::FenceUnchecked("the reconcile fence is gone".into())),
            Err(e) => Err(IngestError::FenceUnchecked(e.to_string())),
        }
    };
    Ok(Some(promote(warehouse, committer, candidates, Some(fence)).await?))
}

/// Writes the candidates into the silver and bronze tables and commits them (their keys added after), with `fence`
/// checked once the intent is written, if given.
async fn promote(
    warehouse: &Arc<Warehouse>,
    committer: &Committer,
    candidates: &[Candidate],
    fence: Option<impl std::future::Future<Output = Result<(), IngestError>>>,
) -> Result<String, ReconcileError> {
    let mut rows = warehouse.rows();
    for c in candidates {
        let source = Source { name: &c.file, dialect: &c.dialect, content_hash: &c.hash };
        rows.add_transaction(&source, &c.tx).map_err(IngestError::from)?;
    }
    let keys: Vec<DedupKey> = candidates.iter().map(|c| c.key).collect();
    let id = format!("reconcile/{}", uuid::Uuid::new_v4());
    let mut writer = LakeWriter::new(warehouse.clone());
    writer.write(rows).await.map_err(IngestError::from)?;
    let tables = writer.prepare().await.map_err(IngestError::from)?;
    let properties = HashMap::from([(COMMIT_PROPERTY.to_owned(), id.clone())]);
    let commit = PreparedCommit { id: id.clone(), properties, tables, counts: None };
    match fence {
        Some(fence) => committer.commit_fenced(commit, &keys, &[], fence).await?,
        None => committer.commit(commit, &keys).await?,
    };
    Ok(id)
}

/// The quarantine's rows, its distinct keys, and those of its keys `sales_header` lacks, in one query.
async fn tally(warehouse: &Warehouse) -> Result<(u64, u64, u64), ReconcileError> {
    const TALLY: &str = "\
SELECT coalesce(sum(n), 0) AS rows, count(*) AS keys, coalesce(sum(CASE WHEN present THEN 0 ELSE 1 END), 0) AS absent \
FROM (SELECT count(*) AS n, bool_or(h.site IS NOT NULL) AS present FROM sales_duplicates q \
  LEFT JOIN (SELECT DISTINCT site, business_date, coalesce(register, '') AS r, sequence, key_variant FROM sales_header) h \
  ON h.site = q.site AND h.business_date = q.business_date AND h.r = coalesce(q.register, '') \
  AND h.sequence = q.sequence AND h.key_variant = q.key_variant \
  GROUP BY q.site, q.business_date, coalesce(q.register, ''), q.sequence, q.key_variant) g";
    let batches = sql(warehouse, TALLY).await?;
    let value = |i: usize| {
        batches
            .first()
            .and_then(|b| b.column(i).as_any().downcast_ref::<arrow_array::Int64Array>().map(|a| a.value(0) as u64))
            .unwrap_or(0)
    };
    Ok((value(0), value(1), value(2)))
}

/// A string column as plain UTF-8 (DataFusion may hand back string views).
fn string_column(batch: &RecordBatch, name: &str) -> Result<StringArray, ReconcileError> {
    let bad = |reason: String| ReconcileError::Corrupt { key: "sales_duplicates".into(), reason };
    let column = batch.column_by_name(name).ok_or_else(|| bad(format!("no column {name}")))?;
    let utf8 = datafusion::arrow::compute::cast(column, &arrow_schema::DataType::Utf8)
        .map_err(|e| bad(format!("column {name}: {e}")))?;
    utf8.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| bad(format!("column {name} is not a string")))
}
