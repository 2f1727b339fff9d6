//! Visma Retail POSLog 6.0: ARTS POSLog v6 with the `VRExt` extension. Sources and traps: docs/formats.md.

use super::{Detect, Dialect, DialectSpec, DiscountSign, Field, Flag, Rule, arts, mark, text};
use crate::model::TransactionType as T;

pub(super) static SPEC: DialectSpec = DialectSpec {
    dialect: Dialect::VismaPoslog,
    detect: &[Detect::Root("POSLog"), Detect::Namespace("http://schemas.vismaretail.com/poslog")],
    transaction: "Transaction",
    file: &[],
    type_from_element_name: false,
    header: &[HEADER, arts::STATUS, arts::TOTALS],
    register_in_key: true,
    types: arts::TYPES,
    default_type: T::Other,
    line: arts::LINE_ITEM,
    line_rules: arts::LINE,
    line_kinds: arts::LINE_KINDS,
    discount: arts::LINE_DISCOUNTS,
    transaction_discount: "",
    discount_rules: arts::DISCOUNT,
    discount_sign: DiscountSign::Positive,
    unit_price_from_amount: false,
    fuel_role_from_lines: false,
    amounts_from_lines: false,
    negative_amount_is_return: false,
};

const HEADER: &[Rule] = &[
    text("BusinessUnit/UnitID", Field::Site),
    text("WorkstationID", Field::Register),
    text("SequenceNumber", Field::Sequence),
    text("BusinessDayDate", Field::BusinessDate),
    // Visma receipts often carry no business day: then the day the receipt began is the only date there is.
    text("BeginDateTime", Field::BusinessDateFallback),
    text("BeginDateTime", Field::StartTime),
    text("EndDateTime", Field::EndTime),
    text("OperatorID", Field::Cashier),
    mark("RetailTransaction", Field::TypeRaw, "RetailTransaction"),
    mark("ControlTransaction", Field::TypeRaw, "ControlTransaction"),
    text("@CancelFlag", Field::Flag(Flag::Voided)),
    text("@TrainingModeFlag", Field::Flag(Flag::Training)),
];
