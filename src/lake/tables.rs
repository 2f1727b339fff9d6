//! The lake's table definitions: one column list per table, from which both the Iceberg schema and the Arrow
//! batches are made, so the two cannot drift apart.

use std::sync::Arc;

use iceberg::spec::{MapType, NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec};

/// Exact decimals are stored as decimal(18, 4): POS amounts have 2 decimals, fuel prices and volumes 3.
/// A value that needs more is refused, never rounded.
pub const DECIMAL_PRECISION: u8 = 18;
pub const DECIMAL_SCALE: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Date,
    Timestamp,
    Bool,
    Int,
    Long,
    Decimal,
    /// map<string, string>, entries in file order.
    StrMap,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: true }
}

const fn opt(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: false }
}

/// One table: its name, columns and the column it is partitioned by (identity).
#[derive(Debug)]
pub struct TableDef {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub partition_by: Option<&'static str>,
}

/// The columns every transaction-level table starts with: the transaction's key and its source file.
macro_rules! key_columns {
    ($($rest:expr),* $(,)?) => {
        &[
            req("site", Kind::Str),
            req("business_date", Kind::Date),
            opt("register", Kind::Str),
            req("sequence", Kind::Str),
            req("key_variant", Kind::Str),
            req("source_hash", Kind::Str),
            $($rest),*
        ]
    };
}

pub static SALES_HEADER: TableDef = TableDef {
    name: "sales_header",
    partition_by: Some("business_date"),
    columns: key_columns![
        req("source_file", Kind::Str),
        req("dialect", Kind::Str),
        req("ordinal", Kind::Int),
        opt("cashier", Kind::Str),
        opt("start_time", Kind::Timestamp),
        opt("end_time", Kind::Timestamp),
        req("transaction_type", Kind::Str),
        opt("type_raw", Kind::Str),
        req("training", Kind::Bool),
        req("suspended", Kind::Bool),
        req("voided", Kind::Bool),
        req("rollback", Kind::Bool),
        req("fuel_prepay", Kind::Bool),
        req("fuel_completion", Kind::Bool),
        req("outside_sale", Kind::Bool),
        req("offline", Kind::Bool),
        req("journal", Kind::Bool),
        req("excluded_from_sales", Kind::Bool),
        opt("gross_amount", Kind::Decimal),
        opt("net_amount", Kind::Decimal),
        opt("tax_amount", Kind::Decimal),
        opt("total_amount", Kind::Decimal),
        req("line_count", Kind::Int),
        req("discount_count", Kind::Int),
    ],
};

pub static SALES_LINE: TableDef = TableDef {
    name: "sales_line",
    partition_by: Some("business_date"),
    columns: key_columns![
        req("line_number", Kind::Int),
        req("kind", Kind::Str),
        opt("kind_raw", Kind::Str),
        opt("item_code", Kind::Str),
        opt("description", Kind::Str),
        opt("department", Kind::Str),
        opt("quantity", Kind::Decimal),
        opt("unit_price", Kind::Decimal),
        opt("extended_amount", Kind::Decimal),
        opt("tax_amount", Kind::Decimal),
        req("voided", Kind::Bool),
        req("refund", Kind::Bool),
        opt("fuel_grade", Kind::Str),
        opt("fuel_position", Kind::Str),
        opt("fuel_volume", Kind::Decimal),
        opt("fuel_unit_price", Kind::Decimal),
    ],
};

pub static SALES_DISCOUNT: TableDef = TableDef {
    name: "sales_discount",
    partition_by: Some("business_date"),
    columns: key_columns![
        req("discount_number", Kind::Int),
        opt("line_number", Kind::Int),
        opt("applies_to", Kind::Str),
        opt("promotion_id", Kind::Str),
        opt("description", Kind::Str),
        opt("amount", Kind::Decimal),
        opt("kind", Kind::Str),
        req("voided", Kind::Bool),
    ],
};

/// Bronze: one row per transaction with every value of the file (see `model::BronzeRecord`).
pub static BRONZE_TRANSACTION: TableDef = TableDef {
    name: "bronze_transaction",
    partition_by: Some("business_date"),
    columns: key_columns![req("dialect", Kind::Str), req("ordinal", Kind::Int), req("fields", Kind::StrMap)],
};

/// The quarantine: transactions the dedup filter called "probably seen". Most are true duplicates; `poslake
/// reconcile` checks each exactly against `sales_header` and promotes the false positives.
pub static SALES_DUPLICATES: TableDef = TableDef {
    name: "sales_duplicates",
    partition_by: Some("business_date"),
    columns: key_columns![
        req("source_file", Kind::Str),
        req("dialect", Kind::Str),
        req("run_id", Kind::Str),
        req("reason", Kind::Str),
        req("detected_at", Kind::Timestamp),
        // The whole transaction (header, lines, discounts, bronze) as JSON, amounts as exact decimal strings.
        req("transaction", Kind::Str),
    ],
};

/// One row per source file and run: what became of it.
pub static FILE_LEDGER: TableDef = TableDef {
    name: "file_ledger",
    partition_by: None,
    columns: &[
        req("run_id", Kind::Str),
        req("path", Kind::Str),
        req("bytes", Kind::Long),
        req("content_hash", Kind::Str),
        opt("dialect", Kind::Str),
        opt("site", Kind::Str),
        req("outcome", Kind::Str),
        req("transactions", Kind::Int),
        req("new_transactions", Kind::Int),
        req("duplicate_transactions", Kind::Int),
        req("quarantined_transactions", Kind::Int),
        req("lines", Kind::Int),
        req("discounts", Kind::Int),
        req("ingested_at", Kind::Timestamp),
        opt("trace_id", Kind::Str),
        // Every value of the file outside its transactions (`ParsedFile::envelope`, keyed as bronze is, from the
        // root element): period totals, transmission headers, the Verifone `openedTime` the business date comes
        // from. A JSON object in file order; null for a file with none, or not parsed. Text, not a map: iceberg-rust
        // 0.10 cannot read a map column added to a table whose older files lack it.
        opt("envelope", Kind::Str),
    ],
};

/// Files that could not be ingested, with the stage and the typed reason.
pub static DEAD_LETTERS: TableDef = TableDef {
    name: "dead_letters",
    partition_by: None,
    columns: &[
        req("run_id", Kind::Str),
        req("path", Kind::Str),
        req("content_hash", Kind::Str),
        req("stage", Kind::Str),
        req("kind", Kind::Str),
        req("reason", Kind::Str),
        opt("line", Kind::Int),
        opt("column", Kind::Int),
        req("attempts", Kind::Int),
        req("failed_at", Kind::Timestamp),
    ],
};

/// One row per record that voids a ticket: a post-void (its linked ticket) or a rollback mirror (its original),
/// keyed by the voiding record, committed with it. The voided ticket is the primary record keyed by the `voided_`
/// columns, wherever it landed: a ticket in the same file is also flagged voided in its own row; one in another
/// file (earlier or later) keeps its row as it landed, and the `sales_header_current` view of `poslake query`
/// applies the void.
pub static SALES_VOIDS: TableDef = TableDef {
    name: "sales_voids",
    partition_by: Some("business_date"),
    columns: key_columns![
        req("voided_site", Kind::Str),
        req("voided_business_date", Kind::Date),
        opt("voided_register", Kind::Str),
        req("voided_sequence", Kind::Str),
        // `post_void` or `rollback`: the voiding record's key variant.
        req("reason", Kind::Str),
        req("source_file", Kind::Str),
        req("dialect", Kind::Str),
    ],
};

// Changing a definition: add a column at the end, optional and of a primitive type. A lake an earlier poslake wrote
// then gets it at open (`Warehouse::open`); any other change makes such a lake's table read-only to poslake.

/// Every table the warehouse holds, in the order [`crate::lake::Warehouse::append`] commits them: data first,
/// the ledger last, so a ledger row never names data that is not committed.
pub static TABLES: [&TableDef; 8] = [
    &SALES_HEADER,
    &SALES_LINE,
    &SALES_DISCOUNT,
    &BRONZE_TRANSACTION,
    &SALES_VOIDS,
    &SALES_DUPLICATES,
    &DEAD_LETTERS,
    &FILE_LEDGER,
];

impl TableDef {
    /// The Iceberg schema: field ids are column positions from 1; a map's key and value take ids after all
    /// columns.
    pub fn schema(&self) -> iceberg::Result<Schema> {
        let mut next_nested = self.columns.len() as i32 + 1;
        let fields = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = match c.kind {
                    Kind::Str => Type::Primitive(PrimitiveType::String),
                    Kind::Date => Type::Primitive(PrimitiveType::Date),
                    Kind::Timestamp => Type::Primitive(PrimitiveType::Timestamp),
                    Kind::Bool => Type::Primitive(PrimitiveType::Boolean),
                    Kind::Int => Type::Primitive(PrimitiveType::Int),
                    Kind::Long => Type::Primitive(PrimitiveType::Long),
                    Kind::Decimal => Type::Primitive(PrimitiveType::Decimal {
                        precision: u32::from(DECIMAL_PRECISION),
                        scale: DECIMAL_SCALE,
                    }),
                    Kind::StrMap => {
                        let (k, v) = (next_nested, next_nested + 1);
                        next_nested += 2;
                        Type::Map(MapType::new(
                            Arc::new(NestedField::map_key_element(k, Type::Primitive(PrimitiveType::String))),
                            Arc::new(NestedField::map_value_element(v, Type::Primitive(PrimitiveType::String), true)),
                        ))
                    }
                };
                Arc::new(NestedField::new(i as i32 + 1, c.name, ty, c.required))
            })
            .collect::<Vec<_>>();
        Schema::builder().with_fields(fields).build()
    }

    pub fn partition_spec(&self) -> iceberg::Result<UnboundPartitionSpec> {
        let mut builder = UnboundPartitionSpec::builder();
        if let Some(col) = self.partition_by {
            let id = self.columns.iter().position(|c| c.name == col).map_or(0, |i| i as i32 + 1);
            builder = builder.add_partition_field(id, col, Transform::Identity)?;
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_build_and_partition_by_an_existing_column() {
        for t in TABLES {
            let schema = t.schema().expect("schema");
            assert_eq!(schema.as_struct().fields().len(), t.columns.len(), "{}", t.name);
            let spec = t.partition_spec().expect("spec");
            let bound = spec.bind(Arc::new(schema)).expect("binds");
            assert_eq!(bound.fields().len(), usize::from(t.partition_by.is_some()));
        }
    }
}
