//! Replaying dead letters (`poslake replay`). A file the ledger holds as a dead letter is done: the ingest never
//! lists it again, and rightly so, since the same bytes fail the same way. But what refused it may have changed: a
//! newer poslake reads a dialect variant it did not, a limit was raised, or the station re-sent a corrected file
//! under the same name and size (which the ingest skips as already seen). Replay takes such files again, through
//! the same pipeline and the same exactly-once protocol as an ingest.
//!
//! A file is selected when its newest ledger row (per path and size) is a dead letter or deferred, and a dead
//! letter of it matches the filter. Once a replay lands it, its newest row is `ingested`, so replaying again does
//! not take it twice. Each file is read from staging; if staging no longer holds it (or holds another file under
//! its name), from the bronze archive, which keeps every file that reached the parser.

use std::collections::{HashMap, HashSet};

use arrow_array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use futures::StreamExt;

use super::IngestError;
use super::staging::StagedFile;
use crate::lake::{LakeError, Outcome, Warehouse};

/// Which dead letters to take again; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Stages that refused the file (`download`, `parse`, `archive`).
    pub stages: Vec<String>,
    /// Kinds of refusal (`malformed`, `schema`, `too_large`, ...).
    pub kinds: Vec<String>,
    /// Staging paths starting with this.
    pub path_prefix: Option<String>,
}

impl ReplayFilter {
    fn matches(&self, path: &str, stage: &str, kind: &str) -> bool {
        (self.stages.is_empty() || self.stages.iter().any(|s| s == stage))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// A dead-lettered file selected for replay, with its latest refusal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadFile {
    pub path: String,
    pub bytes: u64,
    /// BLAKE3 of the bytes that failed, under which the archive holds them; empty if they were never read.
    pub content_hash: String,
    pub stage: String,
    pub kind: String,
    pub reason: String,
}

impl DeadFile {
    /// The file as the pipeline takes it: read from staging, or from the archive under its content hash.
    pub(super) fn staged(&self) -> StagedFile {
        let mut file = StagedFile::new(self.path.clone(), self.bytes);
        file.replay_of = Some(self.content_hash.clone());
        // A name that is not UTF-8 is kept with U+FFFD in place of its bytes: looked up so, the file would seem gone
        // (`missing`) while staging still holds it under its own name.
        if self.kind == "unusable_name" && self.path.contains('\u{FFFD}') {
            file.refused = Some(super::staging::Refusal {
                kind: "unusable_name",
                reason: "its name is not UTF-8 (the ledger holds it with U+FFFD in place of the bytes that are not), \
                         so a replay cannot address it: rename the file in staging, and the next ingest takes it"
                    .to_owned(),
            });
        }
        file
    }
}

/// The latest refusal of one (path, content hash), from `dead_letters`.
struct Refusal {
    stage: String,
    kind: String,
    reason: String,
    at: i64,
}

/// What the ledger says of one (path, size).
#[derive(Default)]
struct FileState {
    /// The newest row's time, outcome and content hash.
    at: i64,
    outcome: String,
    content_hash: String,
    /// The newest non-empty content hash: the bytes the archive holds, even after a replay that could not read
    /// the file recorded none.
    archived_hash: String,
    archived_at: i64,
    /// A row of it is a dead letter: the ingest's file index holds it as done, so only a replay takes it again.
    dead_lettered: bool,
}

/// The dead letters to replay, in path order. Reads `dead_letters` (the latest refusal of each file), then the
/// ledger's rows of those paths (what became of each file since); memory grows with the dead letters, not the
/// ledger.
///
/// The stages and kinds `filter` asks for that no dead letter of the lake has, each with those it has: a typo there
/// would otherwise select nothing, which reads as "nothing to replay".
pub async fn absent_values(warehouse: &Warehouse, filter: &ReplayFilter) -> Result<Vec<String>, IngestError> {
    if filter.stages.is_empty() && filter.kinds.is_empty() {
        return Ok(Vec::new());
    }
    let (mut stages, mut kinds) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let mut batches = warehouse.scan_columns("dead_letters", &["stage", "kind"]).await?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let (stage, kind) = (strings(&batch, "dead_letters", "stage")?, strings(&batch, "dead_letters", "kind")?);
        for i in 0..batch.num_rows() {
            stages.insert(stage.value(i).to_owned());
            kinds.insert(kind.value(i).to_owned());
        }
    }
    let absent = |what: &str, asked: &[String], present: &std::collections::BTreeSet<String>| {
        let list = present.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        let list = if list.is_empty() { "none".to_owned() } else { list };
        asked
            .iter()
            .filter(|a| !present.contains(*a))
            .map(|a| format!("no dead letter of this lake has {what} {a:?} (its {what}s: {list})"))
            .collect::<Vec<_>>()
    };
    let mut out = absent("stage", &filter.stages, &stages);
    out.extend(absent("kind", &filter.kinds, &kinds));
    Ok(out)
}

/// A file (path and size) is taken when its newest ledger row is a dead letter, or deferred after being one (a
/// deferred file never dead-lettered is the ingest's to retry), when its latest refusal matches the filter, and
/// unless a file of the same path but another size landed after it: a corrected file re-sent under its name.
pub async fn select(warehouse: &Warehouse, filter: &ReplayFilter) -> Result<Vec<DeadFile>, IngestError> {
    let mut refusals: HashMap<(String, String), Refusal> = HashMap::new();
    let mut batches = warehouse
        .scan_columns("dead_letters", &["path", "content_hash", "stage", "kind", "reason", "failed_at"])
        .await?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let (path, hash, stage, kind, reason) = (
            strings(&batch, "dead_letters", "path")?,
            strings(&batch, "dead_letters", "content_hash")?,
            strings(&batch, "dead_letters", "stage")?,
            strings(&batch, "dead_letters", "kind")?,
            strings(&batch, "dead_letters", "reason")?,
        );
        let at = timestamps(&batch, "dead_letters", "failed_at")?;
        for i in 0..batch.num_rows() {
            if !filter.path_prefix.as_deref().is_none_or(|p| path.value(i).starts_with(p)) {
                continue;
            }
            let key = (path.value(i).to_owned(), hash.value(i).to_owned());
            if refusals.get(&key).is_some_and(|r| r.at > at.value(i)) {
                continue;
            }
            let refusal = Refusal {
                stage: stage.value(i).to_owned(),
                kind: kind.value(i).to_owned(),
                reason: reason.value(i).to_owned(),
                at: at.value(i),
            };
            refusals.insert(key, refusal);
        }
    }
    if refusals.is_empty() {
        return Ok(Vec::new());
    }

    let paths: HashSet<&str> = refusals.keys().map(|(p, _)| p.as_str()).collect();
    let mut files: HashMap<(String, u64), FileState> = HashMap::new();
    // Per path, when a file under it last landed (whatever its size).
    let mut landed: HashMap<String, i64> = HashMap::new();
    let mut batches =
        warehouse.scan_columns("file_ledger", &["path", "bytes", "content_hash", "outcome", "ingested_at"]).await?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let (path, hash, outcome) = (
            strings(&batch, "file_ledger", "path")?,
            strings(&batch, "file_ledger", "content_hash")?,
            strings(&batch, "file_ledger", "outcome")?,
        );
        let size = batch
            .column_by_name("bytes")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| schema("file_ledger", "bytes", &batch))?;
        let at = timestamps(&batch, "file_ledger", "ingested_at")?;
        for i in 0..batch.num_rows() {
            let (p, t, o, h) = (path.value(i), at.value(i), outcome.value(i), hash.value(i));
            if !paths.contains(p) {
                continue;
            }
            if !still_dead(o) {
                let when = landed.entry(p.to_owned()).or_insert(t);
                *when = (*when).max(t);
            }
            let f = files.entry((p.to_owned(), size.value(i) as u64)).or_default();
            f.dead_lettered |= o == Outcome::DeadLetter.as_str();
            if !h.is_empty() && (f.archived_hash.is_empty() || t >= f.archived_at) {
                (f.archived_hash, f.archived_at) = (h.to_owned(), t);
            }
            // At the same instant, a landed row wins: a file is never taken twice.
            if f.outcome.is_empty() || t > f.at || (t == f.at && !still_dead(o)) {
                (f.at, f.outcome, f.content_hash) = (t, o.to_owned(), h.to_owned());
            }
        }
    }

    let mut out: Vec<DeadFile> = files
        .into_iter()
        .filter(|(_, f)| f.outcome == Outcome::DeadLetter.as_str() || (still_dead(&f.outcome) && f.dead_lettered))
        .filter(|((path, _), f)| landed.get(path).is_none_or(|&t| t < f.at))
        .filter_map(|((path, bytes), f)| {
            let r = refusals.get(&(path.clone(), f.content_hash.clone()))?;
            filter.matches(&path, &r.stage, &r.kind).then(|| DeadFile {
                path,
                bytes,
                content_hash: f.archived_hash,
                stage: r.stage.clone(),
                kind: r.kind.clone(),
                reason: r.reason.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.path, a.bytes).cmp(&(&b.path, b.bytes)));
    Ok(out)
}

/// Held while a replay runs: two replays at once would each take the same dead letters, and with a shared store
/// both would land them (neither has added its keys when the other checks them). Released when dropped, or when the
/// process dies.
pub(super) fn lock(lake: &std::path::Path) -> Result<std::fs::File, IngestError> {
    let path = lake.join("replay.lock");
    let io = |source| IngestError::Lake(LakeError::Io { path: path.clone(), source });
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(IngestError::ReplayRunning(lake.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

fn still_dead(outcome: &str) -> bool {
    outcome == Outcome::DeadLetter.as_str() || outcome == Outcome::Deferred.as_str()
}

fn strings<'a>(batch: &'a RecordBatch, table: &'static str, name: &str) -> Result<&'a StringArray, LakeError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| schema(table, name, batch))
}

fn timestamps<'a>(
    batch: &'a RecordBatch,
    table: &'static str,
    name: &str,
) -> Result<&'a TimestampMicrosecondArray, LakeError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| schema(table, name, batch))
}

/// poslake's own tables altered outside it: an error, never a silently empty selection.
fn schema(table: &'static str, column: &str, batch: &RecordBatch) -> LakeError {
    LakeError::Schema {
        table,
        reason: format!("column `{column}` is missing or of another type in {}", batch.schema()),
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayFilter;

    #[test]
    fn an_empty_filter_matches_every_dead_letter_and_each_part_narrows_it() {
        let all = ReplayFilter::default();
        assert!(all.matches("a/b.xml", "parse", "malformed"));
        let parse = ReplayFilter { stages: vec!["parse".into()], ..ReplayFilter::default() };
        assert!(parse.matches("a/b.xml", "parse", "schema"));
        assert!(!parse.matches("a/b.xml", "download", "too_large"));
        let kinds = ReplayFilter { kinds: vec!["schema".into(), "malformed".into()], ..ReplayFilter::default() };
        assert!(kinds.matches("x", "parse", "malformed"));
        assert!(!kinds.matches("x", "parse", "truncated"));
        let prefix = ReplayFilter { path_prefix: Some("site=7/".into()), ..ReplayFilter::default() };
        assert!(prefix.matches("site=7/2026-11-26.xml", "parse", "malformed"));
        assert!(!prefix.matches("site=70/2026-11-26.xml", "parse", "malformed"));
    }
}
