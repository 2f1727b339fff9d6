//! Accumulates the fields of the transaction, line and discount being read, and turns them into silver records
//! when their element closes. Values arrive as text; each is typed here, once.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::values;
use crate::dialect::{DialectSpec, DiscountSign, Field, Flag};
use crate::model::{
    BronzeRecord, KeyVariant, LineKind, SalesDiscount, SalesHeader, SalesLine, Transaction, TransactionFlags,
    TransactionKey, TransactionType, VoidedTicket,
};

/// Units of measure that are volumes (UN/ECE rec. 20 codes, and the words exports use).
const VOLUME_UNITS: &[&str] = &["GLL", "GLI", "LTR", "GAL", "gallon", "gallonUS", "litre", "liter"];

/// The scale of a derived unit price: the lake's decimal scale.
const UNIT_PRICE_SCALE: u32 = 4;

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
    business_date_fallback: Option<NaiveDate>,
    sequence: Option<String>,
    register: Option<String>,
    message_sequence: Option<String>,
    message_register: Option<String>,
    cashier: Option<String>,
    start: Option<(NaiveDate, Option<NaiveTime>)>,
    start_clock: Option<NaiveTime>,
    end: Option<(NaiveDate, Option<NaiveTime>)>,
    /// The UTC offsets (seconds east) the start and end timestamps were written in, where they said.
    start_offset: Option<i32>,
    end_offset: Option<i32>,
    end_clock: Option<NaiveTime>,
    duration: Option<Decimal>,
    type_raw: Option<String>,
    flags: TransactionFlags,
    gross: Option<Decimal>,
    net: Option<Decimal>,
    tax: Option<Decimal>,
    tax_fallback: Option<Decimal>,
    total: Option<Decimal>,
    /// The record voids an earlier ticket (see [`Flag::PostVoid`]).
    post_void: bool,
    /// The `TransactionLink` being read, and the first post-void link read (see [`Field::LinkStart`]).
    link: Link,
    post_void_link: Option<Link>,
    /// A link's `ReasonCode`: its attributes are read before its start is marked (see `Field::LinkStart`).
    link_reason: Option<String>,
    /// The first link without a reason: a post-void's (Xstore `POST_VOID`) when it has no post-void link.
    plain_link: Option<Link>,
    lines: Vec<SalesLine>,
    discounts: Vec<SalesDiscount>,
    line_elements: u32,
    line: Option<LineBuilder>,
    discount: Option<SalesDiscount>,
    reward: RewardCopy,
    /// The promotion of each reward row of the detailed record (see [`Field::DiscountSummarized`]).
    detailed_rewards: Vec<Option<String>>,
    /// Indices in `discounts` of reward rows only summarized, read before any detailed row of their promotion: a
    /// detailed row read later makes them copies (see [`TxBuilder::drop_summarized_copies`]).
    summarized_rewards: Vec<usize>,
}

/// A `TransactionLink` to another ticket, as read.
#[derive(Default)]
struct Link {
    reason: Option<String>,
    site: Option<String>,
    business_date: Option<NaiveDate>,
    register: Option<String>,
    sequence: Option<String>,
}

impl Link {
    fn is_post_void(&self) -> bool {
        let reason = self.reason.as_deref().unwrap_or("");
        let local = reason.rsplit_once(':').map_or(reason, |(_, l)| l);
        local.eq_ignore_ascii_case("PostVoid")
    }
}

/// What an NCR ACS reward row says of itself: its category, and which record of the rewards it belongs to.
#[derive(Default)]
struct RewardCopy {
    category: Option<String>,
    detailed: bool,
    summarized: bool,
}

struct LineBuilder {
    line: SalesLine,
    /// Index of the first discount read inside this line.
    discounts_from: usize,
    /// The tax element being read is voided.
    tax_void: bool,
    /// A return written with positive amounts (see [`Field::LineReturn`]).
    positive_return: bool,
    /// The quantity's sign is written apart and is negative (see [`Field::LineSign`]).
    negative_sign: bool,
    /// A unit price for when none can be derived (see [`Field::UnitPriceFallback`]).
    unit_price_fallback: Option<Decimal>,
    /// The quantity is a volume (see [`Field::LineUnitOfMeasure`]).
    by_volume: bool,
}

/// The transaction could not be completed: a key field is missing.
pub(crate) struct MissingField(pub &'static str);

impl TxBuilder {
    /// `bronze_hint`: capacities to reserve for the bronze record (the largest seen so far in the file).
    pub fn new(ordinal: u32, key_start: usize, bronze_hint: crate::model::BronzeCapacity) -> Self {
        TxBuilder {
            ordinal,
            key_start,
            bronze: BronzeRecord::with_capacity(bronze_hint),
            site: None,
            business_date: None,
            business_date_fallback: None,
            sequence: None,
            register: None,
            message_sequence: None,
            message_register: None,
            cashier: None,
            start: None,
            start_clock: None,
            start_offset: None,
            end_offset: None,
            end: None,
            end_clock: None,
            duration: None,
            type_raw: None,
            flags: TransactionFlags::default(),
            gross: None,
            net: None,
            tax: None,
            tax_fallback: None,
            total: None,
            post_void: false,
            link: Link::default(),
            post_void_link: None,
            plain_link: None,
            link_reason: None,
            lines: Vec::new(),
            discounts: Vec::new(),
            line_elements: 0,
            line: None,
            discount: None,
            reward: RewardCopy::default(),
            detailed_rewards: Vec::new(),
            summarized_rewards: Vec::new(),
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
            tax_void: false,
            positive_return: false,
            negative_sign: false,
            unit_price_fallback: None,
            by_volume: false,
        });
    }

    /// Closes the current line: a line whose type names a sales line goes to silver; any other line (tender, tax,
    /// loyalty, no type at all) stays in bronze only, and discounts read inside it no longer point at it.
    pub fn end_line(&mut self, spec: &DialectSpec) {
        let Some(LineBuilder {
            mut line,
            discounts_from,
            positive_return,
            negative_sign,
            unit_price_fallback,
            by_volume,
            ..
        }) = self.line.take()
        else {
            return;
        };
        let mut kind = match line.kind_raw.as_deref() {
            None => None,
            Some(raw) => match spec.line_kinds.iter().find(|k| k.raw == raw) {
                Some(mapped) => {
                    line.voided |= mapped.voided;
                    mapped.kind
                }
                None => Some(LineKind::Other),
            },
        };
        // An item sold by volume is fuel (ARTS writes fuel as a `Sale` in gallons or litres).
        if by_volume && kind == Some(LineKind::Item) {
            kind = Some(LineKind::Fuel);
            line.fuel_volume = line.fuel_volume.or(line.quantity);
            line.fuel_unit_price = line.fuel_unit_price.or(line.unit_price);
        }
        if positive_return {
            let discounts = self.discounts[discounts_from..].iter_mut().filter_map(|d| d.amount.as_mut());
            let amounts = [&mut line.quantity, &mut line.extended_amount, &mut line.tax_amount].into_iter().flatten();
            // A discount of a return is returned too: it is negated with the line, so that line less discount is
            // still what was refunded.
            for v in amounts.chain(discounts) {
                if v.is_sign_positive() {
                    *v = -*v;
                }
            }
        }
        // A return whose sign is written apart (Verifone `trlSign`), or only on its amount (a negative `trlLineTot`
        // beside an unsigned quantity): quantity and amount are made negative, and so are its discounts, so that the
        // line less its discounts is what was refunded.
        let negative_amount = spec.negative_amount_is_return
            && line.extended_amount.is_some_and(|a| a.is_sign_negative() && !a.is_zero());
        if negative_sign || negative_amount {
            let discounts = self.discounts[discounts_from..].iter_mut().filter_map(|d| d.amount.as_mut());
            for v in [&mut line.quantity, &mut line.extended_amount].into_iter().flatten().chain(discounts) {
                if v.is_sign_positive() && !v.is_zero() {
                    *v = -*v;
                }
            }
        }
        if spec.unit_price_from_amount
            && line.unit_price.is_none()
            && let (Some(amount), Some(quantity)) = (line.extended_amount, line.quantity)
            && !quantity.is_zero()
        {
            line.unit_price = amount.checked_div(quantity).map(|u| u.round_dp(UNIT_PRICE_SCALE));
        }
        line.unit_price = line.unit_price.or(unit_price_fallback);
        // What a voided line held was not sold: neither were its discounts.
        if line.voided {
            for d in &mut self.discounts[discounts_from..] {
                d.voided = true;
            }
        }
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
        self.reward = RewardCopy::default();
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
            // Only an NCR ACS reward row has a category; the rules below are for those alone.
            let reward = std::mem::take(&mut self.reward);
            if let Some(category) = reward.category.as_deref() {
                // A points, message or custom-offer reward carries a number that is not money off (NCR's `1` for a
                // custom offer): its row stays, without an amount; bronze keeps the number.
                let local = category.rsplit_once(':').map_or(category, |(_, l)| l).trim();
                if !local.eq_ignore_ascii_case("Monetary") {
                    d.amount = None;
                }
                // NCR writes money off as a negative reward (`-0.19`, its `acs:GrossNegative`); a discount is a
                // positive reduction in every dialect, so that lines less discounts is what was paid.
                d.amount = d.amount.map(|a| -a);
                if reward.detailed {
                    self.detailed_rewards.push(d.promotion_id.clone());
                } else if reward.summarized {
                    if self.detailed_rewards.contains(&d.promotion_id) {
                        // The summarized record of a promotion the detailed record holds (a copy, or a total of
                        // its detailed rows): counting it would take the discount off twice. It stays in bronze.
                        return;
                    }
                    self.summarized_rewards.push(self.discounts.len());
                }
            }
            self.discounts.push(d);
        }
    }

    /// Drops the summarized reward rows that were read before a detailed row of their promotion: copies, as those
    /// read after one are (the order of the two records is the writer's).
    fn drop_summarized_copies(&mut self) {
        if self.summarized_rewards.is_empty() || self.detailed_rewards.is_empty() {
            return;
        }
        let copies: Vec<usize> = std::mem::take(&mut self.summarized_rewards)
            .into_iter()
            .filter(|&i| self.discounts.get(i).is_some_and(|d| self.detailed_rewards.contains(&d.promotion_id)))
            .collect();
        let mut index = 0;
        self.discounts.retain(|_| {
            index += 1;
            !copies.contains(&(index - 1))
        });
    }

    /// Whether nothing in the transaction gave it a business date (the file's may still come).
    pub fn lacks_business_date(&self) -> bool {
        self.business_date.is_none() && self.business_date_fallback.is_none()
    }

    /// The link read so far is done (another starts, or the transaction ends): the first post-void link is kept.
    fn end_link(&mut self) {
        let link = std::mem::take(&mut self.link);
        if link.sequence.is_none() {
            return;
        }
        if link.reason.is_none() {
            self.plain_link.get_or_insert(link);
        } else if self.post_void_link.is_none() && link.is_post_void() {
            self.post_void_link = Some(link);
        }
    }

    /// Fills one field from its text.
    pub fn apply(&mut self, field: Field, value: &str) -> Result<(), ValueError> {
        match field {
            Field::Site => set_first(&mut self.site, value),
            // First wins, as for the other key fields (and the file's own date): a transaction that gives its day
            // twice keeps one key, not site and sequence from the first and the day from the second. Both are checked.
            Field::BusinessDate => {
                let date = values::date(value).map_err(|r| ("business date", r))?;
                self.business_date.get_or_insert(date);
            }
            Field::BusinessDateFallback => {
                self.business_date_fallback = Some(values::date(value).map_err(|r| ("business date", r))?)
            }
            Field::Sequence => set_first(&mut self.sequence, value),
            Field::Register => set_first(&mut self.register, value),
            Field::MessageSequence => set_first(&mut self.message_sequence, value),
            Field::MessageRegister => set_first(&mut self.message_register, value),
            Field::Cashier => set_first(&mut self.cashier, value),
            Field::StartTime => {
                self.start = Some(values::date_or_timestamp(value).map_err(|r| ("start time", r))?);
                self.start_offset = values::offset_secs(value);
            }
            Field::StartClock => self.start_clock = Some(values::clock(value).map_err(|r| ("start time", r))?),
            Field::EndTime => {
                self.end = Some(values::date_or_timestamp(value).map_err(|r| ("end time", r))?);
                self.end_offset = values::offset_secs(value);
            }
            Field::EndClock => self.end_clock = Some(values::clock(value).map_err(|r| ("end time", r))?),
            Field::DurationSecs => self.duration = Some(amount(value, "duration")?),
            Field::TypeRaw => set_first(&mut self.type_raw, value),
            Field::Gross => self.gross = Some(amount(value, "gross amount")?),
            Field::Net => self.net = Some(amount(value, "net amount")?),
            Field::Tax => self.tax = Some(amount(value, "tax amount")?),
            Field::TaxFallback => self.tax_fallback = Some(amount(value, "tax amount")?),
            Field::Total => self.total = Some(amount(value, "total amount")?),
            Field::Flag(flag) => {
                if values::flag(value).map_err(|r| (flag_name(flag), r))? {
                    self.post_void |= flag == Flag::PostVoid;
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
            Field::LinkStart => {
                self.end_link();
                self.link.reason = self.link_reason.take();
            }
            Field::LinkReason => self.link_reason = Some(value.to_owned()),
            Field::LinkSite => set_first(&mut self.link.site, value),
            // A link's day in another form than the record's own (`2024-04-02Z`, `02/04/2024`) must not cost the
            // file: its date part is read if it is one, else the link keeps the post-void's day (bronze keeps it).
            Field::LinkBusinessDate => {
                if self.link.business_date.is_none() {
                    self.link.business_date =
                        values::date(value).or_else(|_| values::date(value.get(..10).unwrap_or(""))).ok();
                }
            }
            Field::LinkRegister => set_first(&mut self.link.register, value),
            Field::LinkSequence => set_first(&mut self.link.sequence, value),
            Field::DiscountCategory => set_first(&mut self.reward.category, value),
            // Which record of the rewards a row belongs to is a hint, not data: a value that is not a flag is no flag
            // (bronze keeps it), and never costs the file.
            Field::DiscountDetailed => self.reward.detailed |= values::flag(value).unwrap_or(false),
            Field::DiscountSummarized => self.reward.summarized |= values::flag(value).unwrap_or(false),
            _ => {
                if let Some(l) = self.line.as_mut() {
                    apply_line(l, field, value)?;
                }
            }
        }
        Ok(())
    }

    /// Completes the transaction: resolves its key (file defaults fill what it lacks), its type and flags.
    pub fn finish(mut self, spec: &DialectSpec, defaults: &FileDefaults) -> Result<Transaction, MissingField> {
        self.drop_summarized_copies();
        self.align_offsets();
        let site = self.site.take().or_else(|| defaults.site.clone()).ok_or(MissingField("site"))?;
        let business_date = self
            .business_date
            .or(self.business_date_fallback)
            .or(defaults.business_date)
            .ok_or(MissingField("business date"))?;
        self.tax = self.tax.or(self.tax_fallback);
        self.cancel_voided_lines(spec);
        let kind = self.kind_and_flags(spec);
        if spec.amounts_from_lines {
            self.amounts_from_lines();
        }

        let mut by_message = false;
        let sequence = match (self.sequence.take(), self.message_sequence.take()) {
            (Some(seq), _) => seq,
            (None, Some(msg)) => {
                by_message = true;
                msg
            }
            // A journal record with no number at all (a system event) is keyed by its content, so that a re-sent
            // file adds it once and it never costs the file's sales; a sale without a number is an error.
            (None, None) if self.flags.journal => {
                by_message = true;
                if self.message_register.is_none() && self.register.is_none() {
                    self.message_register = Some(String::new());
                }
                format!("digest:{}", &self.bronze.digest().to_hex()[..32])
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
        let variant = if by_message {
            KeyVariant::TerminalMessage
        } else if self.post_void {
            KeyVariant::PostVoid
        } else {
            KeyVariant::of(&self.flags)
        };
        // The ticket a post-void names by its link, each part defaulting to the post-void's own (a link without a
        // number: it carries the ticket's); a rollback mirror's is its own key.
        self.end_link();
        let voids = match variant {
            KeyVariant::PostVoid => {
                let link = self.post_void_link.take().or(self.plain_link.take()).unwrap_or_default();
                Some(VoidedTicket {
                    site: link.site.unwrap_or_else(|| site.clone()),
                    business_date: link.business_date.unwrap_or(business_date),
                    register: register.as_ref().and(link.register).or_else(|| register.clone()),
                    sequence: link.sequence.unwrap_or_else(|| sequence.clone()),
                })
            }
            KeyVariant::RollbackMirror => Some(VoidedTicket {
                site: site.clone(),
                business_date,
                register: register.clone(),
                sequence: sequence.clone(),
            }),
            _ => None,
        };

        let header = SalesHeader {
            key: TransactionKey { site, business_date, register, sequence, variant },
            ordinal: self.ordinal,
            cashier: self.cashier,
            start_time: moment(self.start, self.start_clock).or_else(|| {
                let (end, secs) = (moment(self.end, self.end_clock)?, self.duration?);
                // Whole milliseconds; a duration that is negative or past a day is not a duration.
                let millis = (secs * Decimal::ONE_THOUSAND).round().to_i64()?;
                (0..=86_400_000).contains(&millis).then(|| end - chrono::Duration::milliseconds(millis))
            }),
            end_time: moment(self.end, self.end_clock),
            transaction_type: kind,
            type_raw: self.type_raw,
            flags: self.flags,
            gross_amount: self.gross,
            net_amount: self.net,
            tax_amount: self.tax,
            total_amount: self.total,
            voids,
        };
        Ok(Transaction { header, lines: self.lines, discounts: self.discounts, bronze: self.bronze })
    }

    /// Fills gross, net and tax the transaction did not give from its live lines (see
    /// [`DialectSpec::amounts_from_lines`]); a sum past the decimal's range is left out.
    fn amounts_from_lines(&mut self) {
        let live = || self.lines.iter().filter(|l| !l.voided);
        if live().next().is_none() {
            return;
        }
        let gross = checked_sum(live().filter_map(|l| l.extended_amount)).flatten();
        let tax = checked_sum(live().filter_map(|l| l.tax_amount)).flatten();
        let discounts = checked_sum(self.discounts.iter().filter(|d| !d.voided).filter_map(|d| d.amount));
        let net = match (gross, discounts) {
            (Some(g), Some(d)) => g.checked_sub(d.unwrap_or_default()),
            _ => None,
        };
        if self.gross.is_none() && self.net.is_none() {
            self.net = net;
        }
        self.gross = self.gross.or(gross);
        self.tax = self.tax.or(tax);
    }

    /// Times are kept as the store's wall clock. A transaction may write them in different offsets (NCR: a UTC
    /// begin beside a local end), and read as written a start could fall after its end, or on another day. So the
    /// store's offset is the first one that is not UTC, and a time written in another offset is moved into it.
    fn align_offsets(&mut self) {
        let Some(local) = [self.start_offset, self.end_offset].into_iter().flatten().find(|&o| o != 0) else {
            return;
        };
        let moved = |moment: Option<(NaiveDate, Option<NaiveTime>)>, offset: Option<i32>| match (moment, offset) {
            (Some((date, Some(time))), Some(written)) if written != local => {
                let at = date.and_time(time) + chrono::Duration::seconds(i64::from(local - written));
                Some((at.date(), Some(at.time())))
            }
            _ => None,
        };
        if let Some(start) = moved(self.start, self.start_offset) {
            // A business day taken from the start (Visma's, when it writes none) is the store's day too.
            if self.business_date_fallback.is_some() && self.business_date_fallback == self.start.map(|(d, _)| d) {
                self.business_date_fallback = Some(start.0);
            }
            self.start = Some(start);
        }
        if let Some(end) = moved(self.end, self.end_offset) {
            self.end = Some(end);
        }
    }

    /// A negating void line (Verifone `void plu`: its type names it voided, and it carries the negated amount)
    /// cancels the line it voids: the latest live line before it of the same kind, item and department whose amount
    /// it negates. Both then leave sales figures, with the cancelled line's discounts; until session 36 only the void
    /// line did, and the sale it cancelled stayed counted (an audit: a ticket of net 0.00 counted 3.00).
    fn cancel_voided_lines(&mut self, spec: &DialectSpec) {
        let negating = |l: &SalesLine| {
            l.kind_raw.as_deref().is_some_and(|raw| spec.line_kinds.iter().any(|k| k.voided && k.raw == raw))
        };
        for i in 0..self.lines.len() {
            let (before, rest) = self.lines.split_at_mut(i);
            let void = &rest[0];
            let Some(amount) = void.extended_amount.filter(|a| !a.is_zero()) else { continue };
            if !negating(void) {
                continue;
            }
            let cancelled = before.iter_mut().rev().find(|l| {
                !l.voided
                    && l.kind == void.kind
                    && l.item_code == void.item_code
                    && l.department == void.department
                    && l.extended_amount == Some(-amount)
            });
            if let Some(original) = cancelled {
                original.voided = true;
                let number = original.line_number;
                for d in self.discounts.iter_mut().filter(|d| d.line_number == Some(number)) {
                    d.voided = true;
                }
            }
        }
    }

    /// The transaction's type from the vendor's type value, and the flags that follow from it and from the lines.
    fn kind_and_flags(&mut self, spec: &DialectSpec) -> TransactionType {
        let mut kind = spec.default_type;
        if let Some(raw) = self.type_raw.as_deref() {
            match spec.types.iter().find(|t| t.raw == raw) {
                Some(t) => {
                    kind = t.kind;
                    for &f in t.flags {
                        self.post_void |= f == Flag::PostVoid;
                        set_flag(&mut self.flags, f);
                    }
                }
                None => kind = TransactionType::Other,
            }
        }
        // Refunds are negative in every dialect: a refund record's live lines written positive (a Verifone `refund
        // sale` line without a sign) are negated, with their discounts, and so are its discounts of the whole ticket
        // (a Verifone loyalty discount on a refund).
        if kind == TransactionType::Refund {
            for d in self.discounts.iter_mut().filter(|d| d.line_number.is_none()).filter_map(|d| d.amount.as_mut()) {
                if d.is_sign_positive() && !d.is_zero() {
                    *d = -*d;
                }
            }
            for line in self.lines.iter_mut().filter(|l| !l.voided) {
                let number = line.line_number;
                let discounts = self.discounts.iter_mut().filter(|d| d.line_number == Some(number));
                let values =
                    [&mut line.quantity, &mut line.extended_amount, &mut line.tax_amount].into_iter().flatten();
                for v in values.chain(discounts.filter_map(|d| d.amount.as_mut())) {
                    if v.is_sign_positive() && !v.is_zero() {
                        *v = -*v;
                    }
                }
            }
        }
        // A line of negative quantity is a return, and so is every line of a refund record (NAXML `RefundEvent`).
        for line in &mut self.lines {
            let negative = line.quantity.is_some_and(|q| q.is_sign_negative() && !q.is_zero());
            line.refund |= kind == TransactionType::Refund || (negative && !line.voided);
        }
        // A sale whose every sales line is a return is a refund (ARTS writes returns as `Return` lines, v6 as
        // `Sale` lines of quantity -1).
        let sales_lines = || self.lines.iter().filter(|l| !l.voided && l.kind != LineKind::Other);
        if kind == TransactionType::Sale && sales_lines().next().is_some() && sales_lines().all(|l| l.refund) {
            kind = TransactionType::Refund;
        }
        // Prepay and completion from the lines (NAXML, which flags neither): a live prepay placeholder and no fuel is
        // the prepay ticket; a cancelled placeholder beside the fuel sold is its completion. Only the key's variant
        // follows: the deposit lines, not the ticket, are what sales figures leave out.
        if spec.fuel_role_from_lines && !self.flags.fuel_prepay && !self.flags.fuel_completion {
            let live = |k: LineKind| self.lines.iter().any(|l| l.kind == k && !l.voided);
            let cancelled_prepay = self.lines.iter().any(|l| l.kind == LineKind::FuelPrepay && l.voided);
            if live(LineKind::FuelPrepay) && !live(LineKind::Fuel) {
                self.flags.fuel_prepay = true;
            } else if cancelled_prepay && live(LineKind::Fuel) {
                self.flags.fuel_completion = true;
            }
        }
        if kind == TransactionType::Void {
            self.flags.voided = true;
        } else if self.flags.voided && matches!(kind, TransactionType::Sale | TransactionType::Refund) {
            kind = TransactionType::Void;
        }
        kind
    }
}

/// The sum of `values`: `Some(None)` when there is none, `None` past the decimal's range.
fn checked_sum(mut values: impl Iterator<Item = Decimal>) -> Option<Option<Decimal>> {
    values.try_fold(None, |acc: Option<Decimal>, v| acc.unwrap_or_default().checked_add(v).map(Some))
}

impl FileDefaults {
    /// File-scope rules may only name the site and the business date.
    /// A second, different value is refused: the whole file's transactions would take the first one silently (an
    /// audit saw a Passport file with a second `TransmissionHeader` land another site's sales under the first site,
    /// and that site's own file then taken for duplicates of them).
    pub fn apply(&mut self, field: Field, value: &str) -> Result<(), ValueError> {
        match field {
            Field::Site => match &self.site {
                None => self.site = Some(value.to_owned()),
                Some(first) if first.trim() == value.trim() => {}
                Some(_) => return Err(("site", "the file already named another site for all its transactions")),
            },
            Field::BusinessDate => {
                let date = values::date(value).map_err(|r| ("business date", r))?;
                match self.business_date {
                    None => self.business_date = Some(date),
                    Some(first) if first == date => {}
                    Some(_) => {
                        return Err((
                            "business date",
                            "the file already named another business date for all its transactions",
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn apply_line(builder: &mut LineBuilder, field: Field, value: &str) -> Result<(), ValueError> {
    let line = &mut builder.line;
    match field {
        Field::LineKindRaw => set_first(&mut line.kind_raw, value),
        Field::ItemCode => set_first(&mut line.item_code, value),
        Field::Description => set_first(&mut line.description, value),
        Field::Department => set_first(&mut line.department, value),
        Field::Quantity => line.quantity = Some(amount(value, "quantity")?),
        Field::UnitPrice => line.unit_price = Some(amount(value, "unit price")?),
        Field::UnitPriceFallback => builder.unit_price_fallback = Some(amount(value, "unit price")?),
        Field::ExtendedAmount => line.extended_amount = Some(amount(value, "extended amount")?),
        Field::LineTax => {
            let tax = amount(value, "line tax")?;
            if !builder.tax_void {
                line.tax_amount = Some(line.tax_amount.unwrap_or_default() + tax);
            }
        }
        Field::LineUnitOfMeasure => builder.by_volume = VOLUME_UNITS.iter().any(|u| u.eq_ignore_ascii_case(value)),
        Field::LineTaxVoid => builder.tax_void = values::flag(value).map_err(|r| ("tax void flag", r))?,
        Field::LineReturn if values::flag(value).map_err(|r| ("line return flag", r))? => {
            line.refund = true;
            builder.positive_return = true;
        }
        Field::LineSign => builder.negative_sign = amount(value, "line sign")?.is_sign_negative(),
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
        Flag::PostVoid => flags.voided = true,
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
        Flag::PostVoid => "post-void link",
    }
}
