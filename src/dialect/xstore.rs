//! Oracle Xstore POSLog: ARTS POSLog with `dtv:` extensions. Sources and traps: docs/formats.md.

use super::{Detect, Dialect, DialectSpec, DiscountSign, Field, Flag, Rule, TypeMap, arts, mark, text, ty};
use crate::model::TransactionType as T;

pub(super) static SPEC: DialectSpec = DialectSpec {
    dialect: Dialect::XstorePoslog,
    detect: &[Detect::Root("POSLog"), Detect::Namespace("http://www.datavantagecorp.com/xstore")],
    transaction: "Transaction",
    file: &[],
    type_from_element_name: false,
    header: &[HEADER, arts::STATUS, arts::TOTALS],
    register_in_key: true,
    types: TYPES,
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
    amounts_from_lines: true,
    negative_amount_is_return: false,
};

/// `dtv:TransactionType` comes first so that it, not the ARTS element kind, names the type.
const HEADER: &[Rule] = &[
    text("@TransactionType", Field::TypeRaw),
    text("RetailStoreID", Field::Site),
    text("WorkstationID", Field::Register),
    text("SequenceNumber", Field::Sequence),
    text("BusinessDayDate", Field::BusinessDate),
    text("BeginDateTime", Field::StartTime),
    text("EndDateTime", Field::EndTime),
    text("OperatorID", Field::Cashier),
    text("@CancelFlag", Field::Flag(Flag::Voided)),
    text("@TrainingModeFlag", Field::Flag(Flag::Training)),
    text("@OfflineFlag", Field::Flag(Flag::Offline)),
    // Xstore cancels a ticket left orphaned.
    mark("RetailTransaction[@TransactionStatus=CancelOrphaned]", Field::Flag(Flag::Voided), "true"),
    mark("RetailTransaction[@TransactionStatus=CANCEL_ORPHANED]", Field::Flag(Flag::Voided), "true"),
];

const TYPES: &[TypeMap] = &[
    ty("RETAIL_SALE", T::Sale, &[]),
    ty("POST_VOID", T::Void, &[Flag::PostVoid]),
    ty("NO_SALE", T::NoSale, &[]),
    ty("TRAINING", T::Other, &[Flag::Training]),
    ty("SUSPENDED", T::Other, &[Flag::Suspended]),
    ty("SESSION_CONTROL", T::Other, &[Flag::Journal]),
    ty("TENDER_CONTROL", T::Other, &[Flag::Journal]),
    ty("TILL_AUDIT", T::Other, &[Flag::Journal]),
    ty("WORKSTATION_OPEN", T::Other, &[Flag::Journal]),
    ty("WORKSTATION_CLOSE", T::Other, &[Flag::Journal]),
    ty("PAID_IN", T::Other, &[]),
    ty("PAID_OUT", T::Other, &[]),
];
