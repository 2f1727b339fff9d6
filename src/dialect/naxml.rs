//! NAXML POSJournal as Gilbarco Passport exports it (one event per PJR file). Sources and traps:
//! docs/formats.md.

use super::{
    Detect, Dialect, DialectSpec, DiscountSign, Field, Flag, LineKindMap, Rule, TypeMap, line, mark, text, ty,
};
use crate::model::{LineKind, TransactionType as T};

pub(super) static SPEC: DialectSpec = DialectSpec {
    dialect: Dialect::NaxmlPassport,
    detect: &[Detect::Root("NAXML-POSJournal")],
    transaction: EVENTS,
    file: &[text("TransmissionHeader/StoreLocationID", Field::Site)],
    type_from_element_name: true,
    header: &[EVENT, TAX, AMOUNTS],
    // TransactionID is not documented as unique across registers; back offices check it per RegisterID.
    register_in_key: true,
    types: TYPES,
    default_type: T::Other,
    line: LINES,
    line_rules: LINE,
    line_kinds: LINE_KINDS,
    discount: DISCOUNTS,
    transaction_discount: "",
    discount_rules: DISCOUNT,
    discount_sign: DiscountSign::Positive,
    unit_price_from_amount: true,
    fuel_role_from_lines: true,
    amounts_from_lines: false,
    negative_amount_is_return: false,
};

/// Shared with the Conexxus dialect, which is NAXML with other namespaces and date shapes.
pub(super) const EVENTS: &str = "JournalReport/SaleEvent|RefundEvent|VoidEvent|OtherEvent|FinancialEvent";

pub(super) const LINES: &str = "TransactionDetailGroup/TransactionLine";
pub(super) const DISCOUNTS: &str = "ItemLine|FuelLine|MerchandiseCodeLine/Promotion|Discount";

/// An event's key, times and flags. Shared with Conexxus.
pub(super) const EVENT: &[Rule] = &[
    text("TransactionID", Field::Sequence),
    text("RegisterID", Field::Register),
    text("BusinessDate", Field::BusinessDate),
    text("CashierID", Field::Cashier),
    text("EventStartDate", Field::StartTime),
    text("EventStartTime", Field::StartClock),
    text("EventEndDate", Field::EndTime),
    text("EventEndTime", Field::EndClock),
    text("TrainingModeFlag/@value", Field::Flag(Flag::Training)),
    text("SuspendFlag/@value", Field::Flag(Flag::Suspended)),
    text("OutsideSalesFlag/@value", Field::Flag(Flag::OutsideSale)),
    text("OfflineFlag/@value", Field::Flag(Flag::Offline)),
];

/// Passport's tax total: `TransactionTotalTaxNetAmount`, else `…TaxSalesAmount`, whatever their order in the file.
const TAX: &[Rule] = &[
    text("TransactionSummary/TransactionTotalTaxNetAmount", Field::Tax),
    text("TransactionSummary/TransactionTotalTaxSalesAmount", Field::TaxFallback),
];

/// The other totals. Shared with Conexxus.
pub(super) const AMOUNTS: &[Rule] = &[
    text("TransactionSummary/TransactionTotalGrossAmount", Field::Gross),
    text("TransactionSummary/TransactionTotalNetAmount", Field::Net),
    text("TransactionSummary/TransactionTotalGrandAmount", Field::Total),
];

pub(super) const TYPES: &[TypeMap] = &[
    ty("SaleEvent", T::Sale, &[]),
    ty("RefundEvent", T::Refund, &[]),
    ty("VoidEvent", T::Void, &[]),
    ty("OtherEvent", T::Other, &[Flag::Journal]),
    ty("FinancialEvent", T::Other, &[Flag::Journal]),
];

pub(super) const LINE: &[Rule] = &[
    mark("ItemLine", Field::LineKindRaw, "ItemLine"),
    mark("MerchandiseCodeLine", Field::LineKindRaw, "MerchandiseCodeLine"),
    mark("FuelLine", Field::LineKindRaw, "FuelLine"),
    mark("FuelPrepayLine", Field::LineKindRaw, "FuelPrepayLine"),
    mark("TenderInfo", Field::LineKindRaw, "TenderInfo"),
    mark("TransactionTax", Field::LineKindRaw, "TransactionTax"),
    mark("[@status=cancel]", Field::LineVoid, "true"),
    text("ItemLine/ItemCode/POSCode", Field::ItemCode),
    text("ItemLine|MerchandiseCodeLine|FuelLine|FuelPrepayLine/Description", Field::Description),
    text("ItemLine|MerchandiseCodeLine|FuelLine|FuelPrepayLine/MerchandiseCode", Field::Department),
    text("ItemLine|MerchandiseCodeLine|FuelLine/SalesQuantity", Field::Quantity),
    // An item's `ActualSalesPrice` can be the extended amount on multi-quantity deals: its unit price is its
    // amount over its quantity (`unit_price_from_amount`). Fuel's is the price per unit.
    text("FuelLine/ActualSalesPrice", Field::UnitPrice),
    text("ItemLine|MerchandiseCodeLine/ActualSalesPrice", Field::UnitPriceFallback),
    text("ItemLine|MerchandiseCodeLine|FuelLine|FuelPrepayLine/SalesAmount", Field::ExtendedAmount),
    text("FuelLine/FuelGradeID", Field::FuelGrade),
    text("FuelLine/FuelPositionID", Field::FuelPosition),
    text("FuelLine/SalesQuantity", Field::FuelVolume),
    text("FuelLine/ActualSalesPrice", Field::FuelUnitPrice),
];

pub(super) const LINE_KINDS: &[LineKindMap] = &[
    line("ItemLine", Some(LineKind::Item), false),
    line("MerchandiseCodeLine", Some(LineKind::Department), false),
    line("FuelLine", Some(LineKind::Fuel), false),
    line("FuelPrepayLine", Some(LineKind::FuelPrepay), false),
    line("TenderInfo", None, false),
    line("TransactionTax", None, false),
];

pub(super) const DISCOUNT: &[Rule] = &[
    text("PromotionID", Field::PromotionId),
    text("PromotionReason", Field::DiscountKind),
    text("PromotionAmount", Field::DiscountAmount),
    text("DiscountReason", Field::DiscountKind),
    text("DiscountAmount", Field::DiscountAmount),
    mark(".", Field::DiscountKind, "promotion"),
];
