//! Rows → Arrow columns for one table, typed by the table's column list. Values are pushed column by column in
//! the table's order; a value of the wrong kind, an out-of-range decimal or a missing required value is a
//! [`LakeError::Schema`], never a silent cast.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, MapArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, SchemaRef};
use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;

use super::LakeError;
use super::tables::{DECIMAL_SCALE, Kind, TableDef};
use crate::model::BronzeRecord;

enum Builder {
    Str(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Bool(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Decimal(Decimal128Builder),
    /// A map of strings, as Arrow lays it out: bytes and offsets of the keys and of the values, and where each
    /// row's entries end. Filled a record at a time, each record's keys and values in one copy.
    StrMap(MapColumns),
}

struct MapColumns {
    keys: Vec<u8>,
    key_offsets: Vec<i32>,
    values: Vec<u8>,
    value_offsets: Vec<i32>,
    offsets: Vec<i32>,
}

/// What to reserve for a table's columns, when it is known in advance (a file's rows).
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    pub rows: usize,
    /// Entries, key bytes and value bytes of the map column (bronze fields).
    pub map_entries: usize,
    pub map_key_bytes: usize,
    pub map_value_bytes: usize,
}

/// Bytes reserved per string value: most are codes, ids and short descriptions.
const STRING_BYTES_HINT: usize = 16;

/// Columns being filled for one table.
pub struct Columns {
    table: &'static TableDef,
    schema: SchemaRef,
    builders: Vec<Builder>,
    /// Index of the next column to fill in the current row.
    cursor: usize,
    rows: usize,
}

/// A value for one column.
pub enum Value<'a> {
    Str(Option<&'a str>),
    Date(NaiveDate),
    Timestamp(Option<NaiveDateTime>),
    Bool(bool),
    Int(Option<i32>),
    Long(i64),
    Decimal(Option<Decimal>),
    StrMap(&'a BronzeRecord),
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("epoch"),
};

impl Columns {
    pub fn new(table: &'static TableDef, schema: SchemaRef) -> Self {
        Self::with_capacity(table, schema, Capacity { rows: 1024, ..Capacity::default() })
    }

    /// Columns with room reserved up front, so that builders do not grow (and copy) value by value.
    pub fn with_capacity(table: &'static TableDef, schema: SchemaRef, cap: Capacity) -> Self {
        let n = cap.rows;
        let builders = table
            .columns
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| match c.kind {
                Kind::Str => Builder::Str(StringBuilder::with_capacity(n, n * STRING_BYTES_HINT)),
                Kind::Date => Builder::Date(Date32Builder::with_capacity(n)),
                Kind::Timestamp => Builder::Timestamp(
                    TimestampMicrosecondBuilder::with_capacity(n).with_data_type(f.data_type().clone()),
                ),
                Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(n)),
                Kind::Int => Builder::Int(Int32Builder::with_capacity(n)),
                Kind::Long => Builder::Long(Int64Builder::with_capacity(n)),
                Kind::Decimal => {
                    Builder::Decimal(Decimal128Builder::with_capacity(n).with_data_type(f.data_type().clone()))
                }
                Kind::StrMap => {
                    let offsets = |n: usize| {
                        let mut o = Vec::with_capacity(n + 1);
                        o.push(0);
                        o
                    };
                    Builder::StrMap(MapColumns {
                        keys: Vec::with_capacity(cap.map_key_bytes),
                        key_offsets: offsets(cap.map_entries),
                        values: Vec::with_capacity(cap.map_value_bytes),
                        value_offsets: offsets(cap.map_entries),
                        offsets: offsets(n),
                    })
                }
            })
            .collect();
        Columns { table, schema, builders, cursor: 0, rows: 0 }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Pushes the next column's value of the current row.
    pub fn push(&mut self, value: Value<'_>) -> Result<&mut Self, LakeError> {
        let column =
            self.table.columns.get(self.cursor).ok_or_else(|| self.error("more values than columns".into()))?;
        let missing = |name: &str| LakeError::Schema { table: self.table.name, reason: format!("{name} is required") };
        match (&mut self.builders[self.cursor], value) {
            (Builder::Str(b), Value::Str(v)) => {
                if v.is_none() && column.required {
                    return Err(missing(column.name));
                }
                b.append_option(v)
            }
            (Builder::Date(b), Value::Date(d)) => b.append_value((d - EPOCH).num_days() as i32),
            (Builder::Timestamp(b), Value::Timestamp(t)) => b.append_option(t.map(|t| t.and_utc().timestamp_micros())),
            (Builder::Bool(b), Value::Bool(v)) => b.append_value(v),
            (Builder::Int(b), Value::Int(v)) => b.append_option(v),
            (Builder::Long(b), Value::Long(v)) => b.append_value(v),
            (Builder::Decimal(b), Value::Decimal(v)) => {
                let scaled = match v {
                    Some(d) => Some(scaled(d).ok_or_else(|| {
                        let why = if d.normalize().scale() > DECIMAL_SCALE {
                            format!("has more than {DECIMAL_SCALE} decimal places")
                        } else {
                            "is too large".to_owned()
                        };
                        let reason = format!("{} = {d} {why} for decimal(18, {DECIMAL_SCALE})", column.name);
                        LakeError::Schema { table: self.table.name, reason }
                    })?),
                    None => None,
                };
                b.append_option(scaled)
            }
            (Builder::StrMap(map), Value::StrMap(record)) => {
                if map.push(record).is_none() {
                    let reason = format!("{} holds over 2 GiB of keys or values in one batch", column.name);
                    return Err(LakeError::Schema { table: self.table.name, reason });
                }
            }
            _ => return Err(self.error(format!("value of the wrong kind for column {}", column.name))),
        }
        self.cursor += 1;
        if self.cursor == self.builders.len() {
            self.cursor = 0;
            self.rows += 1;
        }
        Ok(self)
    }

    /// Finishes the columns into one batch with the table's Arrow schema.
    pub fn finish(mut self) -> Result<RecordBatch, LakeError> {
        if self.cursor != 0 {
            return Err(self.error(format!("row left incomplete at column {}", self.cursor)));
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.builders.len());
        for (builder, field) in self.builders.iter_mut().zip(self.schema.fields()) {
            let array: ArrayRef = match builder {
                Builder::Str(b) => Arc::new(b.finish()),
                Builder::Date(b) => Arc::new(b.finish()),
                Builder::Timestamp(b) => Arc::new(b.finish()),
                Builder::Bool(b) => Arc::new(b.finish()),
                Builder::Int(b) => Arc::new(b.finish()),
                Builder::Long(b) => Arc::new(b.finish()),
                Builder::Decimal(b) => Arc::new(b.finish()),
                Builder::StrMap(map) => {
                    let DataType::Map(entries_field, ordered) = field.data_type() else {
                        return Err(LakeError::Schema {
                            table: self.table.name,
                            reason: format!("{} is not a map", field.name()),
                        });
                    };
                    let DataType::Struct(entry_fields) = entries_field.data_type() else {
                        return Err(LakeError::Schema {
                            table: self.table.name,
                            reason: "map entries are not a struct".into(),
                        });
                    };
                    let (keys, values, offsets) = map.finish();
                    let entries = StructArray::try_new(entry_fields.clone(), vec![keys, values], None)?;
                    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                    Arc::new(MapArray::try_new(entries_field.clone(), offsets, entries, None, *ordered)?)
                }
            };
            debug_assert_eq!(array.len(), self.rows);
            arrays.push(array);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }

    fn error(&self, reason: String) -> LakeError {
        LakeError::Schema { table: self.table.name, reason }
    }
}

impl MapColumns {
    /// Appends one record as a row; `None` if an offset would pass `i32::MAX`.
    fn push(&mut self, record: &BronzeRecord) -> Option<()> {
        let (keys, values, ends) = record.parts();
        let key_base = i32::try_from(self.keys.len()).ok()?;
        let value_base = i32::try_from(self.values.len()).ok()?;
        i32::try_from(self.keys.len() + keys.len()).ok()?;
        i32::try_from(self.values.len() + values.len()).ok()?;
        self.keys.extend_from_slice(keys.as_bytes());
        self.values.extend_from_slice(values.as_bytes());
        // Within i32 (checked above) and growing: each end is at most its text's length.
        self.key_offsets.extend(ends.iter().map(|&(k, _)| key_base + k as i32));
        self.value_offsets.extend(ends.iter().map(|&(_, v)| value_base + v as i32));
        self.offsets.push(i32::try_from(self.key_offsets.len() - 1).ok()?);
        Some(())
    }

    /// The key and value arrays, and the rows' offsets into them; the columns are left empty.
    fn finish(&mut self) -> (ArrayRef, ArrayRef, Vec<i32>) {
        let keys = strings(std::mem::replace(&mut self.key_offsets, vec![0]), std::mem::take(&mut self.keys));
        let values = strings(std::mem::replace(&mut self.value_offsets, vec![0]), std::mem::take(&mut self.values));
        (keys, values, std::mem::replace(&mut self.offsets, vec![0]))
    }
}

/// A string array of `push`'s bytes and offsets, without Arrow's UTF-8 check of every byte and offset (1.2% of an
/// ingest's instructions, session 31).
fn strings(offsets: Vec<i32>, bytes: Vec<u8>) -> ArrayRef {
    // Checked in debug builds (the tests): what the SAFETY argument below holds by construction.
    debug_assert!(
        std::str::from_utf8(&bytes).is_ok_and(|s| offsets.iter().all(|&o| s.is_char_boundary(o as usize))),
        "map column bytes or offsets are not UTF-8 boundaries"
    );
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    // SAFETY: `MapColumns::push` is the only writer of these buffers. It appends whole `str`s (a `BronzeRecord`'s
    // keys or values), so `bytes` is UTF-8; each offset is a base (the length before the append) plus an end the
    // record took right after one of its own `push_str`s, so it falls on a character boundary; the ends grow within
    // a record and the bases between records, so the offsets grow; and `push` refused anything past `i32::MAX`.
    // `OffsetBuffer::new` checks the order again.
    Arc::new(unsafe { StringArray::new_unchecked(offsets, Buffer::from_vec(bytes), None) })
}

/// The decimal as an integer at the table scale, if it fits exactly.
fn scaled(d: Decimal) -> Option<i128> {
    let mut d = d;
    if d.scale() > DECIMAL_SCALE {
        let normal = d.normalize();
        if normal.scale() > DECIMAL_SCALE {
            return None;
        }
        d = normal;
    }
    d.rescale(DECIMAL_SCALE);
    let v = d.mantissa();
    (v.unsigned_abs() < 10u128.pow(18)).then_some(v)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::lake::tables::SALES_DISCOUNT;

    fn columns() -> Columns {
        let schema = iceberg::arrow::schema_to_arrow_schema(&SALES_DISCOUNT.schema().expect("schema")).expect("arrow");
        Columns::new(&SALES_DISCOUNT, Arc::new(schema))
    }

    fn key(c: &mut Columns) -> &mut Columns {
        let d = NaiveDate::from_ymd_opt(2026, 1, 2).expect("date");
        c.push(Value::Str(Some("1")))
            .and_then(|c| c.push(Value::Date(d)))
            .and_then(|c| c.push(Value::Str(None)))
            .and_then(|c| c.push(Value::Str(Some("9"))))
            .and_then(|c| c.push(Value::Str(Some("primary"))))
            .and_then(|c| c.push(Value::Str(Some("hash"))))
            .expect("key")
    }

    #[test]
    fn decimals_that_need_more_scale_are_refused_not_rounded() {
        assert_eq!(scaled(Decimal::from_str("1.2300000").expect("d")), Some(12300));
        assert_eq!(scaled(Decimal::from_str("-0.19").expect("d")), Some(-1900));
        assert_eq!(scaled(Decimal::from_str("0.12345").expect("d")), None);
        // Every scale up to the table's, either sign, and the bound of decimal(18, 4).
        assert_eq!(scaled(Decimal::from_str("7").expect("d")), Some(70000));
        assert_eq!(scaled(Decimal::from_str("-7.5").expect("d")), Some(-75000));
        assert_eq!(scaled(Decimal::from_str("0.0001").expect("d")), Some(1));
        assert_eq!(scaled(Decimal::from_str("99999999999999.9999").expect("d")), Some(999_999_999_999_999_999));
        assert_eq!(scaled(Decimal::from_str("100000000000000").expect("d")), None);
        assert_eq!(scaled(Decimal::MAX), None);
        assert_eq!(scaled(Decimal::MIN), None);
        let mut c = columns();
        let c = key(&mut c)
            .push(Value::Int(Some(1)))
            .and_then(|c| c.push(Value::Int(None)))
            .and_then(|c| c.push(Value::Str(None)))
            .and_then(|c| c.push(Value::Str(None)))
            .and_then(|c| c.push(Value::Str(None)))
            .expect("fields");
        match c.push(Value::Decimal(Some(Decimal::from_str("0.12345").expect("d")))) {
            Err(LakeError::Schema { reason, .. }) => {
                assert!(reason.ends_with("= 0.12345 has more than 4 decimal places for decimal(18, 4)"), "{reason}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("0.12345 was taken"),
        }
    }

    /// The map column's arrays are built without Arrow's UTF-8 check: rows of multi-byte keys and values, and an
    /// empty row between them, read back entry for entry.
    #[test]
    fn bronze_maps_read_back_entry_for_entry() {
        use crate::lake::tables::BRONZE_TRANSACTION;
        use arrow_array::{Array, MapArray};
        let schema =
            iceberg::arrow::schema_to_arrow_schema(&BRONZE_TRANSACTION.schema().expect("schema")).expect("arrow");
        let mut records = [BronzeRecord::default(), BronzeRecord::default(), BronzeRecord::default()];
        records[0].push("Item/Description", "Café crème");
        records[0].push3("Item[2]/Description", "_attr_", "lang", "日本語");
        records[0].push("Item/Emoji", "⛽🚗");
        records[2].push("Référence", "");
        records[2].push("", "x");
        let mut c = Columns::new(&BRONZE_TRANSACTION, Arc::new(schema));
        for (i, r) in records.iter().enumerate() {
            key(&mut c)
                .push(Value::Str(Some("naxml")))
                .and_then(|c| c.push(Value::Int(Some(i as i32))))
                .and_then(|c| c.push(Value::StrMap(r)))
                .expect("row");
        }
        let batch = c.finish().expect("batch");
        let map = batch.column_by_name("fields").expect("fields").as_any().downcast_ref::<MapArray>().expect("map");
        assert_eq!(map.len(), records.len());
        for (i, r) in records.iter().enumerate() {
            let entries = map.value(i);
            let keys = entries.column(0).as_any().downcast_ref::<StringArray>().expect("keys");
            let values = entries.column(1).as_any().downcast_ref::<StringArray>().expect("values");
            let got: Vec<(&str, &str)> = (0..keys.len()).map(|j| (keys.value(j), values.value(j))).collect();
            assert_eq!(got, r.iter().collect::<Vec<_>>(), "row {i}");
        }
        // The arrays pass Arrow's own full validation.
        map.to_data().validate_full().expect("valid UTF-8 and offsets");
    }

    #[test]
    fn wrong_kinds_missing_required_values_and_short_rows_are_errors() {
        let mut c = columns();
        assert!(c.push(Value::Str(None)).is_err(), "site is required");
        let mut c = columns();
        assert!(c.push(Value::Bool(true)).is_err(), "site is a string");
        let mut c = columns();
        key(&mut c);
        assert!(c.finish().is_err(), "an incomplete row cannot be finished");
    }
}
