//! Accumulates the fields of the transaction, line and discount being read, and turns them into silver records
//! when their element closes. Values arrive as text; each is typed here, once.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rust_decimal::Decimal;

use super::values;
use crate::dialect::{DialectSpec, DiscountSign, Field, Flag};
use crate::model::{
    BronzeRecord, KeyVariant, LineKind, SalesDiscount, SalesHeader, SalesLine, Transaction, TransactionFlags,
    TransactionKey, TransactionType,
};

/// Why one value was refused: the field's name and the reason (the engine adds file and position).
pub(crate) type ValueError = (&'static str, &'static str);

#[derive(Default)]
pub(crate) struct FileDefaults {
    pub site: Option<String>,
    pub business_date: Option<NaiveDate>,
}

pub(crate) struct TxBuilder {
    pub ordinal: u32,
    /// Where the transaction's own path segment starts in the engine's path buffer: bronze keys start there.
    pub key_start: usize,
    pub bronze: BronzeRecord,
    site: Option<String>,
    business_date: Option<NaiveDate>,
    sequence: Option<String>,
    register: Option<String>,
    message_sequence: Option<String>,
    message_register: Option<String>,
    cashier: Option<String>,
    start: Option<(NaiveDate, Option<NaiveTime>)>,
    start_clock: Option<NaiveTime>,
    end: Option<(NaiveDate, Option<NaiveTime>)>,
    end_clock: Option<NaiveTime>,
    type_raw: Option<String>,
    flags: TransactionFlags,
    gross: Option<Decimal>,
    net: Option<Decimal>,
    tax: Option<Decimal>,
    total: Option<Decimal>,
    lines: Vec<SalesLine>,
    discounts: Vec<SalesDiscount>,
    line_elements: u32,
    line: Option<LineBuilder>,
    discount: Option<SalesDiscount>,
}

struct LineBuilder {
    line: SalesLine,
    /// Index of the first discount read inside this line.
    discounts_from: usize,
}

/// The transaction could not be completed: a key field is missing.
pub(crate) struct MissingField(pub &'static str);

impl TxBuilder {
    /// `bronze_hint`: capacities to reserve for the bronze record (the largest seen so far in the file).
    pub fn new(ordinal: u32, key_start: usize, bronze_hint: (usize, usize)) -> Self {
        TxBuilder {
            ordinal,
            key_start,
            bronze: BronzeRecord::with_capacity(bronze_hint.0, bronze_hint.1),
            site: None,
            business_date: None,
            sequence: None,
            register: None,
            message_sequence: None,
            message_register: None,
            cashier: None,
            start: None,
            start_clock: None,
            end: None,
            end_clock: None,
            type_raw: None,
            flags: TransactionFlags::default(),
            gross: None,
            net: None,
            tax: None,
            total: None,
            lines: Vec::new(),
            discounts: Vec::new(),
            line_elements: 0,
            line: None,
            discount: None,
        }
    }

    pub fn begin_line(&mut self) {
        self.line_elements += 1;
        self.line = Some(LineBuilder {
            line: SalesLine {
                line_number: self.line_elements,
                kind: LineKind::Other,
                kind_raw: None,
                item_code: None,
                description: None,
                department: None,
                quantity: None,
                unit_price: None,
                extended_amount: None,
                tax_amount: None,
                voided: false,
                refund: false,
                fuel_grade: None,
                fuel_position: None,
                fuel_volume: None,
                fuel_unit_price: None,
            },
            discounts_from: self.discounts.len(),
        });
    }

    /// Closes the current line: a line whose type names a sales line goes to silver; any other line (tender, tax,
    /// loyalty, no type at all) stays in bronze only, and discounts read inside it no longer point at it.
    pub fn end_line(&mut self, spec: &DialectSpec) {
        let Some(LineBuilder { mut line, discounts_from }) = self.line.take() else {
            return;
        };
        let kind = match line.kind_raw.as_deref() {
            None => None,
            Some(raw) => match spec.line_kinds.iter().find(|k| k.raw == raw) {
                Some(mapped) => {
                    line.voided |= mapped.voided;
                    mapped.kind
                }
                None => Some(LineKind::Other),
            },
        };
        match kind {
            Some(kind) => {
                line.kind = kind;
                self.lines.push(line);
            }
            None => {
                for d in &mut self.discounts[discounts_from..] {
                    d.line_number = None;
                }
            }
        }
    }

    pub fn begin_discount(&mut self) {
        self.discount = Some(SalesDiscount {
            line_number: self.line.as_ref().map(|l| l.line.line_number),
            applies_to: None,
            promotion_id: None,
            description: None,
            amount: None,
            kind: None,
            voided: false,
        });
    }

    pub fn end_discount(&mut self, spec: &DialectSpec) {
        if let Some(mut d) = self.discount.take() {
            if spec.discount_sign == DiscountSign::Negative {
                d.amount = d.amount.map(|a| -a);
            }
            self.discounts.push(d);
        }
    }

    /// Fills one field from its text.
    pub fn apply(&mut self, field: Field, value: &str) -> Result<(), ValueError> {
        match field {
            Field::Site => set_first(&mut self.site, value),
            Field::BusinessDate => self.business_date = Some(values::date(value).map_err(|r| ("business date", r))?),
            Field::Sequence => set_first(&mut self.sequence, value),
            Field::Register => set_first(&mut self.register, value),
            Field::MessageSequence => set_first(&mut self.message_sequence, value),
            Field::MessageRegister => set_first(&mut self.message_register, value),
            Field::Cashier => set_first(&mut self.cashier, value),
            Field::StartTime => self.start = Some(values::date_or_timestamp(value).map_err(|r| ("start time", r))?),
            Field::StartClock => self.start_clock = Some(values::clock(value).map_err(|r| ("start time", r))?),
            Field::EndTime => self.end = Some(values::date_or_timestamp(value).map_err(|r| ("end time", r))?),
            Field::EndClock => self.end_clock = Some(values::clock(value).map_err(|r| ("end time", r))?),
            Field::TypeRaw => set_first(&mut self.type_raw, value),
            Field::Gross => self.gross = Some(amount(value, "gross amount")?),
            Field::Net => self.net = Some(amount(value, "net amount")?),
            Field::Tax => self.tax = Some(amount(value, "tax amount")?),
            Field::Total => self.total = Some(amount(value, "total amount")?),
            Field::Flag(flag) => {
                if values::flag(value).map_err(|r| (flag_name(flag), r))? {
                    set_flag(&mut self.flags, flag);
                }
            }
            Field::PromotionId
            | Field::DiscountDescription
            | Field::DiscountAmount
            | Field::DiscountKind
            | Field::AppliesTo
            | Field::DiscountVoid => {
                if let Some(d) = self.discount.as_mut() {
                    apply_discount(d, field, value)?;
                }
            }
            _ => {
                if let Some(l) = self.line.as_mut() {
                    apply_line(&mut l.line, field, value)?;
                }
            }
        }
        Ok(())
    }

    /// Completes the transaction: resolves its key (file defaults fill what it lacks), its type and flags.
    pub fn finish(mut self, spec: &DialectSpec, defaults: &FileDefaults) -> Result<Transaction, MissingField> {
        let site = self.site.take().or_else(|| defaults.site.clone()).ok_or(MissingField("site"))?;
        let business_date = self.business_date.or(defaults.business_date).ok_or(MissingField("business date"))?;
        let mut by_message = false;
        let sequence = match (self.sequence.take(), self.message_sequence.take()) {
            (Some(seq), _) => seq,
            (None, Some(msg)) => {
                by_message = true;
                msg
            }
            (None, None) => return Err(MissingField("transaction sequence")),
        };
        let register = if !spec.register_in_key {
            None
        } else if by_message {
            Some(self.message_register.clone().or_else(|| self.register.clone()).ok_or(MissingField("register"))?)
        } else {
            Some(self.register.clone().ok_or(MissingField("register"))?)
        };

        let mut kind = spec.default_type;
        if let Some(raw) = self.type_raw.as_deref() {
            match spec.types.iter().find(|t| t.raw == raw) {
                Some(t) => {
                    kind = t.kind;
                    for &f in t.flags {
                        set_flag(&mut self.flags, f);
                    }
                }
                None => kind = TransactionType::Other,
            }
        }
        // A sale whose every sales line is a return is a refund (ARTS writes returns as `Return` lines).
        if kind == TransactionType::Sale && !self.lines.is_empty() && self.lines.iter().all(|l| l.refund) {
            kind = TransactionType::Refund;
        }
        if kind == TransactionType::Void {
            self.flags.voided = true;
        } else if self.flags.voided && matches!(kind, TransactionType::Sale | TransactionType::Refund) {
            kind = TransactionType::Void;
        }

        let header = SalesHeader {
            key: TransactionKey {
                site,
                business_date,
                register,
                sequence,
                variant: if by_message { KeyVariant::TerminalMessage } else { KeyVariant::of(&self.flags) },
            },
            ordinal: self.ordinal,
            cashier: self.cashier,
            start_time: moment(self.start, self.start_clock),
            end_time: moment(self.end, self.end_clock),
            transaction_type: kind,
            type_raw: self.type_raw,
            flags: self.flags,
            gross_amount: self.gross,
            net_amount: self.net,
            tax_amount: self.tax,
            total_amount: self.total,
        };
        Ok(Transaction { header, lines: self.lines, discounts: self.discounts, bronze: self.bronze })
    }
}

impl FileDefaults {
    /// File-scope rules may only name the site and the business date.
    pub fn apply(&mut self, field: Field, value: &str) -> Result<(), ValueError> {
        match field {
            Field::Site => set_first(&mut self.site, value),
            Field::BusinessDate => {
                self.business_date.get_or_insert(values::date(value).map_err(|r| ("business date", r))?);
            }
            _ => {}
        }
        Ok(())
    }
}

fn apply_line(line: &mut SalesLine, field: Field, value: &str) -> Result<(), ValueError> {
    match field {
        Field::LineKindRaw => set_first(&mut line.kind_raw, value),
        Field::ItemCode => set_first(&mut line.item_code, value),
        Field::Description => set_first(&mut line.description, value),
        Field::Department => set_first(&mut line.department, value),
        Field::Quantity => line.quantity = Some(amount(value, "quantity")?),
        Field::UnitPrice => line.unit_price = Some(amount(value, "unit price")?),
        Field::ExtendedAmount => line.extended_amount = Some(amount(value, "extended amount")?),
        Field::LineTax => {
            let tax = amount(value, "line tax")?;
            line.tax_amount = Some(line.tax_amount.unwrap_or_default() + tax);
        }
        Field::LineVoid => line.voided |= values::flag(value).map_err(|r| ("line void flag", r))?,
        Field::LineRefund => line.refund |= values::flag(value).map_err(|r| ("line refund flag", r))?,
        Field::FuelGrade => set_first(&mut line.fuel_grade, value),
        Field::FuelPosition => set_first(&mut line.fuel_position, value),
        Field::FuelVolume => line.fuel_volume = Some(amount(value, "fuel volume")?),
        Field::FuelUnitPrice => line.fuel_unit_price = Some(amount(value, "fuel price")?),
        _ => {}
    }
    Ok(())
}

fn apply_discount(d: &mut SalesDiscount, field: Field, value: &str) -> Result<(), ValueError> {
    match field {
        Field::PromotionId => set_first(&mut d.promotion_id, value),
        Field::DiscountDescription => set_first(&mut d.description, value),
        Field::DiscountAmount => d.amount = Some(amount(value, "discount amount")?),
        // Last wins: a mark gives the default kind at the start tag, the vendor's own reason text overrides it.
        Field::DiscountKind => d.kind = Some(value.to_owned()),
        Field::AppliesTo => set_first(&mut d.applies_to, value),
        Field::DiscountVoid => d.voided |= values::flag(value).map_err(|r| ("discount void flag", r))?,
        _ => {}
    }
    Ok(())
}

fn amount(value: &str, name: &'static str) -> Result<Decimal, ValueError> {
    values::decimal(value).map_err(|r| (name, r))
}

/// The first value a rule yields wins: later, less specific rules for the same field only fill a gap.
fn set_first(slot: &mut Option<String>, value: &str) {
    if slot.is_none() {
        *slot = Some(value.to_owned());
    }
}

fn moment(date: Option<(NaiveDate, Option<NaiveTime>)>, clock: Option<NaiveTime>) -> Option<NaiveDateTime> {
    let (d, t) = date?;
    Some(d.and_time(t.or(clock).unwrap_or_default()))
}

fn set_flag(flags: &mut TransactionFlags, flag: Flag) {
    match flag {
        Flag::Training => flags.training = true,
        Flag::Suspended => flags.suspended = true,
        Flag::Voided => flags.voided = true,
        Flag::Rollback => flags.rollback = true,
        Flag::FuelPrepay => flags.fuel_prepay = true,
        Flag::FuelCompletion => flags.fuel_completion = true,
        Flag::OutsideSale => flags.outside_sale = true,
        Flag::Offline => flags.offline = true,
        Flag::Journal => flags.journal = true,
    }
}

fn flag_name(flag: Flag) -> &'static str {
    match flag {
        Flag::Training => "training flag",
        Flag::Suspended => "suspended flag",
        Flag::Voided => "void flag",
        Flag::Rollback => "rollback flag",
        Flag::FuelPrepay => "fuel prepay flag",
        Flag::FuelCompletion => "fuel completion flag",
        Flag::OutsideSale => "outside sale flag",
        Flag::Offline => "offline flag",
        Flag::Journal => "journal flag",
    }
}
