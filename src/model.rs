//! The records one POS file turns into: silver facts (`SalesHeader`, `SalesLine`, `SalesDiscount`), a flat bronze
//! record per transaction that keeps every value the file held, and the facts about the file itself.
//!
//! Amounts are exact decimals and dates are typed from here on; raw text survives only in bronze.

use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::dialect::Dialect;

/// Everything one file yields.
#[derive(Debug, Clone, Serialize)]
pub struct ParsedFile {
    pub facts: FileFacts,
    /// Transactions in file order.
    pub transactions: Vec<Transaction>,
    /// Everything in the file outside the transactions (envelope attributes, file headers, period totals).
    pub envelope: BronzeRecord,
}

/// Facts about one source file, for the file ledger.
#[derive(Debug, Clone, Serialize)]
pub struct FileFacts {
    pub name: String,
    pub dialect: Dialect,
    /// Site named by the file envelope, if the dialect carries one there.
    pub site: Option<String>,
    /// Size of the bytes as received (possibly compressed).
    pub bytes: u64,
    /// Size of the XML text after decompression and transcoding to UTF-8.
    pub xml_bytes: u64,
    pub compression: Compression,
    /// The encoding the text was decoded from (`UTF-8` unless the file declared or needed another).
    pub encoding: &'static str,
    /// BLAKE3 of the bytes as received, hex: the identity of the file's content.
    pub content_hash: String,
    pub transaction_count: u32,
    pub line_count: u32,
    pub discount_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
}

/// One transaction: its silver facts and its bronze record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transaction {
    pub header: SalesHeader,
    pub lines: Vec<SalesLine>,
    pub discounts: Vec<SalesDiscount>,
    pub bronze: BronzeRecord,
}

/// The dedup key: site + business date + transaction sequence, qualified by register where the vendor numbers
/// transactions per register (the dialect decides; `register` is `None` where it does not), and by the variant of
/// a record that shares its ticket's number by the vendor's design.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransactionKey {
    pub site: String,
    pub business_date: NaiveDate,
    pub register: Option<String>,
    pub sequence: String,
    pub variant: KeyVariant,
}

/// Records that share a ticket number by design are distinct records, not re-sends: a rolled-back payment attempt
/// and its mirror, a fuel prepay and its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyVariant {
    Primary,
    RollbackMirror,
    FuelPrepay,
    FuelCompletion,
    /// A record without a ticket number, keyed by its terminal message serial number instead (or, for a journal
    /// record with neither, by a digest of its content).
    TerminalMessage,
    /// A record that voids an earlier ticket (a post-void), which may carry that ticket's number by design.
    PostVoid,
}

impl KeyVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyVariant::Primary => "",
            KeyVariant::RollbackMirror => "rollback",
            KeyVariant::FuelPrepay => "prepay",
            KeyVariant::FuelCompletion => "completion",
            KeyVariant::TerminalMessage => "message",
            KeyVariant::PostVoid => "post_void",
        }
    }

    /// The inverse of the lake's `key_variant` column (`primary` for [`KeyVariant::Primary`]).
    pub fn parse(s: &str) -> Option<KeyVariant> {
        Some(match s {
            "" | "primary" => KeyVariant::Primary,
            "rollback" => KeyVariant::RollbackMirror,
            "prepay" => KeyVariant::FuelPrepay,
            "completion" => KeyVariant::FuelCompletion,
            "message" => KeyVariant::TerminalMessage,
            "post_void" => KeyVariant::PostVoid,
            _ => return None,
        })
    }

    pub fn of(flags: &TransactionFlags) -> KeyVariant {
        if flags.rollback {
            KeyVariant::RollbackMirror
        } else if flags.fuel_prepay {
            KeyVariant::FuelPrepay
        } else if flags.fuel_completion {
            KeyVariant::FuelCompletion
        } else {
            KeyVariant::Primary
        }
    }
}

impl TransactionKey {
    /// A stable text form, `site|YYYY-MM-DD|register|sequence` (then `|variant` for a non-primary record), used
    /// for hashing and manifests. A `|` or `\\` inside a field is escaped with `\\` (see [`push_field`]), so that no
    /// two keys share a text.
    pub fn canonical(&self) -> String {
        let register = self.register.as_deref().unwrap_or("");
        let mut s = String::with_capacity(self.site.len() + register.len() + self.sequence.len() + 32);
        push_field(&mut s, &self.site);
        s.push('|');
        push_iso_date(&mut s, self.business_date);
        s.push('|');
        push_field(&mut s, register);
        s.push('|');
        push_field(&mut s, &self.sequence);
        if self.variant != KeyVariant::Primary {
            s.push('|');
            s.push_str(self.variant.as_str());
        }
        s
    }
}

/// One field of [`TransactionKey::canonical`]. Until session 32 fields were joined as they were, so workstation `1|2`
/// with sequence `3` and workstation `1` with sequence `2|3` had one key, and the second transaction was counted a
/// duplicate of the first and dropped; a sequence `5|post_void` met the post-void of sequence 5 the same way. A field
/// holding neither `|` nor `\\` (every field of every real file seen) is written as it is, so the digests of keys
/// already in a filter do not change; only keys with a backslash in a field read differently than before.
fn push_field(s: &mut String, field: &str) {
    if memchr::memchr2(b'|', b'\\', field.as_bytes()).is_none() {
        s.push_str(field);
        return;
    }
    for c in field.chars() {
        if matches!(c, '|' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
}

/// `YYYY-MM-DD`, as chrono's `Display` writes it, by hand for years 0 to 9999 (chrono's formatter cost about 2,000
/// instructions a key; dedup digests hash this text, so its form must never change).
fn push_iso_date(s: &mut String, date: NaiveDate) {
    use chrono::Datelike;
    match u32::try_from(date.year()) {
        Ok(year) if year <= 9999 => {
            let digits = [
                year / 1000,
                year / 100 % 10,
                year / 10 % 10,
                year % 10,
                10,
                date.month() / 10,
                date.month() % 10,
                10,
                date.day() / 10,
                date.day() % 10,
            ];
            s.extend(digits.iter().map(|&d| if d == 10 { '-' } else { char::from(b'0' + d as u8) }));
        }
        _ => {
            use std::fmt::Write;
            let _ = write!(s, "{date}");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionType {
    Sale,
    Refund,
    Void,
    NoSale,
    Other,
}

impl TransactionType {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionType::Sale => "sale",
            TransactionType::Refund => "refund",
            TransactionType::Void => "void",
            TransactionType::NoSale => "no_sale",
            TransactionType::Other => "other",
        }
    }
}

/// What a transaction is besides its type. Sales figures exclude flagged records; nothing is dropped for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionFlags {
    /// Rung in training mode: not a real sale.
    pub training: bool,
    /// Parked, not paid.
    pub suspended: bool,
    /// Voided or cancelled as a whole (post-void, cancel flag, void ticket).
    pub voided: bool,
    /// The mirror record of a rolled-back payment attempt (shares its original's key by design).
    pub rollback: bool,
    /// A fuel prepay ticket (the fuel itself is sold by a later completion).
    pub fuel_prepay: bool,
    /// The completion of a fuel prepay.
    pub fuel_completion: bool,
    /// Paid at the pump (outside sale).
    pub outside_sale: bool,
    /// Recorded while the register was offline.
    pub offline: bool,
    /// A system or journal record (sign-on, period close): not a sale.
    pub journal: bool,
}

impl TransactionFlags {
    /// True when sales figures should leave this record out. A fuel prepay ticket is not: what else it sold
    /// counts, and only its deposit lines (kind `fuel_prepay`) are left out, as the completion carries the fuel.
    pub fn excluded_from_sales(&self) -> bool {
        self.training || self.suspended || self.voided || self.rollback || self.journal
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesHeader {
    pub key: TransactionKey,
    /// 1-based position of the transaction in its file.
    pub ordinal: u32,
    pub cashier: Option<String>,
    pub start_time: Option<NaiveDateTime>,
    pub end_time: Option<NaiveDateTime>,
    pub transaction_type: TransactionType,
    /// The vendor's own type value, as written.
    pub type_raw: Option<String>,
    pub flags: TransactionFlags,
    pub gross_amount: Option<Decimal>,
    pub net_amount: Option<Decimal>,
    pub tax_amount: Option<Decimal>,
    pub total_amount: Option<Decimal>,
    /// The ticket this record voids: a post-void's linked ticket, a rollback mirror's original. That ticket may be
    /// in this file (then it is flagged voided here too) or in another, earlier or later: `sales_voids` records the
    /// link either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voids: Option<VoidedTicket>,
}

/// The primary record a post-void or a rollback mirror voids, keyed like [`TransactionKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidedTicket {
    pub site: String,
    pub business_date: NaiveDate,
    pub register: Option<String>,
    pub sequence: String,
}

impl VoidedTicket {
    /// Whether `key` is this ticket's primary record.
    pub fn is(&self, key: &TransactionKey) -> bool {
        key.variant == KeyVariant::Primary
            && key.sequence == self.sequence
            && key.register == self.register
            && key.business_date == self.business_date
            && key.site == self.site
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A merchandise item (UPC/PLU).
    Item,
    /// An open department sale without an item code.
    Department,
    /// Fuel dispensed.
    Fuel,
    /// A fuel prepay deposit; the fuel itself follows as a completion.
    FuelPrepay,
    /// A line type the dialect does not name: kept so that nothing sold is dropped silently.
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesLine {
    /// 1-based position of the line element within its transaction (tender and tax lines count too).
    pub line_number: u32,
    pub kind: LineKind,
    /// The vendor's own line type, as written.
    pub kind_raw: Option<String>,
    pub item_code: Option<String>,
    pub description: Option<String>,
    pub department: Option<String>,
    pub quantity: Option<Decimal>,
    pub unit_price: Option<Decimal>,
    pub extended_amount: Option<Decimal>,
    pub tax_amount: Option<Decimal>,
    pub voided: bool,
    pub refund: bool,
    pub fuel_grade: Option<String>,
    pub fuel_position: Option<String>,
    pub fuel_volume: Option<Decimal>,
    pub fuel_unit_price: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesDiscount {
    /// The sales line this discount sits in, if it sits in one.
    pub line_number: Option<u32>,
    /// The line reference the file itself gives, where a discount names its line instead of nesting in it.
    pub applies_to: Option<String>,
    pub promotion_id: Option<String>,
    pub description: Option<String>,
    /// The discount as a positive reduction of the price (a dialect that writes reductions negative is
    /// normalised).
    pub amount: Option<Decimal>,
    /// The kind of reduction (`promotion`, `mix_match`, `discount`, `loyalty`, or the vendor's value).
    pub kind: Option<String>,
    pub voided: bool,
}

/// A flat record of every value under one element: `path` keys, namespace prefixes stripped, repeated siblings
/// numbered from their second occurrence (`trLine[2]`), attributes as `element_attr_name`, and the text of an
/// element that also has children as `element_tagvalue`. Entries keep file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BronzeRecord {
    /// Every key, then every value, concatenated: the Arrow map column takes each in one copy.
    keys: String,
    values: String,
    /// Per entry, where its key and its value end in `keys` and `values` (each starts where the one before ends).
    ends: Vec<(u32, u32)>,
}

/// What to reserve for a bronze record: key bytes, value bytes, entries.
pub type BronzeCapacity = (usize, usize, usize);

impl BronzeRecord {
    pub fn with_capacity((key_bytes, value_bytes, entries): BronzeCapacity) -> Self {
        BronzeRecord {
            keys: String::with_capacity(key_bytes),
            values: String::with_capacity(value_bytes),
            ends: Vec::with_capacity(entries),
        }
    }

    /// What a record of the same shape should reserve.
    pub fn capacity_hint(&self) -> BronzeCapacity {
        (self.keys.len(), self.values.len(), self.ends.len())
    }

    pub fn push(&mut self, key: &str, value: &str) {
        self.keys.push_str(key);
        self.values.push_str(value);
        self.ends.push((self.keys.len() as u32, self.values.len() as u32));
    }

    /// Pushes an entry whose key is `key` + `a` + `b` (avoids a temporary string on the hot path).
    pub fn push3(&mut self, key: &str, a: &str, b: &str, value: &str) {
        self.keys.push_str(key);
        self.keys.push_str(a);
        self.keys.push_str(b);
        self.values.push_str(value);
        self.ends.push((self.keys.len() as u32, self.values.len() as u32));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// (key bytes, value bytes) over all entries: what Arrow builders for the record need to reserve.
    pub fn text_sizes(&self) -> (usize, usize) {
        (self.keys.len(), self.values.len())
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every key concatenated, every value concatenated, and where each entry's key and value end in them.
    /// The record as one JSON object, entries in file order (keys are unique: repeats are numbered); `None` when
    /// it has no entry.
    pub fn to_json(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(self.keys.len() + self.values.len() + 8 * self.len() + 2);
        out.push('{');
        for (i, (key, value)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Serializing a `str` cannot fail.
            out.push_str(&serde_json::to_string(key).unwrap_or_default());
            out.push(':');
            out.push_str(&serde_json::to_string(value).unwrap_or_default());
        }
        out.push('}');
        Some(out)
    }

    pub fn parts(&self) -> (&str, &str, &[(u32, u32)]) {
        (&self.keys, &self.values, &self.ends)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        (0..self.ends.len()).map(|i| {
            let (k0, v0) = if i == 0 { (0, 0) } else { self.ends[i - 1] };
            let (k1, v1) = self.ends[i];
            (&self.keys[k0 as usize..k1 as usize], &self.values[v0 as usize..v1 as usize])
        })
    }

    /// A digest of every entry, in order: the same record gives the same digest in any file.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for (k, v) in self.iter() {
            h.update(&(k.len() as u64).to_le_bytes()).update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes()).update(v.as_bytes());
        }
        h.finalize()
    }

    /// The value of the first entry with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for BronzeRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<(String, String)>::deserialize(deserializer)?;
        let mut record = BronzeRecord::with_capacity((
            entries.iter().map(|(k, _)| k.len()).sum(),
            entries.iter().map(|(_, v)| v.len()).sum(),
            entries.len(),
        ));
        for (k, v) in &entries {
            record.push(k, v);
        }
        Ok(record)
    }
}

impl Serialize for BronzeRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.ends.len()))?;
        for entry in self.iter() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, NaiveDate};

    /// Fields holding the separator or the escape cannot make two keys one text; plain fields read as before (dedup
    /// digests of keys already in a filter hash this text).
    #[test]
    fn canonical_keys_of_different_transactions_differ() {
        use super::{KeyVariant, TransactionKey};
        let date = NaiveDate::from_ymd_opt(2026, 1, 5).expect("date");
        let key = |register: &str, sequence: &str, variant| TransactionKey {
            site: "9161".into(),
            business_date: date,
            register: Some(register.into()),
            sequence: sequence.into(),
            variant,
        };
        assert_eq!(key("1", "3", KeyVariant::Primary).canonical(), "9161|2026-01-05|1|3");
        assert_eq!(key("1", "5", KeyVariant::PostVoid).canonical(), "9161|2026-01-05|1|5|post_void");
        let pairs = [
            (key("1|2", "3", KeyVariant::Primary), key("1", "2|3", KeyVariant::Primary)),
            (key("1", "5|post_void", KeyVariant::Primary), key("1", "5", KeyVariant::PostVoid)),
            (key("1\\", "|3", KeyVariant::Primary), key("1\\|", "3", KeyVariant::Primary)),
            (key("1\\", "3", KeyVariant::Primary), key("1", "\\3", KeyVariant::Primary)),
        ];
        for (a, b) in pairs {
            assert_ne!(a.canonical(), b.canonical(), "{a:?} and {b:?}");
        }
        assert_eq!(key("1|2", "3", KeyVariant::Primary).canonical(), "9161|2026-01-05|1\\|2|3");
    }

    /// Dedup digests hash the canonical key, so its date text must never change form.
    #[test]
    fn canonical_dates_are_iso() {
        let mut d = NaiveDate::from_ymd_opt(-3, 1, 1).expect("date");
        while d.year() < 10_002 {
            assert_eq!(d.to_string(), d.format("%Y-%m-%d").to_string());
            let mut by_hand = String::new();
            super::push_iso_date(&mut by_hand, d);
            assert_eq!(by_hand, d.to_string());
            d = d + chrono::Days::new(97);
        }
    }
}
