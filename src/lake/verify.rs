//! `poslake verify`: checks that the lake is exact, through SQL over its tables. The ingest's protocol is meant to
//! make these hold; this is how an operator confirms it after a backload, or finds what slipped through (two workers
//! routed by folder that took one sale in the same commit window land it twice: see docs/dedup.md, "Scaling out").
//!
//! Each check counts what breaks one rule and shows a few examples. Reading changes nothing in the lake.

use arrow_array::{Array, Int64Array, RecordBatch};
use chrono::NaiveDate;
use datafusion::arrow::util::display::array_value_to_string;
use serde::Serialize;

use super::query::{QueryError, sql};
use super::{LakeError, Warehouse};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// What a broken rule means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The lake is not exact: a sale counted twice, or rows that do not belong together.
    Violation,
    /// Work that is due, not a fault: quarantined keys that `poslake reconcile` has yet to settle.
    Pending,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub rule: &'static str,
    pub severity: Severity,
    /// How many keys, files or rows break the rule.
    pub found: u64,
    /// Up to `samples` of them, as `column=value` lists.
    pub examples: Vec<String>,
    /// Why the check was not run (a table the lake does not have yet, or see `unsettled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Left out because commits were unfinished or landing while the lake was checked: run verify again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unsettled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Business dates checked (both ends included); none: all.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// Commits unfinished when the checks across tables were last tried (in progress, or left by a process that
    /// died: the next ingest finishes those). Their tables may be landed in part, so those checks are then left out.
    pub unfinished_commits: usize,
    pub checks: Vec<Check>,
}

impl VerifyReport {
    /// Whether no rule of severity [`Severity::Violation`] is broken.
    pub fn exact(&self) -> bool {
        self.checks.iter().all(|c| c.severity != Severity::Violation || c.found == 0)
    }

    /// The checks left out because the lake did not keep still for them (commits unfinished, or landing meanwhile):
    /// an exact answer then covers only the others.
    pub fn unsettled(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| c.skipped.is_some() && c.unsettled).map(|c| c.name).collect()
    }
}

/// A transaction's key, as every transaction-level table holds it (`register` may be null).
const KEY: &str = "site, business_date, register, sequence, key_variant";

/// The same key of two tables, `a` and `b`, as a join condition.
fn same_key(a: &str, b: &str) -> String {
    format!(
        "{b}.site = {a}.site AND {b}.business_date = {a}.business_date AND {b}.sequence = {a}.sequence \
         AND {b}.key_variant = {a}.key_variant AND coalesce({b}.register, '') = coalesce({a}.register, '')"
    )
}

struct Rule {
    name: &'static str,
    rule: &'static str,
    severity: Severity,
    tables: &'static [&'static str],
    /// The rows that break the rule, each an example. `{dates}` stands for the business-date filter of the range
    /// asked for (`AND …`, or nothing), applied to each transaction-level table read.
    query: String,
}

impl Rule {
    fn violation(name: &'static str, rule: &'static str, tables: &'static [&'static str], query: String) -> Self {
        Rule { name, rule, severity: Severity::Violation, tables, query }
    }
}

/// Keys that `table` holds more than once.
fn keys_twice(table: &str) -> String {
    format!("SELECT {KEY}, count(*) AS copies FROM {table} WHERE true {{dates}} GROUP BY {KEY} HAVING count(*) > 1")
}

/// Rows of `table` (aliased `a`) whose key `other` (aliased `b`) lacks.
fn without(table: &str, other: &str) -> String {
    format!(
        "SELECT {KEY}{extra} FROM {table} a WHERE true {{dates}} AND NOT EXISTS (SELECT 1 FROM {other} b WHERE {on})",
        extra = if table == "sales_header" { ", source_file" } else { "" },
        on = same_key("a", "b")
    )
}

fn rules() -> Vec<Rule> {
    const HEADER_BRONZE: &[&str] = &["sales_header", "bronze_transaction"];
    vec![
        Rule::violation(
            "sales_header_keys_twice",
            "each transaction key is in sales_header once",
            &["sales_header"],
            keys_twice("sales_header"),
        ),
        Rule::violation(
            "bronze_keys_twice",
            "each transaction key is in bronze_transaction once",
            &["bronze_transaction"],
            keys_twice("bronze_transaction"),
        ),
        Rule::violation(
            "headers_without_bronze",
            "each transaction in sales_header has its bronze record",
            HEADER_BRONZE,
            without("sales_header", "bronze_transaction"),
        ),
        Rule::violation(
            "bronze_without_header",
            "each bronze record has its transaction in sales_header",
            HEADER_BRONZE,
            without("bronze_transaction", "sales_header"),
        ),
        Rule::violation(
            "line_counts",
            "each transaction's sales_line rows are as many as its header's line_count",
            &["sales_header", "sales_line"],
            counts_query("sales_line", "line_count"),
        ),
        Rule::violation(
            "discount_counts",
            "each transaction's sales_discount rows are as many as its header's discount_count",
            &["sales_header", "sales_discount"],
            counts_query("sales_discount", "discount_count"),
        ),
        Rule::violation(
            "files_ingested_twice",
            "each file (path and content) is ingested once",
            &["file_ledger"],
            "SELECT path, content_hash, count(*) AS times FROM file_ledger WHERE outcome = 'ingested' \
             GROUP BY path, content_hash HAVING count(*) > 1"
                .to_owned(),
        ),
        Rule {
            name: "quarantine_to_reconcile",
            rule: "each quarantined key is in sales_header (else `poslake reconcile` promotes it)",
            severity: Severity::Pending,
            tables: &["sales_duplicates", "sales_header"],
            query: format!(
                "SELECT DISTINCT {KEY}, reason FROM sales_duplicates a WHERE true {{dates}} AND NOT EXISTS \
                 (SELECT 1 FROM sales_header b WHERE {})",
                same_key("a", "b")
            ),
        },
    ]
}

/// Headers whose count of `table` rows differs from their `column`, and rows of `table` whose key has no header:
/// lines without their header were landed apart from it, or their header was lost. (A key landed twice doubles
/// both sides alike: `keys_twice` finds it.)
fn counts_query(table: &str, column: &str) -> String {
    format!(
        "SELECT coalesce(h.site, c.site) AS site, coalesce(h.business_date, c.business_date) AS business_date, \
         coalesce(h.register, c.register) AS register, coalesce(h.sequence, c.sequence) AS sequence, \
         coalesce(h.key_variant, c.key_variant) AS key_variant, h.{column} AS expected, \
         coalesce(c.n, 0) AS rows_found \
         FROM (SELECT {KEY}, sum({column}) AS {column} FROM sales_header WHERE true {{dates}} GROUP BY {KEY}) h \
         FULL JOIN (SELECT {KEY}, count(*) AS n FROM {table} WHERE true {{dates}} GROUP BY {KEY}) c ON {} \
         WHERE h.site IS NULL OR coalesce(c.n, 0) <> h.{column}",
        same_key("h", "c")
    )
}

/// Runs every check over business dates `from..=to` (each end optional), with up to `samples` examples each.
///
/// A commit lands its tables one after the other, so the checks across tables hold only between commits: they are
/// run while no commit is unfinished and no table they read changes, and again (three times at most) if one did;
/// a lake that never kept still that long, or holds a commit left unfinished by a process that died, has them
/// left out, with the reason, rather than reported broken.
pub async fn verify(
    warehouse: &Warehouse,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    samples: usize,
) -> Result<VerifyReport, VerifyError> {
    let mut dates = String::new();
    if let Some(from) = from {
        dates.push_str(&format!(" AND business_date >= DATE '{from}'"));
    }
    if let Some(to) = to {
        dates.push_str(&format!(" AND business_date <= DATE '{to}'"));
    }
    let (within, across): (Vec<Rule>, Vec<Rule>) = rules().into_iter().partition(|r| !r.across_tables());
    let mut checks = Vec::new();
    for rule in &within {
        checks.push(run(warehouse, rule, &dates, samples).await?);
    }
    let read: Vec<&str> = {
        let mut t: Vec<&str> = across.iter().flat_map(|r| r.tables.iter().copied()).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let mut unfinished_commits = 0;
    let mut settled = None;
    for _ in 0..3 {
        let before = (warehouse.pending_intent_ids()?.len(), snapshots(warehouse, &read).await?);
        unfinished_commits = before.0;
        if before.0 > 0 {
            break; // a commit left unfinished stays so until an ingest finishes it
        }
        let mut found = Vec::new();
        for rule in &across {
            found.push(run(warehouse, rule, &dates, samples).await?);
        }
        let after = (warehouse.pending_intent_ids()?.len(), snapshots(warehouse, &read).await?);
        unfinished_commits = after.0;
        if after == before {
            settled = Some(found);
            break;
        }
    }
    match settled {
        Some(found) => checks.extend(found),
        None => {
            let why = match unfinished_commits {
                0 => "the tables changed while they were checked (ingests committing): run verify again".to_owned(),
                n => format!(
                    "{n} commits unfinished (in progress, or left by a process that died: the next ingest finishes \
                     them), their tables landed in part: run verify again once they end"
                ),
            };
            for rule in &across {
                checks.push(Check { skipped: Some(why.clone()), unsettled: true, ..Check::of(rule) });
            }
        }
    }
    // In the order of `rules()`.
    let order: Vec<&str> = rules().iter().map(|r| r.name).collect();
    checks.sort_by_key(|c| order.iter().position(|n| *n == c.name));
    Ok(VerifyReport { from, to, unfinished_commits, checks })
}

/// Runs one rule's check.
async fn run(warehouse: &Warehouse, rule: &Rule, dates: &str, samples: usize) -> Result<Check, VerifyError> {
    let mut check = Check::of(rule);
    let mut absent = Vec::new();
    for table in rule.tables {
        if !warehouse.has_table(table).await? {
            absent.push(*table);
        }
    }
    if !absent.is_empty() {
        check.skipped = Some(format!("no table {} yet", absent.join(", ")));
        return Ok(check);
    }
    let breaking = rule.query.replace("{dates}", dates);
    check.found = count(&sql(warehouse, &format!("SELECT count(*) FROM ({breaking}) broken")).await?);
    if check.found > 0 && samples > 0 {
        let rows = sql(warehouse, &format!("SELECT * FROM ({breaking}) broken LIMIT {samples}")).await?;
        check.examples = examples(&rows);
    }
    Ok(check)
}

/// The current snapshot of each table (none for a table not made yet, or without a snapshot).
async fn snapshots(warehouse: &Warehouse, tables: &[&str]) -> Result<Vec<Option<i64>>, VerifyError> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let id = match warehouse.has_table(table).await? {
            true => warehouse.load(table).await?.metadata().current_snapshot().map(|s| s.snapshot_id()),
            false => None,
        };
        out.push(id);
    }
    Ok(out)
}

impl Check {
    fn of(rule: &Rule) -> Self {
        Check {
            name: rule.name,
            rule: rule.rule,
            severity: rule.severity,
            found: 0,
            examples: Vec::new(),
            skipped: None,
            unsettled: false,
        }
    }
}

impl Rule {
    /// Whether the rule compares tables that a commit lands one after the other.
    fn across_tables(&self) -> bool {
        self.severity == Severity::Violation && self.tables.len() > 1
    }
}

fn count(batches: &[RecordBatch]) -> u64 {
    batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0) as u64))
        .unwrap_or(0)
}

/// Each row as `column=value` pairs (nulls left out).
fn examples(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let fields: Vec<String> = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .filter(|(_, column)| !column.is_null(row))
                .map(|(field, column)| {
                    let value = array_value_to_string(column, row).unwrap_or_else(|e| format!("({e})"));
                    format!("{}={value}", field.name())
                })
                .collect();
            out.push(fields.join(" "));
        }
    }
    out
}
