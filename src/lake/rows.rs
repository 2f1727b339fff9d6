//! Parsed files → rows of the silver and bronze tables, grouped by table and business date (the partition).

use std::collections::BTreeMap;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::SchemaRef;
use arrow_select::filter::filter_record_batch;
use chrono::{NaiveDate, NaiveDateTime};

use super::LakeError;
use super::columns::{Capacity, Columns, Value};
use super::tables::{
    BRONZE_TRANSACTION, DEAD_LETTERS, FILE_LEDGER, SALES_DISCOUNT, SALES_DUPLICATES, SALES_HEADER, SALES_LINE,
    SALES_VOIDS, TABLES, TableDef,
};
use crate::model::{ParsedFile, SalesHeader, Transaction};

/// Where a transaction came from, as the tables record it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub name: &'a str,
    pub dialect: &'a str,
    /// BLAKE3 of the source file's bytes.
    pub content_hash: &'a str,
}

impl<'a> Source<'a> {
    pub fn of(file: &'a ParsedFile) -> Self {
        Source { name: &file.facts.name, dialect: file.facts.dialect.id(), content_hash: &file.facts.content_hash }
    }
}

/// Why a transaction went to the `sales_duplicates` quarantine instead of the silver tables.
#[derive(Debug, Clone)]
pub struct Quarantine<'a> {
    pub run_id: &'a str,
    /// `filter`: the dedup filter said "probably seen".
    pub reason: &'a str,
    pub at: NaiveDateTime,
}

/// One table's finished batches, one per business date.
pub type TableBatches = (&'static TableDef, Vec<(Option<NaiveDate>, RecordBatch)>);

// Indices in [`TABLES`]: first the tables a transaction fills (`add_transaction`, and `FileRows` after it).
const HEADER: usize = 0;
const LINE: usize = 1;
const DISCOUNT: usize = 2;
const BRONZE: usize = 3;
const VOIDS: usize = 4;
const QUARANTINE: usize = 5;
const DEAD_LETTER: usize = 6;
const LEDGER: usize = 7;

/// A finished batch of one table (its index in [`TABLES`]) and business date.
pub type TableBatch = (usize, Option<NaiveDate>, RecordBatch);

/// Rows gathered for one append, per table and business date.
pub struct Rows {
    schemas: Vec<SchemaRef>,
    /// Indexed like [`TABLES`].
    /// Per table, per partition (business date; `None` for unpartitioned tables).
    tables: Vec<BTreeMap<Option<NaiveDate>, Columns>>,
    /// Batches built elsewhere (a file's [`FileRows`]), written alongside.
    built: Vec<TableBatch>,
}

impl Rows {
    /// `schemas`: the Arrow schemas of [`TABLES`], in order.
    pub fn new(schemas: Vec<SchemaRef>) -> Self {
        let tables = schemas.iter().map(|_| BTreeMap::new()).collect();
        Rows { schemas, tables, built: Vec::new() }
    }

    /// Reserves room in one table's columns for a business date (before any row of it is added).
    pub fn presize(&mut self, table: usize, date: Option<NaiveDate>, cap: Capacity) {
        let (Some(def), Some(schema)) = (TABLES.get(table), self.schemas.get(table)) else { return };
        let schema = schema.clone();
        self.tables[table].entry(date).or_insert_with(|| Columns::with_capacity(def, schema, cap));
    }

    /// Adds batches already built (a file's selected [`FileRows`]).
    pub fn add_built(&mut self, batches: impl IntoIterator<Item = TableBatch>) {
        self.built.extend(batches.into_iter().filter(|(_, _, b)| b.num_rows() > 0));
    }

    /// Adds every transaction of one parsed file.
    pub fn add_file(&mut self, file: &ParsedFile) -> Result<(), LakeError> {
        for tx in &file.transactions {
            self.add_transaction(&Source::of(file), tx)?;
        }
        Ok(())
    }

    /// Adds one transaction's rows; a value the tables refuse is named with the transaction it is in.
    pub fn add_transaction(&mut self, file: &Source, tx: &Transaction) -> Result<(), LakeError> {
        self.add_rows(file, tx).map_err(|e| match e {
            LakeError::Schema { table, reason } => {
                let k = &tx.header.key;
                let register = k.register.as_deref().map(|r| format!(", register {r}")).unwrap_or_default();
                let at = format!("site {}, {}{register}, sequence {}", k.site, k.business_date, k.sequence);
                LakeError::Schema { table, reason: format!("{reason} (transaction {at})") }
            }
            other => other,
        })
    }

    fn add_rows(&mut self, file: &Source, tx: &Transaction) -> Result<(), LakeError> {
        let h = &tx.header;
        let date = h.key.business_date;
        let f = &h.flags;
        let cols = self.columns(HEADER, &SALES_HEADER, Some(date));
        key(cols, file, h)?
            .push(Value::Str(Some(file.name)))?
            .push(Value::Str(Some(file.dialect)))?
            .push(Value::Int(Some(h.ordinal as i32)))?
            .push(Value::Str(h.cashier.as_deref()))?
            .push(Value::Timestamp(h.start_time))?
            .push(Value::Timestamp(h.end_time))?
            .push(Value::Str(Some(h.transaction_type.as_str())))?
            .push(Value::Str(h.type_raw.as_deref()))?
            .push(Value::Bool(f.training))?
            .push(Value::Bool(f.suspended))?
            .push(Value::Bool(f.voided))?
            .push(Value::Bool(f.rollback))?
            .push(Value::Bool(f.fuel_prepay))?
            .push(Value::Bool(f.fuel_completion))?
            .push(Value::Bool(f.outside_sale))?
            .push(Value::Bool(f.offline))?
            .push(Value::Bool(f.journal))?
            .push(Value::Bool(f.excluded_from_sales()))?
            .push(Value::Decimal(h.gross_amount))?
            .push(Value::Decimal(h.net_amount))?
            .push(Value::Decimal(h.tax_amount))?
            .push(Value::Decimal(h.total_amount))?
            .push(Value::Int(Some(tx.lines.len() as i32)))?
            .push(Value::Int(Some(tx.discounts.len() as i32)))?;

        for l in &tx.lines {
            let cols = self.columns(LINE, &SALES_LINE, Some(date));
            key(cols, file, h)?
                .push(Value::Int(Some(l.line_number as i32)))?
                .push(Value::Str(Some(line_kind(l.kind))))?
                .push(Value::Str(l.kind_raw.as_deref()))?
                .push(Value::Str(l.item_code.as_deref()))?
                .push(Value::Str(l.description.as_deref()))?
                .push(Value::Str(l.department.as_deref()))?
                .push(Value::Decimal(l.quantity))?
                .push(Value::Decimal(l.unit_price))?
                .push(Value::Decimal(l.extended_amount))?
                .push(Value::Decimal(l.tax_amount))?
                .push(Value::Bool(l.voided))?
                .push(Value::Bool(l.refund))?
                .push(Value::Str(l.fuel_grade.as_deref()))?
                .push(Value::Str(l.fuel_position.as_deref()))?
                .push(Value::Decimal(l.fuel_volume))?
                .push(Value::Decimal(l.fuel_unit_price))?;
        }
        for (i, d) in tx.discounts.iter().enumerate() {
            let cols = self.columns(DISCOUNT, &SALES_DISCOUNT, Some(date));
            key(cols, file, h)?
                .push(Value::Int(Some(i as i32 + 1)))?
                .push(Value::Int(d.line_number.map(|n| n as i32)))?
                .push(Value::Str(d.applies_to.as_deref()))?
                .push(Value::Str(d.promotion_id.as_deref()))?
                .push(Value::Str(d.description.as_deref()))?
                .push(Value::Decimal(d.amount))?
                .push(Value::Str(d.kind.as_deref()))?
                .push(Value::Bool(d.voided))?;
        }
        let cols = self.columns(BRONZE, &BRONZE_TRANSACTION, Some(date));
        key(cols, file, h)?
            .push(Value::Str(Some(file.dialect)))?
            .push(Value::Int(Some(h.ordinal as i32)))?
            .push(Value::StrMap(&tx.bronze))?;
        if let Some(v) = &h.voids {
            let cols = self.columns(VOIDS, &SALES_VOIDS, Some(date));
            key(cols, file, h)?
                .push(Value::Str(Some(&v.site)))?
                .push(Value::Date(v.business_date))?
                .push(Value::Str(v.register.as_deref()))?
                .push(Value::Str(Some(&v.sequence)))?
                .push(Value::Str(Some(variant(h.key.variant))))?
                .push(Value::Str(Some(file.name)))?
                .push(Value::Str(Some(file.dialect)))?;
        }
        Ok(())
    }

    /// Adds a probable duplicate to the quarantine, with the whole transaction as JSON so that `reconcile` can
    /// promote it exactly as it would have landed.
    pub fn add_quarantine(&mut self, file: &Source, tx: &Transaction, q: &Quarantine) -> Result<(), LakeError> {
        let json = serde_json::to_string(tx).map_err(|e| LakeError::Schema {
            table: SALES_DUPLICATES.name,
            reason: format!("the transaction does not serialise: {e}"),
        })?;
        let cols = self.columns(QUARANTINE, &SALES_DUPLICATES, Some(tx.header.key.business_date));
        key(cols, file, &tx.header)?
            .push(Value::Str(Some(file.name)))?
            .push(Value::Str(Some(file.dialect)))?
            .push(Value::Str(Some(q.run_id)))?
            .push(Value::Str(Some(q.reason)))?
            .push(Value::Timestamp(Some(q.at)))?
            .push(Value::Str(Some(&json)))?;
        Ok(())
    }

    /// Adds the ledger row of one file.
    pub fn add_ledger(&mut self, e: &LedgerEntry) -> Result<(), LakeError> {
        self.columns(LEDGER, &FILE_LEDGER, None)
            .push(Value::Str(Some(&e.run_id)))?
            .push(Value::Str(Some(&e.path)))?
            .push(Value::Long(e.bytes as i64))?
            .push(Value::Str(Some(&e.content_hash)))?
            .push(Value::Str(e.dialect.as_deref()))?
            .push(Value::Str(e.site.as_deref()))?
            .push(Value::Str(Some(e.outcome.as_str())))?
            .push(Value::Int(Some(e.transactions as i32)))?
            .push(Value::Int(Some(e.new_transactions as i32)))?
            .push(Value::Int(Some(e.duplicate_transactions as i32)))?
            .push(Value::Int(Some(e.quarantined_transactions as i32)))?
            .push(Value::Int(Some(e.lines as i32)))?
            .push(Value::Int(Some(e.discounts as i32)))?
            .push(Value::Timestamp(Some(e.at)))?
            .push(Value::Str(e.trace_id.as_deref()))?
            .push(Value::Str(e.envelope.as_deref()))?;
        Ok(())
    }

    /// Adds the dead-letter row of one file.
    pub fn add_dead_letter(&mut self, d: &DeadLetter) -> Result<(), LakeError> {
        self.columns(DEAD_LETTER, &DEAD_LETTERS, None)
            .push(Value::Str(Some(&d.run_id)))?
            .push(Value::Str(Some(&d.path)))?
            .push(Value::Str(Some(&d.content_hash)))?
            .push(Value::Str(Some(d.stage)))?
            .push(Value::Str(Some(d.kind)))?
            .push(Value::Str(Some(&d.reason)))?
            .push(Value::Int(d.line.map(|v| v as i32)))?
            .push(Value::Int(d.column.map(|v| v as i32)))?
            .push(Value::Int(Some(d.attempts as i32)))?
            .push(Value::Timestamp(Some(d.at)))?;
        Ok(())
    }

    /// Rows gathered so far, over all tables.
    pub fn len(&self) -> usize {
        let built: usize = self.built.iter().map(|(_, _, b)| b.num_rows()).sum();
        self.tables.iter().flat_map(|t| t.values()).map(Columns::rows).sum::<usize>() + built
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The finished batches: per table (in [`TABLES`] order), per business date (a date may have several).
    pub fn finish(self) -> Result<Vec<TableBatches>, LakeError> {
        let mut out = TABLES
            .iter()
            .zip(self.tables)
            .map(|(t, by_date)| {
                let batches =
                    by_date.into_iter().map(|(d, c)| Ok((d, c.finish()?))).collect::<Result<Vec<_>, LakeError>>()?;
                Ok((*t, batches))
            })
            .collect::<Result<Vec<TableBatches>, LakeError>>()?;
        // Built batches go to the writer as they are, one per file: joining them first costs a copy (about 8% of a
        // run in a profile, mostly the bronze map) and saves the Parquet writer little.
        for (table, date, batch) in self.built {
            let Some((def, batches)) = out.get_mut(table) else {
                return Err(LakeError::Schema { table: "?", reason: format!("no table at index {table}") });
            };
            if batch.schema() != self.schemas[table] {
                return Err(LakeError::Schema { table: def.name, reason: "a built batch has another schema".into() });
            }
            batches.push((date, batch));
        }
        Ok(out)
    }

    fn columns(&mut self, table: usize, def: &'static TableDef, date: Option<NaiveDate>) -> &mut Columns {
        debug_assert!(std::ptr::eq(TABLES[table], def));
        let schema = &self.schemas[table];
        self.tables[table].entry(date).or_insert_with(|| Columns::new(def, schema.clone()))
    }
}

/// One file's silver and bronze rows, built on the parser pool before dedup as if every transaction were new.
/// The writer then only drops the rows of the transactions dedup refused, and encodes: the columns are built in
/// parallel, and the parsed structures can be dropped long before the write.
pub struct FileRows {
    batches: Vec<TableBatch>,
    /// Per transaction, in file order: its business date, and its line, discount and void rows.
    shape: Vec<(NaiveDate, u32, u32, u32)>,
}

impl FileRows {
    /// `schemas`: the Arrow schemas of [`TABLES`], in order.
    pub fn build(schemas: Vec<SchemaRef>, file: &ParsedFile) -> Result<Self, LakeError> {
        let mut rows = Rows::new(schemas);
        // Reserve each table's columns per business date first: growing builders value by value (reallocating
        // and copying) was about 2% of an ingest's CPU.
        let mut sizes: BTreeMap<NaiveDate, [Capacity; VOIDS + 1]> = BTreeMap::new();
        for t in &file.transactions {
            let s = sizes.entry(t.header.key.business_date).or_default();
            let (key_bytes, value_bytes) = t.bronze.text_sizes();
            s[HEADER].rows += 1;
            s[LINE].rows += t.lines.len();
            s[DISCOUNT].rows += t.discounts.len();
            s[BRONZE].rows += 1;
            s[BRONZE].map_entries += t.bronze.len();
            s[BRONZE].map_key_bytes += key_bytes;
            s[BRONZE].map_value_bytes += value_bytes;
            s[VOIDS].rows += usize::from(t.header.voids.is_some());
        }
        for (date, caps) in sizes {
            for (table, cap) in caps.into_iter().enumerate() {
                if cap.rows > 0 {
                    rows.presize(table, Some(date), cap);
                }
            }
        }
        rows.add_file(file)?;
        let shape = file
            .transactions
            .iter()
            .map(|t| {
                let h = &t.header;
                (h.key.business_date, t.lines.len() as u32, t.discounts.len() as u32, u32::from(h.voids.is_some()))
            })
            .collect();
        let mut batches = Vec::new();
        for (i, (_, by_date)) in rows.finish()?.into_iter().enumerate() {
            batches.extend(by_date.into_iter().map(|(d, b)| (i, d, b)));
        }
        Ok(FileRows { batches, shape })
    }

    /// Transactions the rows were built from.
    pub fn transactions(&self) -> usize {
        self.shape.len()
    }

    /// The rows of the transactions `keep` selects (indexed like the file's transactions).
    pub fn select(&self, keep: &[bool]) -> Result<Vec<TableBatch>, LakeError> {
        if keep.len() != self.shape.len() {
            return Err(LakeError::Schema {
                table: SALES_HEADER.name,
                reason: format!("{} verdicts for {} transactions", keep.len(), self.shape.len()),
            });
        }
        if keep.iter().all(|k| *k) {
            return Ok(self.batches.clone());
        }
        let mut out = Vec::with_capacity(self.batches.len());
        for (table, date, batch) in &self.batches {
            // Rows per transaction, as `add_transaction` fills the tables: one header and one bronze row each.
            let rows_of = |&(_, lines, discounts, voids): &(NaiveDate, u32, u32, u32)| match *table {
                LINE => lines as usize,
                DISCOUNT => discounts as usize,
                VOIDS => voids as usize,
                _ => 1,
            };
            let mask: BooleanArray = self
                .shape
                .iter()
                .zip(keep)
                .filter(|(s, _)| Some(s.0) == *date)
                .flat_map(|(s, k)| std::iter::repeat_n(Some(*k), rows_of(s)))
                .collect();
            if mask.len() != batch.num_rows() {
                return Err(LakeError::Schema {
                    table: TABLES[*table].name,
                    reason: format!("{} rows built but {} expected", batch.num_rows(), mask.len()),
                });
            }
            let kept = filter_record_batch(batch, &mask)?;
            if kept.num_rows() > 0 {
                out.push((*table, *date, kept));
            }
        }
        Ok(out)
    }
}

/// What became of one source file in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its transactions were committed (the new ones; duplicates were skipped).
    Ingested,
    /// It could not be ingested; see the dead letters.
    DeadLetter,
    /// It could not be read this run, though it may be later (tries at a failing read exhausted): dead-lettered
    /// with the reason, and listed again by the next run rather than held as done.
    Deferred,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ingested => "ingested",
            Outcome::DeadLetter => "dead_letter",
            Outcome::Deferred => "deferred",
        }
    }
}

/// A row of the file ledger.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    pub run_id: String,
    pub path: String,
    pub bytes: u64,
    pub content_hash: String,
    pub dialect: Option<String>,
    pub site: Option<String>,
    pub outcome: Outcome,
    pub transactions: u32,
    pub new_transactions: u32,
    /// Transactions counted as duplicates.
    pub duplicate_transactions: u32,
    /// Of those, the probable duplicates (a Bloom positive) kept in `sales_duplicates`.
    pub quarantined_transactions: u32,
    pub lines: u32,
    pub discounts: u32,
    pub at: NaiveDateTime,
    pub trace_id: Option<String>,
    /// The file's values outside its transactions, as a JSON object ([`BronzeRecord::to_json`]).
    pub envelope: Option<String>,
}

impl LedgerEntry {
    /// The row of a file none of whose transactions was read: a dead letter, or deferred.
    pub fn without_transactions(
        run_id: String,
        path: String,
        bytes: u64,
        content_hash: String,
        outcome: Outcome,
        at: NaiveDateTime,
    ) -> Self {
        LedgerEntry {
            run_id,
            path,
            bytes,
            content_hash,
            dialect: None,
            site: None,
            outcome,
            transactions: 0,
            new_transactions: 0,
            duplicate_transactions: 0,
            quarantined_transactions: 0,
            lines: 0,
            discounts: 0,
            at,
            trace_id: None,
            envelope: None,
        }
    }
}

/// A row of the dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub run_id: String,
    pub path: String,
    pub content_hash: String,
    /// The stage that gave up: `download`, `archive`, `parse`, `write`.
    pub stage: &'static str,
    /// A stable error kind (e.g. `ParseError::kind`).
    pub kind: &'static str,
    pub reason: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub attempts: u32,
    pub at: NaiveDateTime,
}

fn key<'c>(cols: &'c mut Columns, file: &Source, h: &SalesHeader) -> Result<&'c mut Columns, LakeError> {
    let k = &h.key;
    cols.push(Value::Str(Some(&k.site)))?
        .push(Value::Date(k.business_date))?
        .push(Value::Str(k.register.as_deref()))?
        .push(Value::Str(Some(&k.sequence)))?
        .push(Value::Str(Some(variant(k.variant))))?
        .push(Value::Str(Some(file.content_hash)))
}

fn variant(v: crate::model::KeyVariant) -> &'static str {
    match v {
        crate::model::KeyVariant::Primary => "primary",
        other => other.as_str(),
    }
}

fn line_kind(k: crate::model::LineKind) -> &'static str {
    use crate::model::LineKind;
    match k {
        LineKind::Item => "item",
        LineKind::Department => "department",
        LineKind::Fuel => "fuel",
        LineKind::FuelPrepay => "fuel_prepay",
        LineKind::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow_array::{Array, StringArray};

    use super::*;
    use crate::{Dialect, ParseOptions, parse_file};

    fn schemas() -> Vec<SchemaRef> {
        TABLES
            .iter()
            .map(|t| {
                let schema = t.schema().expect("schema");
                std::sync::Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).expect("arrow schema"))
            })
            .collect()
    }

    fn parsed(dialect: Dialect) -> ParsedFile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dialects").join(dialect.id());
        let path = path.join("traps.xml");
        let bytes = std::fs::read(&path).expect("fixture");
        parse_file(&path.display().to_string(), &bytes, &ParseOptions::default()).expect("parses")
    }

    fn rows_of(batches: &[TableBatch], table: usize) -> usize {
        batches.iter().filter(|(t, _, _)| *t == table).map(|(_, _, b)| b.num_rows()).sum()
    }

    fn sequences(batches: &[TableBatch], table: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (_, _, b) in batches.iter().filter(|(t, _, _)| *t == table) {
            let col = b.column_by_name("sequence").expect("sequence column");
            let col = col.as_any().downcast_ref::<StringArray>().expect("strings");
            out.extend((0..col.len()).map(|i| col.value(i).to_owned()));
        }
        out.sort();
        out
    }

    /// Keeping every other transaction keeps exactly their rows in every table, whatever dates they span.
    #[test]
    fn select_keeps_exactly_the_chosen_transactions_rows() {
        for dialect in Dialect::ALL {
            let file = parsed(dialect);
            let built = FileRows::build(schemas(), &file).expect("builds");
            assert_eq!(built.transactions(), file.transactions.len());
            let keep: Vec<bool> = (0..file.transactions.len()).map(|i| i % 2 == 0).collect();
            let kept: Vec<&Transaction> =
                file.transactions.iter().zip(&keep).filter(|(_, k)| **k).map(|(t, _)| t).collect();
            let got = built.select(&keep).expect("selects");
            let id = dialect.id();
            assert_eq!(rows_of(&got, 0), kept.len(), "{id}: headers");
            assert_eq!(rows_of(&got, 1), kept.iter().map(|t| t.lines.len()).sum::<usize>(), "{id}: lines");
            assert_eq!(rows_of(&got, 2), kept.iter().map(|t| t.discounts.len()).sum::<usize>(), "{id}: discounts");
            assert_eq!(rows_of(&got, 3), kept.len(), "{id}: bronze");
            let voids = kept.iter().filter(|t| t.header.voids.is_some()).count();
            assert_eq!(rows_of(&got, VOIDS), voids, "{id}: voids");
            let mut want: Vec<String> = kept.iter().map(|t| t.header.key.sequence.clone()).collect();
            want.sort();
            assert_eq!(sequences(&got, 0), want, "{id}: header keys");
            assert_eq!(sequences(&got, 3), want, "{id}: bronze keys");
            let mut line_keys: Vec<String> =
                kept.iter().flat_map(|t| t.lines.iter().map(|_| t.header.key.sequence.clone())).collect();
            line_keys.sort();
            assert_eq!(sequences(&got, 1), line_keys, "{id}: line keys");

            let all = built.select(&vec![true; keep.len()]).expect("all");
            assert_eq!(rows_of(&all, 0), file.transactions.len(), "{id}: all headers");
            let none = built.select(&vec![false; keep.len()]).expect("none");
            assert!(none.is_empty(), "{id}: nothing kept, nothing written");
        }
    }

    #[test]
    fn select_refuses_verdicts_that_do_not_match_the_transactions() {
        let file = parsed(Dialect::VerifoneCommander);
        let built = FileRows::build(schemas(), &file).expect("builds");
        let err = built.select(&[true]).expect_err("one verdict for many transactions");
        assert!(err.to_string().contains("verdicts for"), "{err}");
    }
}
