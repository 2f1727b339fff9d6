//! NAXML / Conexxus POSJournal 3.6 as NCR Radiant exports it: the NAXML vocabulary as default namespace, a
//! `radiant:` extension, dates written `2021-05-28T` and business dates with an offset. Sources: docs/formats.md.

use super::{Detect, Dialect, DialectSpec, DiscountSign, Field, Rule, naxml, text};
use crate::model::TransactionType as T;

pub(super) static SPEC: DialectSpec = DialectSpec {
    dialect: Dialect::ConexxusNaxml,
    detect: &[
        Detect::Root("NAXML-POSJournal"),
        Detect::AnyOf(&[
            Detect::Namespace("http://www.radiantsystems.com/NAXML-Extension"),
            Detect::Attribute("version", "3.6"),
        ]),
    ],
    transaction: naxml::EVENTS,
    file: &[text("TransmissionHeader/StoreLocationID", Field::Site)],
    type_from_element_name: true,
    header: &[naxml::EVENT, TAX, naxml::AMOUNTS],
    register_in_key: true,
    types: naxml::TYPES,
    default_type: T::Other,
    line: naxml::LINES,
    line_rules: naxml::LINE,
    line_kinds: naxml::LINE_KINDS,
    discount: naxml::DISCOUNTS,
    transaction_discount: "",
    discount_rules: naxml::DISCOUNT,
    discount_sign: DiscountSign::Positive,
    unit_price_from_amount: true,
    fuel_role_from_lines: true,
    amounts_from_lines: false,
    negative_amount_is_return: false,
};

/// The tax total is `TransactionTotalTaxSalesAmount`, else `…TaxNetAmount` (the reverse of Passport's), whatever
/// their order in the file.
const TAX: &[Rule] = &[
    text("TransactionSummary/TransactionTotalTaxSalesAmount", Field::Tax),
    text("TransactionSummary/TransactionTotalTaxNetAmount", Field::TaxFallback),
];
