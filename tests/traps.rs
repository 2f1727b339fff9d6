//! The traps of `../shared/formats.md`, each in a small file written here, parsed to what it means: records that are
//! not sales are flagged (not dropped), records that share a key by the vendor's design are keyed apart, amounts
//! and dates come from the field the dialect documents whatever the element order. The last tests ingest such
//! records across runs: a post-void and a fuel completion that carry an earlier ticket's number both land.

mod common;

use std::sync::Arc;

use common::pipeline;
use poslake::ingest::{IngestPaths, IngestSetup, ingest};
use poslake::model::{KeyVariant, LineKind, Transaction, TransactionType};
use poslake::{ParseOptions, parse_file};
use poslake_actors::Progress;
use rust_decimal::Decimal;

fn parse(xml: &str) -> Vec<Transaction> {
    parse_file("trap.xml", xml.as_bytes(), &ParseOptions::default()).unwrap_or_else(|e| panic!("{e}")).transactions
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// One ARTS POSLog 2.x transaction of store S1, workstation 1, day 2024-04-01.
fn arts(seq: u32, retail_attrs: &str, body: &str) -> String {
    format!(
        r#"<Transaction><RetailStoreID>S1</RetailStoreID><WorkstationID>1</WorkstationID><SequenceNumber>{seq}</SequenceNumber><BusinessDayDate>2024-04-01</BusinessDayDate><RetailTransaction{retail_attrs}>{body}</RetailTransaction></Transaction>"#
    )
}

fn poslog(ns: &str, transactions: &[String]) -> String {
    format!(r#"<?xml version="1.0"?><POSLog {ns}>{}</POSLog>"#, transactions.concat())
}

const ARTS_NS: &str = r#"xmlns="http://www.nrf-arts.org/IXRetail/namespace/""#;
const XSTORE_NS: &str =
    r#"xmlns="http://www.nrf-arts.org/IXRetail/namespace/" xmlns:dtv="http://www.datavantagecorp.com/xstore/""#;
const SALE: &str =
    "<LineItem><Sale><ItemID>A</ItemID><Quantity>1</Quantity><ExtendedAmount>9.00</ExtendedAmount></Sale></LineItem>";

#[test]
fn arts_statuses_flag_what_is_not_a_finished_sale() {
    let txs = parse(&poslog(
        ARTS_NS,
        &[
            arts(1, r#" TransactionStatus="Finished""#, SALE),
            arts(2, r#" TransactionStatus="Suspended""#, SALE),
            arts(3, r#" TransactionStatus="canceled""#, SALE),
            arts(4, r#" TransactionStatus="PostVoided""#, SALE),
            arts(5, r#" TransactionStatus="Voided""#, SALE),
            // A post-void that carries its original's number, and one with a number of its own.
            arts(
                1,
                "",
                r#"<TransactionLink ReasonCode="PostVoid"><SequenceNumber>1</SequenceNumber></TransactionLink>"#,
            ),
            arts(6, r#" TransactionStatus="Finished""#, SALE),
            arts(
                7,
                "",
                r#"<TransactionLink ReasonCode="PostVoid"><SequenceNumber>6</SequenceNumber></TransactionLink>"#,
            ),
            // A refund's link to its original is not a post-void.
            arts(8, "", r#"<TransactionLink ReasonCode="Return"><SequenceNumber>6</SequenceNumber></TransactionLink>"#),
            arts(9, r#" TransactionStatus="Finished""#, SALE),
        ],
    ));
    let h: Vec<_> = txs.iter().map(|t| &t.header).collect();
    assert!(h[1].flags.suspended && h[1].flags.excluded_from_sales());
    for voided in [2, 3, 4] {
        assert_eq!(h[voided].transaction_type, TransactionType::Void, "record {voided}");
    }
    // The post-void carries its original's number: it is keyed apart, so both are kept, and both are left out.
    assert_eq!(h[5].transaction_type, TransactionType::Void);
    assert_eq!((h[5].key.variant, h[0].key.variant), (KeyVariant::PostVoid, KeyVariant::Primary));
    assert_eq!(h[5].key.sequence, h[0].key.sequence);
    assert!(h[0].flags.excluded_from_sales() && h[5].flags.excluded_from_sales());
    // A post-void of its own number flags the ticket it names, earlier in the file.
    assert!(h[6].flags.voided && h[7].key.variant == KeyVariant::PostVoid);
    let voided = |i: usize| h[i].voids.as_ref().map(|v| v.sequence.as_str());
    assert_eq!((voided(5), voided(7)), (Some("1"), Some("6")));
    assert!(h[8].key.variant == KeyVariant::Primary && !h[8].flags.voided);
    assert_eq!(h[9].transaction_type, TransactionType::Sale);
    assert!(!h[9].flags.excluded_from_sales());
}

/// NCR ACS writes each reward in a detailed and a summarized record of the transaction's rewards, and lists
/// rewards that are not money (custom offers, receipt messages) with numbers of their own: the sales discounts hold
/// each monetary reward once.
#[test]
fn ncr_rewards_count_money_once() {
    let ns = r#"xmlns="http://www.nrf-arts.org/IXRetail/namespace/" xmlns:acs="http://www.ncr.com/rsd/acs/tlog/markup/poslog/2.1""#;
    let reward = |attrs: &str, promo: u32, category: &str, amount: &str| {
        format!(
            r#"<LineItem><LoyaltyReward {attrs}><PromotionID>{promo}</PromotionID><acs:RewardCategory>{category}</acs:RewardCategory><acs:RewardType>T</acs:RewardType><acs:ExtendedRewardAmount>{amount}</acs:ExtendedRewardAmount></LoyaltyReward></LineItem>"#
        )
    };
    let (both, detailed, summarized) = (
        r#"acs:detailedData="true" acs:summarizedActivity="true""#,
        r#"acs:detailedData="true""#,
        r#"acs:summarizedActivity="true""#,
    );
    let body = [
        SALE.to_owned(),
        reward(both, 1027, "CustomOffer", "1"),
        reward(detailed, 5123, "Monetary", "-0.19"),
        reward(both, 5177, "Other", "0"),
        reward(summarized, 5123, "Monetary", "-0.19"),
        // Only summarized, with no detailed row of its own: it is the one record of that reward.
        reward(summarized, 6000, "Monetary", "-0.50"),
    ]
    .concat();
    let txs = parse(&poslog(ns, &[arts(1, "", &body)]));
    let d = &txs[0].discounts;
    let money: Vec<(Option<&str>, Option<Decimal>)> =
        d.iter().filter(|d| d.amount.is_some()).map(|d| (d.promotion_id.as_deref(), d.amount)).collect();
    // NCR writes money off negative; a discount is a positive reduction in every dialect (since session 36).
    assert_eq!(money, [(Some("5123"), Some(dec("0.19"))), (Some("6000"), Some(dec("0.50")))]);
    assert_eq!(d.len(), 4, "the non-monetary rewards stay, without an amount; the copy is left to bronze");
    let bronze_rewards = txs[0].bronze.iter().filter(|(k, _)| k.ends_with("LoyaltyReward/PromotionID")).count();
    assert_eq!(bronze_rewards, 5, "bronze keeps every reward row");

    // A summarized row totalling two detailed ones is not money again; a prefixed category is read; a flag that is
    // not one costs nothing; and the same attributes on an ordinary price modifier change nothing.
    let rpm = |attrs: &str| {
        format!(
            r#"<LineItem><Sale><ItemID>B</ItemID><Quantity>1</Quantity><ExtendedAmount>5.00</ExtendedAmount><RetailPriceModifier {attrs}><PromotionID>9</PromotionID><Amount>1.00</Amount></RetailPriceModifier></Sale></LineItem>"#
        )
    };
    let body = [
        SALE.to_owned(),
        reward(detailed, 5123, "acs:Monetary", "-0.19"),
        reward(detailed, 5123, "Monetary", "-0.19"),
        reward(summarized, 5123, "Monetary", "-0.38"),
        reward(r#"acs:detailedData="maybe""#, 7000, "Monetary", "-0.05"),
        rpm(detailed),
        rpm(summarized),
    ]
    .concat();
    // (promotion, amount) of each discount row the transaction keeps.
    let kept = |tx: &Transaction| -> Vec<(Option<String>, Option<Decimal>)> {
        tx.discounts.iter().map(|d| (d.promotion_id.clone(), d.amount)).collect()
    };
    let row = |promo: &str, amount: &str| (Some(promo.to_owned()), Some(dec(amount)));
    let txs = parse(&poslog(ns, &[arts(2, "", &body)]));
    let want = [row("5123", "0.19"), row("5123", "0.19"), row("7000", "0.05"), row("9", "1.00"), row("9", "1.00")];
    assert_eq!(kept(&txs[0]), want);

    // The summarized record written before the detailed one: its rows are copies all the same, and a summarized
    // row whose promotion has no detailed row stays the one record of its reward.
    let body = [
        SALE.to_owned(),
        reward(summarized, 5123, "Monetary", "-0.38"),
        reward(summarized, 6000, "Monetary", "-0.50"),
        reward(detailed, 5123, "Monetary", "-0.19"),
        reward(detailed, 5123, "Monetary", "-0.19"),
    ]
    .concat();
    let txs = parse(&poslog(ns, &[arts(3, "", &body)]));
    assert_eq!(kept(&txs[0]), [row("6000", "0.50"), row("5123", "0.19"), row("5123", "0.19")]);
    let bronze_rewards = txs[0].bronze.iter().filter(|(k, _)| k.ends_with("LoyaltyReward/PromotionID")).count();
    assert_eq!(bronze_rewards, 4, "bronze keeps the copies");
}

/// A post-void may link other tickets too (a return's original): only the link whose reason is the post-void names
/// the voided ticket, on the workstation (and store, and day) the link gives.
#[test]
fn a_post_void_voids_the_ticket_its_post_void_link_names() {
    let link = |reason: &str, ws: &str, seq: u32| {
        format!(
            r#"<TransactionLink ReasonCode="{reason}"><RetailStoreID>S1</RetailStoreID><WorkstationID>{ws}</WorkstationID><SequenceNumber>{seq}</SequenceNumber></TransactionLink>"#
        )
    };
    let on = |ws: &str, t: String| {
        t.replacen("<WorkstationID>1</WorkstationID>", &format!("<WorkstationID>{ws}</WorkstationID>"), 1)
    };
    let txs = parse(&poslog(
        ARTS_NS,
        &[
            arts(5, "", SALE),
            arts(7, "", SALE),
            on("2", arts(9, "", SALE)),
            arts(9, "", SALE),
            // A return link first, then the post-void's own.
            arts(20, "", &(link("Return", "1", 5) + &link("PostVoid", "1", 7))),
            // Rung on workstation 1, voiding ticket 9 of workstation 2.
            arts(21, "", &link("PostVoid", "2", 9)),
        ],
    ));
    let h: Vec<_> = txs.iter().map(|t| &t.header).collect();
    assert!(!h[0].flags.voided, "ticket 5 is only a return's original");
    assert!(h[1].flags.voided && h[1].flags.excluded_from_sales(), "ticket 7 is post-voided");
    assert!(h[2].flags.voided, "workstation 2's ticket 9 is the one voided");
    assert!(!h[3].flags.voided, "workstation 1's ticket 9 is not");
    let v = h[5].voids.as_ref().expect("a post-void voids a ticket");
    assert_eq!((v.register.as_deref(), v.sequence.as_str()), (Some("2"), "9"));
    assert_eq!(h[4].voids.as_ref().map(|v| v.sequence.as_str()), Some("7"));

    // The store as `BusinessUnit/UnitID` (ARTS v6, Visma), and a link's day written otherwise than the record's: a
    // return link's odd date costs nothing, and a post-void link's `Z`-suffixed day is still that day.
    let other_store = r#"<TransactionLink ReasonCode="Return"><BusinessDayDate>02/04/2024</BusinessDayDate><SequenceNumber>5</SequenceNumber></TransactionLink><TransactionLink ReasonCode="PostVoid"><BusinessUnit><UnitID>S2</UnitID></BusinessUnit><WorkstationID>1</WorkstationID><SequenceNumber>5</SequenceNumber><BusinessDayDate>2024-03-31Z</BusinessDayDate></TransactionLink>"#;
    let txs = parse(&poslog(ARTS_NS, &[arts(5, "", SALE), arts(22, "", other_store)]));
    let v = txs[1].header.voids.as_ref().expect("voids");
    assert_eq!((v.site.as_str(), v.business_date.to_string(), v.sequence.as_str()), ("S2", "2024-03-31".into(), "5"));
    assert!(!txs[0].header.flags.voided, "store S1's ticket 5 is not the one voided");
}

#[test]
fn arts_returns_are_negative_and_a_v6_sale_of_negative_quantity_is_a_refund() {
    let ret = "<LineItem><Return><ItemID>A</ItemID><Quantity>1</Quantity><ExtendedAmount>18.00</ExtendedAmount>\
               <RetailPriceModifier><Amount>2.00</Amount></RetailPriceModifier>\
               <Tax><Amount>1.44</Amount></Tax></Return></LineItem>";
    let v6 = "<LineItem><Sale><ItemID>A</ItemID><Quantity>-1</Quantity><ExtendedAmount>-5.00</ExtendedAmount></Sale>\
              </LineItem>";
    let txs = parse(&poslog(ARTS_NS, &[arts(1, "", ret), arts(2, "", v6)]));
    let line = &txs[0].lines[0];
    assert!(line.refund);
    assert_eq!(
        (line.quantity, line.extended_amount, line.tax_amount),
        (Some(dec("-1")), Some(dec("-18.00")), Some(dec("-1.44")))
    );
    assert_eq!(txs[0].discounts[0].amount, Some(dec("-2.00")), "the return's discount is returned too");
    assert_eq!(txs[0].header.transaction_type, TransactionType::Refund);
    assert!(txs[1].lines[0].refund);
    assert_eq!(txs[1].header.transaction_type, TransactionType::Refund);
}

#[test]
fn arts_fuel_prepay_and_a_transaction_discount_are_read() {
    let fuel = r#"<LineItem><FuelSale TypeCode="Prepay"><FuelGradeID>1</FuelGradeID><FuelingPointID>3</FuelingPointID><ExtendedAmount>40.00</ExtendedAmount></FuelSale></LineItem><LineItem><FuelSale TypeCode="PrepayRefund"><ExtendedAmount>-5.41</ExtendedAmount></FuelSale></LineItem>"#;
    let discount = "<LineItem><Discount><Amount>3.00</Amount><ReasonCode>TXN10</ReasonCode></Discount></LineItem>";
    let gallons = r#"<LineItem><Sale><ItemID>GAS</ItemID><Quantity UnitOfMeasureCode="GLL">8.5</Quantity><ActualSalesUnitPrice>3.529</ActualSalesUnitPrice><ExtendedAmount>30.00</ExtendedAmount></Sale></LineItem>"#;
    let txs = parse(&poslog(
        ARTS_NS,
        &[arts(1, "", fuel), arts(2, "", &format!("{SALE}{discount}")), arts(3, "", &format!("{SALE}{gallons}"))],
    ));
    let (item, gas) = (&txs[2].lines[0], &txs[2].lines[1]);
    assert_eq!((item.kind, gas.kind), (LineKind::Item, LineKind::Fuel), "sold in gallons: fuel");
    assert_eq!((gas.fuel_volume, gas.fuel_unit_price), (Some(dec("8.5")), Some(dec("3.529"))));
    assert_eq!(txs[0].lines[0].kind, LineKind::FuelPrepay);
    assert_eq!(txs[0].lines[0].fuel_position.as_deref(), Some("3"));
    assert_eq!(txs[0].lines[1].kind, LineKind::FuelPrepay, "a deposit given back is not fuel sold");
    // ARTS keys stay as they were: only NAXML tells prepay and completion apart by their lines.
    assert_eq!(txs[0].header.key.variant, KeyVariant::Primary);
    let d = &txs[1].discounts;
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].amount, d[0].line_number), (Some(dec("3.00")), None), "a discount of the whole transaction");
}

#[test]
fn xstore_cancel_orphaned_post_void_and_voided_tax() {
    let taxed = r#"<LineItem><Sale><ItemID>A</ItemID><Quantity>1</Quantity><ExtendedAmount>45.00</ExtendedAmount><Tax dtv:VoidFlag="false"><Amount>3.60</Amount></Tax><Tax dtv:VoidFlag="true"><Amount>9.99</Amount></Tax><Tax dtv:VoidFlag="True"><Amount>1.11</Amount></Tax></Sale></LineItem>"#;
    let x = |seq: u32, ty: &str, attrs: &str, body: &str| {
        arts(seq, attrs, body).replacen("<Transaction>", &format!(r#"<Transaction dtv:TransactionType="{ty}">"#), 1)
    };
    let txs = parse(&poslog(
        XSTORE_NS,
        &[
            x(300, "RETAIL_SALE", "", taxed),
            x(301, "RETAIL_SALE", r#" TransactionStatus="dtv:CancelOrphaned""#, SALE),
            x(300, "POST_VOID", "", ""),
            x(302, "RETAIL_SALE", r#" TransactionStatus="xstore:CancelOrphaned""#, SALE),
        ],
    ));
    assert!(txs[3].header.flags.voided, "the prefix on the status does not matter");
    assert_eq!(txs[0].lines[0].tax_amount, Some(dec("3.60")), "the voided tax does not count");
    assert!(txs[1].header.flags.voided && txs[1].header.flags.excluded_from_sales());
    assert_eq!(txs[2].header.key.variant, KeyVariant::PostVoid);
    assert_eq!(txs[2].header.key.sequence, txs[0].header.key.sequence);
    // A post-void without a link carries the number of the ticket it voids: that sale is left out.
    assert_eq!(txs[2].header.voids.as_ref().map(|v| v.sequence.as_str()), Some("300"));
    assert!(txs[0].header.flags.voided && txs[0].header.flags.excluded_from_sales());
    assert!(txs[0].header.voids.is_none() && txs[1].header.voids.is_none());
    // Xstore writes no gross, net or tax total: they are summed from the live lines (an audit found every Xstore
    // tax null), net less the live discounts; a line cancelled does not count.
    let line = |item: &str, amount: &str, tax: &str, extra: &str| {
        format!(
            r#"<LineItem{extra}><Sale><ItemID>{item}</ItemID><Quantity>1</Quantity><ExtendedAmount>{amount}</ExtendedAmount><RetailPriceModifier><Amount>0.50</Amount></RetailPriceModifier><Tax><Amount>{tax}</Amount></Tax></Sale></LineItem>"#
        )
    };
    let body = [
        line("A", "2.00", "0.14", ""),
        line("B", "3.00", "0.21", ""),
        line("C", "7.00", "0.49", r#" CancelFlag="true""#),
    ];
    let sold = parse(&poslog(XSTORE_NS, &[x(400, "RETAIL_SALE", "", &body.concat())])).remove(0).header;
    let amounts = (sold.gross_amount, sold.net_amount, sold.tax_amount);
    assert_eq!(amounts, (Some(dec("5.00")), Some(dec("4.00")), Some(dec("0.35"))));
    let plain = parse(&poslog(ARTS_NS, &[arts(401, "", &body.concat())])).remove(0).header;
    assert_eq!((plain.gross_amount, plain.tax_amount), (None, None), "other dialects keep what the file says");
}

#[test]
fn visma_business_day_wins_over_the_begin_time_in_either_order() {
    let visma = |order_first: bool| {
        let (day, begin) =
            ("<BusinessDayDate>2019-07-21</BusinessDayDate>", "<BeginDateTime>2019-07-22T00:10:00</BeginDateTime>");
        let (a, b) = if order_first { (day, begin) } else { (begin, day) };
        format!(
            r#"<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/" xmlns:VRExt="http://schemas.vismaretail.com/poslog/"><Transaction><BusinessUnit><UnitID>1234</UnitID></BusinessUnit><WorkstationID>2</WorkstationID><SequenceNumber>55</SequenceNumber>{a}{b}<RetailTransaction>{SALE}</RetailTransaction></Transaction><Transaction><BusinessUnit><UnitID>1234</UnitID></BusinessUnit><WorkstationID>2</WorkstationID><SequenceNumber>56</SequenceNumber>{begin}<RetailTransaction TransactionStatus="Suspended">{SALE}</RetailTransaction></Transaction></POSLog>"#
        )
    };
    for first in [true, false] {
        let txs = parse(&visma(first));
        assert_eq!(txs[0].header.key.business_date.to_string(), "2019-07-21");
        assert_eq!(txs[1].header.key.business_date.to_string(), "2019-07-22", "no business day: the day it began");
        assert!(txs[1].header.flags.suspended);
    }
}

/// A transaction that gives its business day twice keeps the first, as it keeps its first site, workstation and
/// sequence: its key is one record's, not a mix of two (until session 32 the day was the last one read). Both values
/// are checked, and both stay in bronze.
#[test]
fn a_business_day_given_twice_keeps_the_first_as_the_other_key_fields_do() {
    let tx = |days: &str| {
        poslog(
            ARTS_NS,
            &[format!(
                "<Transaction><RetailStoreID>S1</RetailStoreID><RetailStoreID>S2</RetailStoreID>\
                 <WorkstationID>1</WorkstationID><SequenceNumber>9</SequenceNumber>{days}\
                 <RetailTransaction>{SALE}</RetailTransaction></Transaction>"
            )],
        )
    };
    let txs = parse(&tx("<BusinessDayDate>2026-01-05</BusinessDayDate><BusinessDayDate>2026-01-06</BusinessDayDate>"));
    let key = &txs[0].header.key;
    assert_eq!((key.site.as_str(), key.business_date.to_string()), ("S1", "2026-01-05".to_owned()));
    assert_eq!(txs[0].bronze.get("Transaction/BusinessDayDate[2]"), Some("2026-01-06"));
    let bad = tx("<BusinessDayDate>2026-01-05</BusinessDayDate><BusinessDayDate>2026-02-30</BusinessDayDate>");
    assert!(parse_file("bad.xml", bad.as_bytes(), &ParseOptions::default()).is_err(), "the second is checked too");
}

/// Times written in different offsets in one transaction (a UTC begin beside a local end, as formats.md says NCR
/// writes them) are read as the store's wall clock: the UTC one is moved into the store's offset, so a start never
/// falls after its end, nor on another day, for a zone alone.
#[test]
fn times_in_different_offsets_read_as_the_stores_wall_clock() {
    // Visma (an ARTS POSLog) often writes no business day: then it is the day the receipt began, in the store.
    let times = |begin: &str, end: &str| {
        let body = format!("<BeginDateTime>{begin}</BeginDateTime><EndDateTime>{end}</EndDateTime>");
        let tx = format!(
            r#"<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/" xmlns:VRExt="http://schemas.vismaretail.com/poslog/"><Transaction><BusinessUnit><UnitID>1234</UnitID></BusinessUnit><WorkstationID>2</WorkstationID><SequenceNumber>55</SequenceNumber>{body}<RetailTransaction>{SALE}</RetailTransaction></Transaction></POSLog>"#
        );
        let h = parse(&tx).remove(0).header;
        let text = |t: Option<chrono::NaiveDateTime>| t.map(|t| t.to_string()).unwrap_or_default();
        (text(h.start_time), text(h.end_time), h.key.business_date.to_string())
    };
    // (begin, end) as written → (start, end, business day) as read.
    let cases = [
        // A UTC begin, a local end.
        (
            ("2024-03-15T15:02:00Z", "2024-03-15T10:05:00-05:00"),
            ("2024-03-15 10:02:00", "2024-03-15 10:05:00", "2024-03-15"),
        ),
        // The other way round, and across midnight in UTC: the day is the store's (no BusinessDayDate here).
        (
            ("2024-03-15T21:30:00-05:00", "2024-03-16T02:35:00Z"),
            ("2024-03-15 21:30:00", "2024-03-15 21:35:00", "2024-03-15"),
        ),
        (
            ("2024-03-16T02:30:00Z", "2024-03-15T21:35:00-05:00"),
            ("2024-03-15 21:30:00", "2024-03-15 21:35:00", "2024-03-15"),
        ),
        // One offset throughout, or an offset beside none: as written.
        (
            ("2024-03-15T10:02:00-05:00", "2024-03-15T10:05:00-05:00"),
            ("2024-03-15 10:02:00", "2024-03-15 10:05:00", "2024-03-15"),
        ),
        (
            ("2024-03-15T10:02:00Z", "2024-03-15T10:05:00Z"),
            ("2024-03-15 10:02:00", "2024-03-15 10:05:00", "2024-03-15"),
        ),
        (("2024-03-15T10:02:00", "2024-03-15T15:05:00Z"), ("2024-03-15 10:02:00", "2024-03-15 15:05:00", "2024-03-15")),
    ];
    for ((begin, end), (start, finish, day)) in cases {
        assert_eq!(times(begin, end), (start.to_owned(), finish.to_owned(), day.to_owned()), "{begin} .. {end}");
    }
}

/// Bronze loses nothing of an element: an empty one (a Verifone `<trlPLU/>` flag, whose presence is its value) is an
/// entry with an empty value, and an attribute whose local name another attribute of the element has already
/// (`VoidFlag` beside `dtv:VoidFlag`) is keyed by its qualified name, so the two can be told apart.
#[test]
fn bronze_keeps_empty_elements_and_tells_prefixed_attributes_apart() {
    let body = r#"<LineItem VoidFlag="false" dtv:VoidFlag="true"><Sale><ItemID>A</ItemID><Quantity>1</Quantity><ExtendedAmount>9.00</ExtendedAmount><Marker/><Blank>  </Blank><Tagged kind="x"/></Sale></LineItem>"#;
    let tx = parse(&poslog(XSTORE_NS, &[arts(1, "", body)])).remove(0);
    let entries: Vec<(String, String)> = tx.bronze.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let value =
        |key: &str| entries.iter().filter(|(k, _)| k.ends_with(key)).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(value("LineItem_attr_VoidFlag"), ["false"], "{entries:?}");
    assert_eq!(value("LineItem_attr_dtv:VoidFlag"), ["true"], "{entries:?}");
    // The prefixed one first: still two keys, the plain one for the unprefixed attribute (an audit found both
    // keyed `Memo_attr_lang`). Two prefixed ones and no plain one: the first keeps the local name.
    let body = r#"<LineItem><Sale><ItemID>A</ItemID><Quantity>1</Quantity><ExtendedAmount>9.00</ExtendedAmount><Memo x:lang="en" lang="sv" y:kind="a" z:kind="b"/></Sale></LineItem>"#;
    let tx = parse(&poslog(XSTORE_NS, &[arts(1, "", body)])).remove(0);
    let memo: Vec<(&str, &str)> = tx.bronze.iter().filter(|(k, _)| k.contains("Memo")).collect();
    let keys: Vec<&str> = memo.iter().map(|(k, _)| k.rsplit('/').next().unwrap_or(k)).collect();
    assert_eq!(keys, ["Memo_attr_x:lang", "Memo_attr_lang", "Memo_attr_kind", "Memo_attr_z:kind"], "{memo:?}");
    assert_eq!(memo.iter().map(|(_, v)| *v).collect::<Vec<_>>(), ["en", "sv", "a", "b"]);
    assert_eq!(value("Sale/Marker"), [""], "an empty element is kept: {entries:?}");
    assert_eq!(value("Sale/Blank"), [""], "so is one of whitespace only: {entries:?}");
    // An element with attributes is kept by them; one with children, by theirs.
    assert_eq!(value("Sale/Tagged_attr_kind"), ["x"], "{entries:?}");
    assert!(value("Sale/Tagged").is_empty() && value("RetailTransaction/LineItem").is_empty(), "{entries:?}");
}

/// A Passport PJR file of store 7070 with one event.
fn pjr(event: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><NAXML-POSJournal version="3.4"><TransmissionHeader><StoreLocationID>7070</StoreLocationID></TransmissionHeader><JournalReport><{event}><RegisterID>101</RegisterID><TransactionID>1010200</TransactionID><BusinessDate>2024-03-05</BusinessDate><TransactionDetailGroup>{body}</TransactionDetailGroup><TransactionSummary><TransactionTotalGrandAmount>1.00</TransactionTotalGrandAmount></TransactionSummary></{event}></JournalReport></NAXML-POSJournal>"#
    )
}

const PREPAY: &str = r#"<TransactionLine status="normal"><FuelPrepayLine><FuelPositionID>3</FuelPositionID><SalesAmount>40.00</SalesAmount></FuelPrepayLine></TransactionLine>"#;
const COMPLETION: &str = r#"<TransactionLine status="cancel"><FuelPrepayLine><SalesAmount>40.00</SalesAmount></FuelPrepayLine></TransactionLine><TransactionLine status="normal"><FuelLine><FuelGradeID>001</FuelGradeID><FuelPositionID>3</FuelPositionID><ActualSalesPrice>3.500</ActualSalesPrice><SalesQuantity>10.000</SalesQuantity><SalesAmount>35.00</SalesAmount></FuelLine></TransactionLine>"#;

#[test]
fn naxml_prepay_and_completion_lines_promotions_and_refunds() {
    let prepay = parse(&pjr("SaleEvent", PREPAY));
    let completion = parse(&pjr("SaleEvent", COMPLETION));
    assert_eq!(prepay[0].header.key.variant, KeyVariant::FuelPrepay);
    assert_eq!(prepay[0].lines[0].kind, LineKind::FuelPrepay, "the deposit line is what fuel figures leave out");
    assert!(!prepay[0].header.flags.excluded_from_sales(), "what else the ticket sold counts");
    assert_eq!(completion[0].header.key.variant, KeyVariant::FuelCompletion);
    assert!(!completion[0].header.flags.excluded_from_sales());
    assert_eq!(completion[0].lines[1].unit_price, Some(dec("3.500")), "fuel's ActualSalesPrice is per unit");

    let items = r#"<TransactionLine status="normal"><ItemLine><ItemCode><POSCode>1</POSCode></ItemCode><ActualSalesPrice>5.00</ActualSalesPrice><SalesQuantity>2</SalesQuantity><SalesAmount>5.00</SalesAmount></ItemLine></TransactionLine><TransactionLine status="normal"><ItemLine><ItemCode><POSCode>3</POSCode></ItemCode><ActualSalesPrice>1.99</ActualSalesPrice><SalesAmount>1.99</SalesAmount></ItemLine></TransactionLine><TransactionLine status="cancel"><ItemLine><ItemCode><POSCode>2</POSCode></ItemCode><SalesQuantity>1</SalesQuantity><SalesAmount>2.00</SalesAmount><Promotion><PromotionID>PY</PromotionID><PromotionAmount>0.20</PromotionAmount></Promotion></ItemLine></TransactionLine>"#;
    let sale = parse(&pjr("SaleEvent", items));
    assert_eq!(sale[0].lines[0].unit_price, Some(dec("2.50")), "amount over quantity, not ActualSalesPrice");
    assert_eq!(sale[0].lines[1].unit_price, Some(dec("1.99")), "no quantity: ActualSalesPrice");
    assert!(sale[0].discounts[0].voided, "a promotion of a cancelled line was not given");
    let refund = parse(&pjr("RefundEvent", items));
    assert!(refund[0].lines.iter().all(|l| l.refund));
}

#[test]
fn conexxus_tax_is_the_sales_tax_whatever_the_order() {
    let cx = |a: &str, b: &str| {
        format!(
            r#"<NAXML-POSJournal version="3.6" xmlns="http://www.naxml.org/POSBO/Vocabulary/2003-10-16" xmlns:radiant="http://www.radiantsystems.com/NAXML-Extension"><TransmissionHeader><StoreLocationID>900</StoreLocationID></TransmissionHeader><JournalReport><SaleEvent><RegisterID>2</RegisterID><TransactionID>4411</TransactionID><BusinessDate>2021-05-28</BusinessDate><TransactionSummary>{a}{b}</TransactionSummary></SaleEvent></JournalReport></NAXML-POSJournal>"#
        )
    };
    let (sales, net) = (
        "<TransactionTotalTaxSalesAmount>0.14</TransactionTotalTaxSalesAmount>",
        "<TransactionTotalTaxNetAmount>0.12</TransactionTotalTaxNetAmount>",
    );
    assert_eq!(parse(&cx(sales, net))[0].header.tax_amount, Some(dec("0.14")));
    assert_eq!(parse(&cx(net, sales))[0].header.tax_amount, Some(dec("0.14")));
    // Passport's is the other way round.
    let pjr = |a: &str, b: &str| {
        pjr("SaleEvent", "").replace("<TransactionTotalGrandAmount>", &format!("{a}{b}<TransactionTotalGrandAmount>"))
    };
    assert_eq!(parse(&pjr(sales, net))[0].header.tax_amount, Some(dec("0.12")));
    assert_eq!(parse(&pjr(net, sales))[0].header.tax_amount, Some(dec("0.12")));
}

/// A Verifone period file of site 88 holding these `trans` records.
fn verifone(trans: &[&str]) -> String {
    format!(
        r#"<?xml version="1.0"?><transSet site="88"><openedTime>2024-03-02T06:00:00</openedTime>{}</transSet>"#,
        trans.concat()
    )
}

fn trans(attrs: &str, seq: &str, unique: &str, amount: &str) -> String {
    format!(
        r#"<trans type="sale"{attrs}><trHeader><trTickNum><posNum>1</posNum><trSeq>{seq}</trSeq></trTickNum><trUniqueSN>{unique}</trUniqueSN><date>2024-03-02T10:00:41</date><duration>41</duration></trHeader><trValue><trTotWTax>{amount}</trTotWTax></trValue></trans>"#
    )
}

/// Verifone writes a line's sign apart (`trlSign`), its quantity unsigned and its amount signed: a line of sign -1
/// is a return of negative quantity, and a sale of returns only is a refund (an audit found both left a sale of
/// quantity 1). A loyalty program's automatic discount is a discount of the ticket.
#[test]
fn verifone_line_signs_and_loyalty_discounts() {
    let line = |sign: &str, total: &str| {
        format!(
            "<trLine type=\"plu\"><trlDept number=\"5\">D</trlDept><trlQty>1</trlQty><trlSign>{sign}</trlSign><trlUnitPrice>3.00</trlUnitPrice><trlLineTot>{total}</trlLineTot><trlUPC>1</trlUPC></trLine>"
        )
    };
    let ticket = |seq: &str, lines: &[String], extra: &str| {
        trans("", seq, seq, "0").replace("</trans>", &format!("<trLines>{}</trLines>{extra}</trans>", lines.concat()))
    };
    let loyalty = r#"<trLoyaltyProgram programID="LP1"><trloAutoDisc>0.50</trloAutoDisc></trLoyaltyProgram>"#;
    let txs = parse(&verifone(&[
        &ticket("1", &[line("-1", "-3.00")], ""),
        &ticket("2", &[line("1", "3.00"), line("-1", "-3.00")], ""),
        &ticket("3", &[line("1", "3.00")], loyalty),
    ]));
    let lines =
        |i: usize| txs[i].lines.iter().map(|l| (l.quantity.map(|q| q.to_string()), l.refund)).collect::<Vec<_>>();
    assert_eq!(txs[0].header.transaction_type, TransactionType::Refund);
    assert_eq!(lines(0), [(Some("-1".to_owned()), true)]);
    assert_eq!(txs[1].header.transaction_type, TransactionType::Sale, "a sale with one item returned");
    assert_eq!(lines(1), [(Some("1".to_owned()), false), (Some("-1".to_owned()), true)]);
    let d = &txs[2].discounts;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].amount.map(|a| a.to_string()), d[0].kind.as_deref()), (Some("0.50".to_owned()), Some("loyalty")));
    assert_eq!((d[0].promotion_id.as_deref(), d[0].line_number), (Some("LP1"), None));
    assert!(txs[0].discounts.is_empty());

    // A re-audit's cases: a negative amount without a sign is a return too; a return's discount is negated with
    // it; a `refund sale` line written positive is made negative; and a `void plu` line cancels the line it negates,
    // so that a ticket of net 0.00 counts nothing.
    let unsigned = |total: &str, extra: &str| {
        format!(
            "<trLine type=\"plu\"><trlDept number=\"5\">D</trlDept><trlQty>1</trlQty><trlUnitPrice>3.00</trlUnitPrice><trlLineTot>{total}</trlLineTot><trlUPC>1</trlUPC>{extra}</trLine>"
        )
    };
    let promo = "<trlMixMatches><trlMatchLine><trlPromoAmount>0.50</trlPromoAmount></trlMatchLine></trlMixMatches>";
    let void = unsigned("-3.00", "").replace("type=\"plu\"", "type=\"void plu\"");
    let txs = parse(&verifone(&[
        &ticket("4", &[unsigned("-3.00", promo)], ""),
        &ticket("5", &[unsigned("3.00", promo)], loyalty).replace("type=\"sale\"", "type=\"refund sale\""),
        &ticket("6", &[unsigned("3.00", ""), void, unsigned("2.00", "")], ""),
    ]));
    for t in &txs[..2] {
        assert_eq!(t.header.transaction_type, TransactionType::Refund);
        let l = &t.lines[0];
        assert_eq!((l.quantity, l.extended_amount, l.refund), (Some(dec("-1")), Some(dec("-3.00")), true));
        assert_eq!(t.discounts[0].amount, Some(dec("-0.50")), "line less discount is what was refunded");
    }
    let ticket_wide = &txs[1].discounts[1];
    assert_eq!((ticket_wide.line_number, ticket_wide.amount), (None, Some(dec("-0.50"))), "a refund's loyalty too");
    let live: Vec<Decimal> =
        txs[2].lines.iter().filter(|l| !l.voided).filter_map(|l| l.extended_amount).collect::<Vec<_>>();
    assert_eq!(live, [dec("2.00")], "the voided sale and its void line both leave the figures");
}

#[test]
fn verifone_rollback_pairs_and_unnumbered_journal_records() {
    let journal = r#"<trans type="journal"><trHeader><date>2024-03-02T06:00:00</date></trHeader></trans>"#;
    let txs = parse(&verifone(&[
        &trans("", "700", "1", "10.00"),
        // A "shadow" copy (empty trUniqueSN) of the original, then the mirror: both halves are left out, whichever
        // copy lands.
        &trans("", "700", "", "10.00"),
        &trans(r#" rollback="true""#, "700", "1", "10.00"),
        &trans("", "701", "3", "4.00"),
        journal,
    ]));
    let h: Vec<_> = txs.iter().map(|t| &t.header).collect();
    assert!(h[0].flags.voided && h[1].flags.voided, "the rolled-back original and its copy");
    assert!(h[2].flags.rollback && h[2].key.variant == KeyVariant::RollbackMirror);
    assert!(!h[3].flags.excluded_from_sales(), "another ticket");
    assert_eq!(h[3].start_time.map(|t| t.to_string()).as_deref(), Some("2024-03-02 10:00:00"), "end less duration");
    // A journal record without a ticket or message number no longer costs the file its sales.
    assert!(h[4].flags.journal && h[4].key.variant == KeyVariant::TerminalMessage);
    assert!(h[4].key.sequence.starts_with("digest:"));
    let again = parse(&verifone(&[journal]));
    assert_eq!(again[0].header.key, h[4].key, "the same record is keyed the same in another file");

    // The period's `openedTime` written after the records: they take its date, in file order, the rollback pair
    // still voided (it was a dead letter: no business date).
    let opened = "<openedTime>2024-03-02T06:00:00</openedTime>";
    let late = verifone(&[
        &trans("", "700", "1", "10.00"),
        &trans(r#" rollback="true""#, "700", "1", "10.00"),
        &trans("", "701", "3", "4.00"),
    ])
    .replacen(opened, "", 1)
    .replace("</transSet>", &format!("{opened}</transSet>"));
    let late = parse(&late);
    let keys: Vec<String> =
        late.iter().map(|t| format!("{}|{}", t.header.key.business_date, t.header.key.sequence)).collect();
    assert_eq!(keys, ["2024-03-02|700", "2024-03-02|700", "2024-03-02|701"]);
    assert!(late[0].header.flags.voided && late[1].header.flags.rollback && !late[2].header.flags.voided);
    assert_eq!(late.iter().map(|t| t.header.ordinal).collect::<Vec<_>>(), [1, 2, 3]);
    // A NAXML event without a TransactionID keeps its register.
    let other = pjr("OtherEvent", "").replace("<TransactionID>1010200</TransactionID>", "");
    let other = parse(&other);
    assert_eq!(other[0].header.key.register.as_deref(), Some("101"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_share_an_earlier_tickets_number_land_in_later_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let paths = IngestPaths { staging: staging.clone(), lake: dir.path().join("lake"), archive: None, catalog: None };
    let run = || async { ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await };
    let x = |ty: &str, body: &str| {
        poslog(
            XSTORE_NS,
            &[arts(400, "", body).replacen(
                "<Transaction>",
                &format!(r#"<Transaction dtv:TransactionType="{ty}">"#),
                1,
            )],
        )
    };

    // A sale and a prepay, then in later files the post-void of the sale and the prepay's completion, each with
    // its original's number; then the first two files again under other names.
    std::fs::write(staging.join("a-sale.xml"), x("RETAIL_SALE", SALE)).expect("write");
    std::fs::write(staging.join("a-prepay.xml"), pjr("SaleEvent", PREPAY)).expect("write");
    let first = run().await.expect("first run");
    assert_eq!((first.new_transactions, first.duplicate_transactions), (2, 0));
    std::fs::write(staging.join("b-postvoid.xml"), x("POST_VOID", "")).expect("write");
    std::fs::write(staging.join("b-completion.xml"), pjr("SaleEvent", COMPLETION)).expect("write");
    let second = run().await.expect("second run");
    assert_eq!((second.new_transactions, second.duplicate_transactions), (2, 0), "neither is a duplicate");
    std::fs::write(staging.join("c-sale-again.xml"), x("RETAIL_SALE", SALE)).expect("write");
    std::fs::write(staging.join("c-completion-again.xml"), pjr("SaleEvent", COMPLETION)).expect("write");
    let third = run().await.expect("third run");
    assert_eq!((third.new_transactions, third.duplicate_transactions), (0, 2), "re-sent records add nothing");

    let wh = poslake::lake::Warehouse::open(&paths.lake).await.expect("open");
    // The sale landed as a sale; its post-void, a file later, voids it in `sales_header_current`, once.
    let row = "concat_ws('|', sequence, key_variant, CAST(voided AS VARCHAR), CAST(excluded_from_sales AS VARCHAR), \
               transaction_type)";
    let landed = common::strings(&wh, &format!("SELECT {row} FROM sales_header WHERE site = 'S1'")).await;
    assert_eq!(landed, ["400|post_void|true|true|void", "400|primary|false|false|sale"]);
    let current = common::strings(&wh, &format!("SELECT {row} FROM sales_header_current WHERE site = 'S1'")).await;
    assert_eq!(current, ["400|post_void|true|true|void", "400|primary|true|true|void"]);
    let voids = common::strings(
        &wh,
        "SELECT concat_ws('|', site, sequence, key_variant, voided_sequence, reason, source_file) FROM sales_voids",
    )
    .await;
    assert_eq!(voids, ["S1|400|post_void|400|post_void|b-postvoid.xml"]);
    let prepays = common::strings(
        &wh,
        "SELECT concat_ws('|', key_variant, CAST(excluded_from_sales AS VARCHAR)) FROM sales_header_current \
         WHERE site = '7070'",
    )
    .await;
    assert_eq!(prepays, ["completion|false", "prepay|false"], "no void touches the fuel pair");

    let mut keys = common::keys_of_table(&wh, "sales_header").await;
    keys.sort();
    let mut want = [
        "S1|2024-04-01|1|400",
        "S1|2024-04-01|1|400|post_void",
        "7070|2024-03-05|101|1010200|prepay",
        "7070|2024-03-05|101|1010200|completion",
    ];
    want.sort();
    assert_eq!(keys, want);
}

/// Key fields that hold the key's own separator: workstation `1|2` with sequence `3`, and workstation `1` with
/// sequence `2|3`, are two tickets. Until session 32 their keys joined to one text, and the second file's ticket was
/// counted a duplicate and dropped (in no table, not even the quarantine); a re-send of either is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_fields_holding_the_separator_stay_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let paths = IngestPaths { staging: staging.clone(), lake: dir.path().join("lake"), archive: None, catalog: None };
    let run = || async { ingest(&IngestSetup::new(paths.clone()), pipeline(), Arc::new(Progress::default())).await };
    let ticket = |workstation: &str, sequence: &str| {
        poslog(
            ARTS_NS,
            &[format!(
                "<Transaction><RetailStoreID>9161</RetailStoreID><WorkstationID>{workstation}</WorkstationID>\
                 <SequenceNumber>{sequence}</SequenceNumber><BusinessDayDate>2026-01-05</BusinessDayDate>\
                 <RetailTransaction>{SALE}</RetailTransaction></Transaction>"
            )],
        )
    };
    std::fs::write(staging.join("a.xml"), ticket("1|2", "3")).expect("write");
    let first = run().await.expect("first run");
    assert_eq!((first.new_transactions, first.duplicate_transactions), (1, 0));
    std::fs::write(staging.join("b.xml"), ticket("1", "2|3")).expect("write");
    let second = run().await.expect("second run");
    assert_eq!((second.new_transactions, second.duplicate_transactions), (1, 0), "another ticket, not a re-send");
    std::fs::write(staging.join("c.xml"), ticket("1", "2|3").replace("<POSLog", "<POSLog ")).expect("write");
    let third = run().await.expect("third run");
    assert_eq!((third.new_transactions, third.duplicate_transactions), (0, 1), "a re-send is still one");

    let wh = poslake::lake::Warehouse::open(&paths.lake).await.expect("open");
    let rows = common::strings(&wh, "SELECT concat_ws(' / ', register, sequence) FROM sales_header ORDER BY 1").await;
    assert_eq!(rows, ["1 / 2|3", "1|2 / 3"]);
}
