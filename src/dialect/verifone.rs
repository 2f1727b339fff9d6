//! Verifone Commander / Sapphire transaction log (`transSet`, `urn:vfi-sapphire:tlog.2003-06-27`). Sources and
//! traps: docs/formats.md.

use super::{
    Detect, Dialect, DialectSpec, DiscountSign, Field, Flag, LineKindMap, Rule, TypeMap, line, mark, text, ty,
};
use crate::model::{LineKind, TransactionType as T};

pub(super) static SPEC: DialectSpec = DialectSpec {
    dialect: Dialect::VerifoneCommander,
    detect: &[Detect::Root("transSet")],
    transaction: "trans",
    // No business date per ticket: the file is one period, opened at `openedTime` (never trHeader/date, which
    // crosses midnight).
    file: &[text("@site", Field::Site), text("openedTime", Field::BusinessDate)],
    type_from_element_name: false,
    header: &[HEADER],
    // trSeq is the register's own ticket number; the register is trTickNum/posNum (the flat posNum is always 0).
    register_in_key: true,
    types: TYPES,
    default_type: T::Sale,
    line: "trLines/trLine",
    line_rules: LINE,
    line_kinds: LINE_KINDS,
    discount: "trlMixMatches/trlMatchLine",
    // A loyalty program's automatic discount, on the ticket rather than a line.
    transaction_discount: "trLoyaltyProgram",
    discount_rules: DISCOUNT,
    discount_sign: DiscountSign::Positive,
    unit_price_from_amount: false,
    fuel_role_from_lines: false,
    amounts_from_lines: false,
    negative_amount_is_return: true,
};

const HEADER: &[Rule] = &[
    text("trHeader/storeNumber", Field::Site),
    text("trHeader/trTickNum/trSeq", Field::Sequence),
    text("trHeader/trTickNum/posNum", Field::Register),
    // Journal records carry no ticket number.
    text("trHeader/termMsgSN", Field::MessageSequence),
    text("trHeader/termMsgSN/@term", Field::MessageRegister),
    text("trHeader/date", Field::EndTime),
    text("trHeader/duration", Field::DurationSecs),
    text("trHeader/cashier/@sysid", Field::Cashier),
    text("@type", Field::TypeRaw),
    text("@rollback", Field::Flag(Flag::Rollback)),
    text("@suspended", Field::Flag(Flag::Suspended)),
    text("@fuelPrepay", Field::Flag(Flag::FuelPrepay)),
    text("@fuelPrepayCompletion", Field::Flag(Flag::FuelCompletion)),
    text("trValue/trTotNoTax", Field::Net),
    text("trValue/trTotTax", Field::Tax),
    text("trValue/trTotWTax", Field::Total),
];

const TYPES: &[TypeMap] = &[
    ty("sale", T::Sale, &[]),
    ty("network sale", T::Sale, &[]),
    ty("refund sale", T::Refund, &[]),
    ty("refund network sale", T::Refund, &[]),
    ty("void", T::Void, &[]),
    ty("no sale", T::NoSale, &[]),
    ty("nosale", T::NoSale, &[]),
    ty("journal", T::Other, &[Flag::Journal]),
    ty("payin", T::Other, &[]),
    ty("payout", T::Other, &[]),
    ty("safedrop", T::Other, &[]),
];

const LINE: &[Rule] = &[
    text("@type", Field::LineKindRaw),
    text("trlUPC", Field::ItemCode),
    text("trlDesc", Field::Description),
    text("trlDept/@number", Field::Department),
    text("trlQty", Field::Quantity),
    text("trlSign", Field::LineSign),
    text("trlUnitPrice", Field::UnitPrice),
    text("trlLineTot", Field::ExtendedAmount),
    mark("trlFlags/trlRefund", Field::LineRefund, "true"),
    text("trlFuel/fuelProd/@NAXMLFuelGradeID", Field::FuelGrade),
    text("trlFuel/fuelProd/@sysid", Field::FuelGrade),
    text("trlFuel/fuelPosition/@sysid", Field::FuelPosition),
    text("trlFuel/fuelVolume", Field::FuelVolume),
    text("trlFuel/fuelPrc", Field::FuelUnitPrice),
];

const LINE_KINDS: &[LineKindMap] = &[
    line("plu", Some(LineKind::Item), false),
    line("dept", Some(LineKind::Department), false),
    line("postFuel", Some(LineKind::Fuel), false),
    line("fuel", Some(LineKind::Fuel), false),
    line("preFuel", Some(LineKind::FuelPrepay), false),
    line("void plu", Some(LineKind::Item), true),
    line("void dept", Some(LineKind::Department), true),
    line("void postFuel", Some(LineKind::Fuel), true),
    line("void fuel", Some(LineKind::Fuel), true),
    line("void preFuel", Some(LineKind::FuelPrepay), true),
];

const DISCOUNT: &[Rule] = &[
    // Every discount starts as a mix-and-match; the loyalty program's amount, read later, makes it a loyalty one.
    mark(".", Field::DiscountKind, "mix_match"),
    mark("trloAutoDisc", Field::DiscountKind, "loyalty"),
    text("@programID", Field::PromotionId),
    text("trloAutoDisc", Field::DiscountAmount),
    text("trlPromotionID", Field::PromotionId),
    text("trlMatchNumber", Field::PromotionId),
    text("trlMatchName", Field::DiscountDescription),
    text("trlPromoAmount", Field::DiscountAmount),
];
