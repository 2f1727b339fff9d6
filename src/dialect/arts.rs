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
    header: &[HEADER, STATUS, TOTALS],
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
    unit_price_from_amount: false,
    fuel_role_from_lines: false,
    amounts_from_lines: false,
    negative_amount_is_return: false,
};

pub(super) const LINE_ITEM: &str = "RetailTransaction/LineItem";
/// Price modifiers and rewards of a line; a `LineItem` holding only a `Discount` is a discount of the whole
/// transaction.
pub(super) const LINE_DISCOUNTS: &str = "Sale|Return|FuelSale/RetailPriceModifier, LoyaltyReward, Discount";

const HEADER: &[Rule] = &[
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
    text("@OutsideSalesFlag, RetailTransaction/@OutsideSalesFlag", Field::Flag(Flag::OutsideSale)),
];

/// A path under each place a transaction links another ticket: the transaction, a post-void record, a line.
macro_rules! links {
    ($child:literal) => {
        concat!(
            "RetailTransaction|PostVoidTransaction/TransactionLink",
            $child,
            ", RetailTransaction/LineItem/TransactionLink",
            $child
        )
    };
}

/// `RetailTransaction@TransactionStatus` (default `Finished`): a parked, cancelled or voided ticket is not a sale
/// (predicates ignore case and a prefix on the value: `dtv:CancelOrphaned`); the record that voids an earlier ticket
/// links to it. Shared with Xstore and Visma.
pub(super) const STATUS: &[Rule] = &[
    mark("RetailTransaction[@TransactionStatus=Suspended]", Field::Flag(Flag::Suspended), "true"),
    mark("RetailTransaction[@TransactionStatus=Canceled]", Field::Flag(Flag::Voided), "true"),
    mark("RetailTransaction[@TransactionStatus=Cancelled]", Field::Flag(Flag::Voided), "true"),
    mark("RetailTransaction[@TransactionStatus=PostVoided]", Field::Flag(Flag::Voided), "true"),
    mark("RetailTransaction[@TransactionStatus=Voided]", Field::Flag(Flag::Voided), "true"),
    mark("RetailTransaction[@TransactionStatus=TransactionVoided]", Field::Flag(Flag::Voided), "true"),
    mark("RetailTransaction[@TransactionStatus=SuspendedDeleted]", Field::Flag(Flag::Voided), "true"),
    mark(
        "RetailTransaction|PostVoidTransaction/TransactionLink[@ReasonCode=PostVoid], \
         RetailTransaction/LineItem/TransactionLink[@ReasonCode=PostVoid]",
        Field::Flag(Flag::PostVoid),
        "true",
    ),
    // Each link's reason and key: only the first whose reason is the post-void names the voided ticket (a record
    // may also link a return's original). The store as ARTS 2 (`RetailStoreID`) or v6 and Visma write it.
    mark(links!(""), Field::LinkStart, "true"),
    text(links!("/@ReasonCode"), Field::LinkReason),
    text(links!("/SequenceNumber"), Field::LinkSequence),
    text(links!("/WorkstationID"), Field::LinkRegister),
    text(links!("/RetailStoreID"), Field::LinkSite),
    text(links!("/BusinessUnit/UnitID"), Field::LinkSite),
    text(links!("/BusinessDayDate"), Field::LinkBusinessDate),
];

/// The transaction's totals by `TotalType`. Shared with Xstore and Visma.
pub(super) const TOTALS: &[Rule] = &[
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
    // ARTS writes a return's quantity and amounts positive; the parser makes them negative.
    mark("Return", Field::LineReturn, "true"),
    // v6 fuel (`FuelSale@TypeCode` Prepay / Sale / PrepayRefund): the prepay is a placeholder of fuel not yet sold.
    mark("FuelSale[@TypeCode=Prepay]", Field::LineKindRaw, "FuelSale Prepay"),
    mark("FuelSale[@TypeCode=PrepayRefund]", Field::LineKindRaw, "FuelSale PrepayRefund"),
    mark("FuelSale", Field::LineKindRaw, "FuelSale"),
    mark("Tender", Field::LineKindRaw, "Tender"),
    mark("Tax", Field::LineKindRaw, "Tax"),
    mark("LoyaltyReward", Field::LineKindRaw, "LoyaltyReward"),
    text("@VoidFlag", Field::LineVoid),
    text("@CancelFlag", Field::LineVoid),
    text("Sale|Return|FuelSale/ItemID", Field::ItemCode),
    text("Sale|Return/POSIdentity/POSItemID", Field::ItemCode),
    text("Sale|Return|FuelSale/Description", Field::Description),
    text("Sale|Return/MerchandiseHierarchy", Field::Department),
    text("Sale|Return|FuelSale/Quantity", Field::Quantity),
    text("Sale|Return/Quantity/@UnitOfMeasureCode", Field::LineUnitOfMeasure),
    text("Sale|Return|FuelSale/ActualSalesUnitPrice", Field::UnitPrice),
    text("Sale|Return|FuelSale/RegularSalesUnitPrice", Field::UnitPrice),
    text("Sale|Return|FuelSale/ExtendedAmount", Field::ExtendedAmount),
    // Each tax element's void flag (Xstore `dtv:VoidFlag`) is read before its amount: a voided tax does not count.
    mark("Sale|Return|FuelSale/Tax", Field::LineTaxVoid, "false"),
    mark("Sale|Return|FuelSale/Tax[@VoidFlag=true]", Field::LineTaxVoid, "true"),
    text("Sale|Return|FuelSale/Tax/Amount", Field::LineTax),
    text("FuelSale/FuelGradeID", Field::FuelGrade),
    text("FuelSale/FuelingPointID", Field::FuelPosition),
    text("FuelSale/Quantity", Field::FuelVolume),
    text("FuelSale/ActualSalesUnitPrice", Field::FuelUnitPrice),
];

pub(super) const LINE_KINDS: &[LineKindMap] = &[
    line("Sale", Some(LineKind::Item), false),
    line("Return", Some(LineKind::Item), false),
    line("FuelSale", Some(LineKind::Fuel), false),
    line("FuelSale Prepay", Some(LineKind::FuelPrepay), false),
    // The deposit given back: not fuel sold.
    line("FuelSale PrepayRefund", Some(LineKind::FuelPrepay), false),
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
    text("DiscountAmount", Field::DiscountAmount),
    text("ExtendedRewardAmount", Field::DiscountAmount),
    text("Description", Field::DiscountDescription),
    text("OperatorSequenceReference", Field::AppliesTo),
    text("RewardCategory", Field::DiscountCategory),
    text("@detailedData", Field::DiscountDetailed),
    text("@summarizedActivity", Field::DiscountSummarized),
];
