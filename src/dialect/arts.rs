//! ARTS / NRF IXRetail POSLog 2.x (NCR ACS and most general-merchandise POS). Xstore and Visma reuse these
//! rules and add their own. Sources and traps: docs/formats.md.

use super::{
    Detect, Dialect, DialectSpec, DiscountSign, Field, Flag, LineKindMap, Rule, TypeMap, line, mark, text, ty,
};
use crate::model::{LineKind, TransactionType as T};

pub(super) static SPEC: DialectSpec = DialectSpec {
    dialect: Dialect::ArtsPoslog,
    detect: &[Detect::Root("POSLog")],
    transaction: "Transaction",
    file: &[],
    type_from_element_name: false,
    header: HEADER,
    // The ARTS data model keys a transaction by store + workstation + business day + sequence: the sequence
    // restarts per workstation (the NCR sample collides five times without the workstation).
    register_in_key: true,
    types: TYPES,
    default_type: T::Other,
    line: LINE_ITEM,
    line_rules: LINE,
    line_kinds: LINE_KINDS,
    discount: LINE_DISCOUNTS,
    transaction_discount: "",
    discount_rules: DISCOUNT,
    discount_sign: DiscountSign::Positive,
};

pub(super) const LINE_ITEM: &str = "RetailTransaction/LineItem";
pub(super) const LINE_DISCOUNTS: &str = "Sale|Return/RetailPriceModifier, LoyaltyReward";

pub(super) const HEADER: &[Rule] = &[
    text("RetailStoreID", Field::Site),
    text("BusinessUnit/UnitID", Field::Site),
    text("WorkstationID", Field::Register),
    text("SequenceNumber", Field::Sequence),
    text("BusinessDayDate", Field::BusinessDate),
    text("BeginDateTime", Field::StartTime),
    text("EndDateTime", Field::EndTime),
    text("OperatorID", Field::Cashier),
    mark("RetailTransaction", Field::TypeRaw, "RetailTransaction"),
    mark("ControlTransaction", Field::TypeRaw, "ControlTransaction"),
    mark("TenderControlTransaction", Field::TypeRaw, "TenderControlTransaction"),
    text("@CancelFlag", Field::Flag(Flag::Voided)),
    text("@TrainingModeFlag", Field::Flag(Flag::Training)),
    text("@OfflineFlag", Field::Flag(Flag::Offline)),
    text("RetailTransaction/Total[@TotalType=TransactionGrossAmount]", Field::Gross),
    text("RetailTransaction/Total[@TotalType=TransactionNetAmount]", Field::Net),
    text("RetailTransaction/Total[@TotalType=TransactionTaxAmount]", Field::Tax),
    text("RetailTransaction/Total[@TotalType=TransactionGrandAmount]", Field::Total),
];

pub(super) const TYPES: &[TypeMap] = &[
    ty("RetailTransaction", T::Sale, &[]),
    ty("ControlTransaction", T::Other, &[Flag::Journal]),
    ty("TenderControlTransaction", T::Other, &[Flag::Journal]),
];

pub(super) const LINE: &[Rule] = &[
    mark("Sale", Field::LineKindRaw, "Sale"),
    mark("Return", Field::LineKindRaw, "Return"),
    mark("Return", Field::LineRefund, "true"),
    mark("Tender", Field::LineKindRaw, "Tender"),
    mark("Tax", Field::LineKindRaw, "Tax"),
    mark("LoyaltyReward", Field::LineKindRaw, "LoyaltyReward"),
    text("@VoidFlag", Field::LineVoid),
    text("@CancelFlag", Field::LineVoid),
    text("Sale|Return/ItemID", Field::ItemCode),
    text("Sale|Return/POSIdentity/POSItemID", Field::ItemCode),
    text("Sale|Return/Description", Field::Description),
    text("Sale|Return/MerchandiseHierarchy", Field::Department),
    text("Sale|Return/Quantity", Field::Quantity),
    text("Sale|Return/ActualSalesUnitPrice", Field::UnitPrice),
    text("Sale|Return/RegularSalesUnitPrice", Field::UnitPrice),
    text("Sale|Return/ExtendedAmount", Field::ExtendedAmount),
    text("Sale|Return/Tax/Amount", Field::LineTax),
];

pub(super) const LINE_KINDS: &[LineKindMap] = &[
    line("Sale", Some(LineKind::Item), false),
    line("Return", Some(LineKind::Item), false),
    line("Tender", None, false),
    line("Tax", None, false),
    line("LoyaltyReward", None, false),
];

pub(super) const DISCOUNT: &[Rule] = &[
    text("@VoidFlag", Field::DiscountVoid),
    text("PromotionID", Field::PromotionId),
    text("ReasonCode", Field::DiscountKind),
    text("RewardType", Field::DiscountKind),
    text("Amount", Field::DiscountAmount),
    text("ExtendedRewardAmount", Field::DiscountAmount),
    text("Description", Field::DiscountDescription),
    text("OperatorSequenceReference", Field::AppliesTo),
];
