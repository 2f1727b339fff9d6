//! Vendor dialects as data. A dialect is a table of element paths → fields that the one parser core in
//! [`crate::parse`] reads; no dialect has a parse loop of its own.
//!
//! Path syntax, relative to the element that scopes the rule (the root, a transaction, a line or a discount):
//! - `a/b/c`: the text of element `c` (namespace prefixes are ignored everywhere);
//! - `a|b/c`: alternatives for one step; `a/b, c/d`: alternative whole paths;
//! - `a/@name`: the value of attribute `name` on `a`; `@name` alone is an attribute of the scoping element;
//! - `a[@k=v]`: element `a` only where its attribute `k` equals `v` (last element step only);
//! - a [`Rule`] built with [`mark`] sets a constant when the element is present, whatever its text.

mod arts;
mod conexxus;
mod naxml;
mod verifone;
mod visma;
mod xstore;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{LineKind, TransactionType};

/// The six supported dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// Verifone Commander / Sapphire transaction log (`transSet`).
    VerifoneCommander,
    /// NAXML POSJournal as Gilbarco Passport exports it (PJR files).
    NaxmlPassport,
    /// NAXML / Conexxus POSJournal 3.6 with the NCR Radiant extension.
    ConexxusNaxml,
    /// ARTS / NRF IXRetail POSLog 2.x (NCR ACS and most general-merchandise POS).
    ArtsPoslog,
    /// Oracle Xstore POSLog with `dtv:` extensions.
    XstorePoslog,
    /// Visma Retail POSLog 6.0 (ARTS POSLog v6 with `VRExt`).
    VismaPoslog,
}

impl Dialect {
    pub const ALL: [Dialect; 6] = [
        Dialect::VerifoneCommander,
        Dialect::NaxmlPassport,
        Dialect::ConexxusNaxml,
        Dialect::ArtsPoslog,
        Dialect::XstorePoslog,
        Dialect::VismaPoslog,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Dialect::VerifoneCommander => "verifone-commander",
            Dialect::NaxmlPassport => "naxml-passport",
            Dialect::ConexxusNaxml => "conexxus-naxml",
            Dialect::ArtsPoslog => "arts-poslog",
            Dialect::XstorePoslog => "xstore-poslog",
            Dialect::VismaPoslog => "visma-poslog",
        }
    }

    pub fn spec(self) -> &'static DialectSpec {
        match self {
            Dialect::VerifoneCommander => &verifone::SPEC,
            Dialect::NaxmlPassport => &naxml::SPEC,
            Dialect::ConexxusNaxml => &conexxus::SPEC,
            Dialect::ArtsPoslog => &arts::SPEC,
            Dialect::XstorePoslog => &xstore::SPEC,
            Dialect::VismaPoslog => &visma::SPEC,
        }
    }

    /// Picks the dialect from the root element. Specific dialects are tried before the general one they extend.
    pub fn detect(root: &RootInfo<'_>) -> Option<Dialect> {
        DETECTION_ORDER.iter().copied().find(|d| d.spec().detect.iter().all(|c| c.holds(root)))
    }
}

/// Specific before general: Xstore and Visma are POSLog, Conexxus/Radiant is NAXML.
const DETECTION_ORDER: [Dialect; 6] = [
    Dialect::VerifoneCommander,
    Dialect::ConexxusNaxml,
    Dialect::NaxmlPassport,
    Dialect::XstorePoslog,
    Dialect::VismaPoslog,
    Dialect::ArtsPoslog,
];

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown dialect {0:?}; expected one of: verifone-commander, naxml-passport, conexxus-naxml, arts-poslog, xstore-poslog, visma-poslog"
)]
pub struct UnknownDialectName(pub String);

impl FromStr for Dialect {
    type Err = UnknownDialectName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL.into_iter().find(|d| d.id() == s).ok_or_else(|| UnknownDialectName(s.to_owned()))
    }
}

/// What detection sees of the root element.
#[derive(Debug, Default)]
pub struct RootInfo<'a> {
    /// Local name (prefix stripped).
    pub local_name: &'a str,
    /// Namespace URIs declared on the root, default or prefixed.
    pub namespaces: Vec<&'a str>,
    /// Other attributes, local names.
    pub attributes: Vec<(&'a str, &'a str)>,
}

/// One condition on the root element; a dialect matches when all of its conditions hold.
#[derive(Debug, Clone, Copy)]
pub enum Detect {
    /// The root's local name.
    Root(&'static str),
    /// A namespace URI declared on the root starts with this.
    Namespace(&'static str),
    /// An attribute of the root starts with this value.
    Attribute(&'static str, &'static str),
    /// Any of the conditions holds.
    AnyOf(&'static [Detect]),
}

impl Detect {
    fn holds(&self, root: &RootInfo<'_>) -> bool {
        match *self {
            Detect::Root(name) => root.local_name == name,
            Detect::Namespace(prefix) => root.namespaces.iter().any(|ns| ns.starts_with(prefix)),
            Detect::Attribute(name, prefix) => root.attributes.iter().any(|(k, v)| *k == name && v.starts_with(prefix)),
            Detect::AnyOf(any) => any.iter().any(|c| c.holds(root)),
        }
    }
}

/// A field a rule fills. Header fields fill the transaction (or, in the file scope, the file's defaults), line
/// fields the current line, discount fields the current discount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    // Transaction header.
    Site,
    BusinessDate,
    /// A business date only where the record has none of its own (e.g. the day a timestamp falls on), whatever the
    /// order of the elements.
    BusinessDateFallback,
    Sequence,
    Register,
    /// A record with no ticket number (e.g. a journal entry) is keyed by the terminal's message serial number
    /// instead, under [`crate::model::KeyVariant::TerminalMessage`] so it can never collide with a ticket.
    MessageSequence,
    MessageRegister,
    Cashier,
    /// A full timestamp, or a date whose clock time comes from [`Field::StartClock`].
    StartTime,
    StartClock,
    EndTime,
    EndClock,
    /// Seconds the transaction took: its start is its end less this, where the file gives no start (Verifone).
    DurationSecs,
    /// The vendor's type value; the first one seen wins.
    TypeRaw,
    Gross,
    Net,
    Tax,
    /// A tax total only where the record has no [`Field::Tax`], whatever the order of the elements.
    TaxFallback,
    Total,
    Flag(Flag),
    // Sales line.
    LineKindRaw,
    ItemCode,
    Description,
    Department,
    Quantity,
    UnitPrice,
    /// A unit price for when the dialect derives none (`unit_price_from_amount` without a quantity).
    UnitPriceFallback,
    ExtendedAmount,
    LineTax,
    /// Whether the tax element being read is voided (its amount then does not count): set at each tax element.
    LineTaxVoid,
    LineVoid,
    LineRefund,
    /// The unit a line's quantity is measured in: a volume (gallons, litres) makes an item line a fuel line.
    LineUnitOfMeasure,
    /// A returned item written with positive amounts (ARTS `Return`): the line is a refund, and its positive
    /// quantity, amount and tax are negated so that refunds are negative in every dialect.
    LineReturn,
    /// The sign of a line's quantity written apart from it (Verifone `trlSign`, `-1` or `1`): a negative sign
    /// makes a positive quantity negative (the amount is written signed already), so the line is a return.
    LineSign,
    FuelGrade,
    FuelPosition,
    FuelVolume,
    FuelUnitPrice,
    // Discount.
    PromotionId,
    DiscountDescription,
    DiscountAmount,
    DiscountKind,
    AppliesTo,
    DiscountVoid,
    // A `TransactionLink` to another ticket: its start, reason and key. The first link whose reason is a post-void
    // names the ticket a post-void voids (each part defaulting to the post-void's own: site, day, register, and
    // without a link at all, its own number).
    LinkStart,
    LinkReason,
    LinkSite,
    LinkBusinessDate,
    LinkRegister,
    LinkSequence,
    /// A reward's category (NCR ACS `acs:RewardCategory`): only a `Monetary` one has an amount of money.
    DiscountCategory,
    /// The reward row is part of the detailed record of the transaction's rewards (NCR ACS `@acs:detailedData`).
    DiscountDetailed,
    /// The reward row is part of the summarized record (NCR ACS `@acs:summarizedActivity`). A row only summarized,
    /// of a promotion a detailed row already holds, repeats (or totals) what the detailed record counts.
    DiscountSummarized,
}

/// Boolean transaction flags a rule can set (see [`crate::model::TransactionFlags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Training,
    Suspended,
    Voided,
    Rollback,
    FuelPrepay,
    FuelCompletion,
    OutsideSale,
    Offline,
    Journal,
    /// The record voids an earlier ticket: it is a void, keyed apart from that ticket
    /// ([`crate::model::KeyVariant::PostVoid`]) since it may carry the ticket's number.
    PostVoid,
}

/// One path → field mapping.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub path: &'static str,
    pub field: Field,
    /// `Some(v)`: set the field to `v` when the element is present, instead of taking its text.
    pub constant: Option<&'static str>,
}

/// The text (or attribute value) at `path` fills `field`.
pub const fn text(path: &'static str, field: Field) -> Rule {
    Rule { path, field, constant: None }
}

/// The presence of the element at `path` sets `field` to `value`.
pub const fn mark(path: &'static str, field: Field, value: &'static str) -> Rule {
    Rule { path, field, constant: Some(value) }
}

/// A vendor type value and what it means.
#[derive(Debug, Clone, Copy)]
pub struct TypeMap {
    pub raw: &'static str,
    pub kind: TransactionType,
    pub flags: &'static [Flag],
}

pub const fn ty(raw: &'static str, kind: TransactionType, flags: &'static [Flag]) -> TypeMap {
    TypeMap { raw, kind, flags }
}

/// A vendor line type value and what it means.
#[derive(Debug, Clone, Copy)]
pub struct LineKindMap {
    pub raw: &'static str,
    /// `None`: not a sales line (tender, tax, loyalty, comment …); it stays in bronze only.
    pub kind: Option<LineKind>,
    /// The line is a voided line (e.g. Verifone `void plu`).
    pub voided: bool,
}

pub const fn line(raw: &'static str, kind: Option<LineKind>, voided: bool) -> LineKindMap {
    LineKindMap { raw, kind, voided }
}

/// How discount amounts are signed in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountSign {
    /// A reduction is written as a positive number.
    Positive,
    /// A reduction is written as a negative number; the parser negates it.
    Negative,
}

/// The description of one dialect that the parser core reads.
#[derive(Debug)]
pub struct DialectSpec {
    pub dialect: Dialect,
    /// All must hold for auto-detection (see [`Dialect::detect`]).
    pub detect: &'static [Detect],
    /// Path from the root (root excluded) to each transaction element.
    pub transaction: &'static str,
    /// Rules relative to the root: file-level defaults for header fields (site, business date).
    pub file: &'static [Rule],
    /// The transaction element's own name is its type value (NAXML `SaleEvent`, `RefundEvent` …).
    pub type_from_element_name: bool,
    /// Rules relative to the transaction element, in groups that dialects share (applied in order).
    pub header: &'static [&'static [Rule]],
    /// Whether the dedup key carries the register (the vendor numbers transactions per register).
    pub register_in_key: bool,
    /// Vendor type values; a value not listed is `other`.
    pub types: &'static [TypeMap],
    /// The type when no rule yields a type value.
    pub default_type: TransactionType,
    /// Path from the transaction to each line element (`""`: the dialect has no lines).
    pub line: &'static str,
    pub line_rules: &'static [Rule],
    pub line_kinds: &'static [LineKindMap],
    /// Path from a line element to each discount element inside it.
    pub discount: &'static str,
    /// Path from the transaction to discount elements that are not inside a line (`""`: none).
    pub transaction_discount: &'static str,
    pub discount_rules: &'static [Rule],
    pub discount_sign: DiscountSign,
    /// A line's unit price is its amount over its quantity when no rule gives one (NAXML: `ActualSalesPrice` may
    /// hold the extended amount, so it is not read for items).
    pub unit_price_from_amount: bool,
    /// Prepay and completion are told from the lines where no rule flags them (NAXML: a live prepay placeholder and
    /// no fuel is the prepay; a cancelled placeholder beside fuel sold is the completion).
    pub fuel_role_from_lines: bool,
    /// Gross, net and tax are summed from the lines where the transaction gives no total of its own (Xstore:
    /// gross the live lines' amounts, net gross less their live discounts, tax the lines' taxes).
    pub amounts_from_lines: bool,
    /// A line whose amount is negative is a return even when its quantity is written unsigned (Verifone).
    pub negative_amount_is_return: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for d in Dialect::ALL {
            assert_eq!(d.id().parse::<Dialect>().ok(), Some(d));
            assert_eq!(d.spec().dialect, d);
        }
        assert!("sapphire".parse::<Dialect>().is_err());
    }

    #[test]
    fn every_dialect_is_in_the_detection_order() {
        for d in Dialect::ALL {
            assert!(DETECTION_ORDER.contains(&d), "{d} missing");
        }
    }
}
