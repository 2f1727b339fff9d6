//! Parsed files → rows of the silver and bronze tables, grouped by table and business date (the partition).

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::NaiveDate;

use super::LakeError;
use super::columns::{Columns, Value};
use super::tables::{BRONZE_TRANSACTION, PARSED_TABLES, SALES_DISCOUNT, SALES_HEADER, SALES_LINE, TableDef};
use crate::model::{ParsedFile, SalesHeader, Transaction};

/// One table's finished batches, one per business date.
pub type TableBatches = (&'static TableDef, Vec<(NaiveDate, RecordBatch)>);

/// Rows gathered for one append, per table and business date.
pub struct Rows {
    schemas: Vec<SchemaRef>,
    /// Indexed like [`PARSED_TABLES`].
    tables: Vec<BTreeMap<NaiveDate, Columns>>,
}

impl Rows {
    /// `schemas`: the Arrow schemas of [`PARSED_TABLES`], in order.
    pub fn new(schemas: Vec<SchemaRef>) -> Self {
        let tables = schemas.iter().map(|_| BTreeMap::new()).collect();
        Rows { schemas, tables }
    }

    /// Adds every transaction of one parsed file.
    pub fn add_file(&mut self, file: &ParsedFile) -> Result<(), LakeError> {
        for tx in &file.transactions {
            self.add_transaction(file, tx)?;
        }
        Ok(())
    }

    pub fn add_transaction(&mut self, file: &ParsedFile, tx: &Transaction) -> Result<(), LakeError> {
        let h = &tx.header;
        let date = h.key.business_date;
        let f = &h.flags;
        let cols = self.columns(0, &SALES_HEADER, date);
        key(cols, file, h)?
            .push(Value::Str(Some(&file.facts.name)))?
            .push(Value::Str(Some(file.facts.dialect.id())))?
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
            let cols = self.columns(1, &SALES_LINE, date);
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
            let cols = self.columns(2, &SALES_DISCOUNT, date);
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
        let cols = self.columns(3, &BRONZE_TRANSACTION, date);
        key(cols, file, h)?
            .push(Value::Str(Some(file.facts.dialect.id())))?
            .push(Value::Int(Some(h.ordinal as i32)))?
            .push(Value::StrMap(&tx.bronze))?;
        Ok(())
    }

    /// Rows gathered so far, over all tables.
    pub fn len(&self) -> usize {
        self.tables.iter().flat_map(|t| t.values()).map(Columns::rows).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The finished batches: per table (in [`PARSED_TABLES`] order), one batch per business date.
    pub fn finish(self) -> Result<Vec<TableBatches>, LakeError> {
        PARSED_TABLES
            .iter()
            .zip(self.tables)
            .map(|(t, by_date)| {
                let batches =
                    by_date.into_iter().map(|(d, c)| Ok((d, c.finish()?))).collect::<Result<Vec<_>, LakeError>>()?;
                Ok((*t, batches))
            })
            .collect()
    }

    fn columns(&mut self, table: usize, def: &'static TableDef, date: NaiveDate) -> &mut Columns {
        let schema = &self.schemas[table];
        self.tables[table].entry(date).or_insert_with(|| Columns::new(def, schema.clone()))
    }
}

fn key<'c>(cols: &'c mut Columns, file: &ParsedFile, h: &SalesHeader) -> Result<&'c mut Columns, LakeError> {
    let k = &h.key;
    cols.push(Value::Str(Some(&k.site)))?
        .push(Value::Date(k.business_date))?
        .push(Value::Str(k.register.as_deref()))?
        .push(Value::Str(Some(&k.sequence)))?
        .push(Value::Str(Some(variant(k.variant))))?
        .push(Value::Str(Some(&file.facts.content_hash)))
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
