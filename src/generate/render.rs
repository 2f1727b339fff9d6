//! Writes generated transactions as each dialect's XML, in the shapes docs/formats.md describes. These are
//! writers, not parsers: each dialect's shape is different, so each has its own function.

use std::fmt::Write as _;

use chrono::NaiveDate;

use super::model::{GenKind, GenLine, GenTx};
use crate::dialect::Dialect;

/// Renders one file of transactions for `site` and `date`.
pub(crate) fn render(dialect: Dialect, site: &str, date: NaiveDate, file_no: u32, txs: &[GenTx]) -> String {
    let mut out = String::with_capacity(txs.len() * 1500 + 512);
    match dialect {
        Dialect::VerifoneCommander => verifone(&mut out, site, date, file_no, txs),
        Dialect::NaxmlPassport => naxml(&mut out, site, date, file_no, txs, false),
        Dialect::ConexxusNaxml => naxml(&mut out, site, date, file_no, txs, true),
        Dialect::ArtsPoslog | Dialect::XstorePoslog | Dialect::VismaPoslog => poslog(&mut out, dialect, txs),
    }
    out
}

/// The same XML without the whitespace between tags (line breaks and indentation), as many POS exports write it
/// (the public NCR ACS POSLog sample is one line): about a quarter fewer bytes. Text inside elements stays as is.
pub(crate) fn compact(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(at) = rest.find('>') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        if trimmed.starts_with('<') {
            rest = trimmed;
        }
    }
    out.push_str(rest);
    out
}

fn ts(t: &chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn verifone(out: &mut String, site: &str, date: NaiveDate, file_no: u32, txs: &[GenTx]) {
    let d = date.format("%Y-%m-%d");
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<transSet xmlns=\"urn:vfi-sapphire:tlog.2003-06-27\" \
         xmlns:vs=\"urn:vfi-sapphire:vs.2001-10-01\" periodID=\"{file_no}\" periodname=\"DAY\" shortId=\"{file_no:04}\" \
         site=\"{site}\">\n  <openedTime>{d}T05:00:00-05:00</openedTime>\n"
    );
    for tx in txs {
        let kind = match tx.kind {
            GenKind::Sale => "sale",
            GenKind::NoSale => "nosale",
            GenKind::Journal => "journal",
        };
        let rollback = if tx.rollback_mirror { " rollback=\"true\"" } else { "" };
        let _ = write!(out, "  <trans type=\"{kind}\"{rollback}>\n    <trHeader>\n");
        let _ = writeln!(out, "      <termMsgSN type=\"{kind}\" term=\"{}\">{}</termMsgSN>", tx.register, tx.sequence);
        if tx.kind != GenKind::Journal {
            let _ = writeln!(
                out,
                "      <trTickNum><posNum>{}</posNum><trSeq>{}</trSeq></trTickNum>",
                tx.register, tx.sequence
            );
        }
        let _ = write!(
            out,
            "      <date>{}-05:00</date>\n      <duration>{}</duration>\n      <storeNumber>{site}</storeNumber>\n      \
             <posNum>0</posNum>\n      <cashier sysid=\"{c}\" empNum=\"{c}\">CASHIER {c}</cashier>\n    </trHeader>\n",
            ts(&tx.end),
            (tx.end - tx.start).num_seconds(),
            c = tx.cashier
        );
        if tx.kind == GenKind::Journal {
            out.push_str(
                "    <trJournal><trjText type=\"event\">CASHIER SIGNED ON</trjText></trJournal>\n  </trans>\n",
            );
            continue;
        }
        if tx.kind == GenKind::Sale {
            let _ = write!(
                out,
                "    <trValue>\n      <trTotNoTax>{}</trTotNoTax>\n      <trTotWTax>{}</trTotWTax>\n      \
                 <trTotTax>{}</trTotTax>\n    </trValue>\n    <trLines>\n",
                tx.net(),
                tx.total(),
                tx.tax()
            );
            for line in &tx.lines {
                verifone_line(out, line);
            }
            let _ = write!(
                out,
                "    </trLines>\n    <trPaylines>\n      <trPayline type=\"SALE\" sysid=\"1\"><trpPaycode mop=\"1\" \
                 cat=\"1\" nacstendercode=\"cash\">CASH</trpPaycode><trpAmt>{}</trpAmt></trPayline>\n    </trPaylines>\n",
                tx.total()
            );
        }
        out.push_str("  </trans>\n");
    }
    out.push_str("</transSet>\n");
}

fn verifone_line(out: &mut String, line: &GenLine) {
    if let Some(g) = line.grade {
        let _ = write!(
            out,
            "      <trLine type=\"postFuel\">\n        <trlDept number=\"1\" type=\"fuel\">FUEL</trlDept>\n        \
             <trlQty>{q}</trlQty>\n        <trlUnitPrice>{p}</trlUnitPrice>\n        <trlLineTot>{e}</trlLineTot>\n        \
             <trlDesc>{n}</trlDesc>\n        <trlFuel><fuelProd sysid=\"{id}\" NAXMLFuelGradeID=\"{id}\">{n}</fuelProd>\
             <fuelSvcMode sysid=\"1\">SELF</fuelSvcMode><fuelPosition sysid=\"{pos}\"/><fuelVolume>{q}</fuelVolume>\
             <fuelPrc>{p}</fuelPrc></trlFuel>\n      </trLine>\n",
            q = line.quantity,
            p = line.unit_price,
            e = line.extended,
            n = g.name,
            id = g.id,
            pos = line.fuel_position
        );
        return;
    }
    let Some(item) = line.item else { return };
    let _ = write!(
        out,
        "      <trLine type=\"plu\">\n        <trlTaxes><trlTax sysid=\"1\" cat=\"1\">STATE TAX</trlTax></trlTaxes>\n        \
         <trlFlags><trlPLU/></trlFlags>\n        <trlDept number=\"{d}\" type=\"norm\">DEPT {d}</trlDept>\n        \
         <trlQty>{q}</trlQty>\n        <trlSign>1</trlSign>\n        <trlUnitPrice>{p}</trlUnitPrice>\n        \
         <trlLineTot>{e}</trlLineTot>\n        <trlDesc>{desc}</trlDesc>\n        <trlUPC>{code}</trlUPC>\n",
        d = item.department,
        q = line.quantity,
        p = line.unit_price,
        e = line.extended,
        desc = item.description,
        code = item.code
    );
    if let Some(disc) = &line.discount {
        let _ = writeln!(
            out,
            "        <trlMixMatches><trlMatchLine><trlMatchName>{}</trlMatchName><trlPromoAmount>{}</trlPromoAmount>\
             <trlPromotionID promoType=\"mixAndMatchOffer\">{}</trlPromotionID></trlMatchLine></trlMixMatches>",
            disc.description, disc.amount, disc.promotion_id
        );
    }
    out.push_str("      </trLine>\n");
}

fn naxml(out: &mut String, site: &str, date: NaiveDate, file_no: u32, txs: &[GenTx], conexxus: bool) {
    let d = date.format("%Y-%m-%d");
    if conexxus {
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NAXML-POSJournal xmlns=\"http://www.naxml.org/POSBO/Vocabulary/2003-10-16\" \
             xmlns:radiant=\"http://www.radiantsystems.com/NAXML-Extension\" version=\"3.6\">\n"
        );
    } else {
        let _ = write!(
            out,
            "<?xml version =\"1.0\" encoding=\"ISO-8859-1\" standalone=\"no\"?>\n<NAXML-POSJournal version=\"3.4\" release=\"3.4.0\">\n"
        );
    }
    let _ = write!(
        out,
        "  <TransmissionHeader>\n    <StoreLocationID>{site}</StoreLocationID>\n    <VendorName>{}</VendorName>\n    \
         <VendorModelVersion>22.01</VendorModelVersion>\n  </TransmissionHeader>\n  <JournalReport>\n    <JournalHeader>\n      \
         <ReportSequenceNumber>{file_no}</ReportSequenceNumber>\n      <PrimaryReportPeriod>2</PrimaryReportPeriod>\n      \
         <BeginDate>{d}</BeginDate>\n    </JournalHeader>\n",
        if conexxus { "NCR Radiant" } else { "Gilbarco-VeederRoot" }
    );
    let business_date = if conexxus { format!("{d}T00:00:00-04:00") } else { d.to_string() };
    for tx in txs {
        let event = match tx.kind {
            GenKind::Sale => "SaleEvent",
            GenKind::NoSale | GenKind::Journal => "OtherEvent",
        };
        let start_date = if conexxus {
            format!("{}T", tx.start.format("%Y-%m-%d"))
        } else {
            tx.start.format("%Y-%m-%d").to_string()
        };
        let _ = write!(
            out,
            "    <{event}>\n      <EventSequenceID>{seq}</EventSequenceID>\n      <TrainingModeFlag value=\"no\"/>\n      \
             <CashierID>{c}</CashierID>\n      <RegisterID>{r}</RegisterID>\n      <TillID>{r}</TillID>\n      \
             <OutsideSalesFlag value=\"no\"/>\n      <TransactionID>{seq}</TransactionID>\n      \
             <EventStartDate>{start_date}</EventStartDate>\n      <EventStartTime>{st}</EventStartTime>\n      \
             <EventEndDate>{start_date}</EventEndDate>\n      <EventEndTime>{et}</EventEndTime>\n      \
             <BusinessDate>{business_date}</BusinessDate>\n",
            seq = tx.sequence_text(if conexxus { Dialect::ConexxusNaxml } else { Dialect::NaxmlPassport }),
            c = tx.cashier,
            r = tx.register,
            st = tx.start.format("%H:%M:%S"),
            et = tx.end.format("%H:%M:%S"),
        );
        if tx.kind == GenKind::Sale {
            out.push_str("      <TransactionDetailGroup>\n");
            for line in &tx.lines {
                naxml_line(out, line);
            }
            let _ = write!(
                out,
                "        <TransactionLine status=\"normal\">\n          <TransactionTax>\n            <TaxLevelID>1</TaxLevelID>\n            \
                 <TaxableSalesAmount>{}</TaxableSalesAmount>\n            <TaxCollectedAmount>{}</TaxCollectedAmount>\n          \
                 </TransactionTax>\n        </TransactionLine>\n        <TransactionLine status=\"normal\">\n          <TenderInfo>\n            \
                 <Tender><TenderCode>cash</TenderCode><TenderSubCode>generic</TenderSubCode></Tender>\n            \
                 <TenderAmount>{}</TenderAmount>\n            <ChangeFlag value=\"no\"/>\n          </TenderInfo>\n        </TransactionLine>\n      \
                 </TransactionDetailGroup>\n      <TransactionSummary>\n        <TransactionTotalGrossAmount>{}</TransactionTotalGrossAmount>\n        \
                 <TransactionTotalNetAmount>{}</TransactionTotalNetAmount>\n        <{tax_el}>{}</{tax_el}>\n        \
                 <TransactionTotalGrandAmount direction=\"Collected\">{}</TransactionTotalGrandAmount>\n      </TransactionSummary>\n",
                tx.net(),
                tx.tax(),
                tx.total(),
                tx.gross(),
                tx.net(),
                tx.tax(),
                tx.total(),
                tax_el = if conexxus { "TransactionTotalTaxSalesAmount" } else { "TransactionTotalTaxNetAmount" },
            );
        } else {
            out.push_str("      <RegisterDetail detailType=\"open\"/>\n");
        }
        let _ = writeln!(out, "    </{event}>");
    }
    out.push_str("  </JournalReport>\n</NAXML-POSJournal>\n");
}

fn naxml_line(out: &mut String, line: &GenLine) {
    out.push_str("        <TransactionLine status=\"normal\">\n");
    if let Some(g) = line.grade {
        let _ = write!(
            out,
            "          <FuelLine>\n            <FuelGradeID>{}</FuelGradeID>\n            <FuelPositionID>{}</FuelPositionID>\n            \
             <ServiceLevelCode>1</ServiceLevelCode>\n            <Description>{}</Description>\n            \
             <ActualSalesPrice>{}</ActualSalesPrice>\n            <MerchandiseCode>1</MerchandiseCode>\n            \
             <SalesQuantity uom=\"gallonUS\">{}</SalesQuantity>\n            <SalesAmount>{}</SalesAmount>\n          </FuelLine>\n",
            g.id, line.fuel_position, g.name, line.unit_price, line.quantity, line.extended
        );
    } else if let Some(item) = line.item {
        let _ = write!(
            out,
            "          <ItemLine>\n            <ItemCode>\n              <POSCodeFormat format=\"upcA\"/>\n              \
             <POSCode>{}</POSCode>\n              <POSCodeModifier name=\"0\"/>\n            </ItemCode>\n            \
             <Description>{}</Description>\n            <EntryMethod method=\"scan\"/>\n            \
             <ActualSalesPrice>{}</ActualSalesPrice>\n            <MerchandiseCode>{}</MerchandiseCode>\n            \
             <SellingUnits>1</SellingUnits>\n            <RegularSellPrice>{}</RegularSellPrice>\n            \
             <SalesQuantity>{}</SalesQuantity>\n            <SalesAmount>{}</SalesAmount>\n            \
             <ItemTax><TaxLevelID>1</TaxLevelID></ItemTax>\n",
            item.code,
            item.description,
            line.unit_price,
            item.department,
            line.unit_price,
            line.quantity,
            line.extended
        );
        if let Some(d) = &line.discount {
            let _ = write!(
                out,
                "            <Promotion>\n              <PromotionID type=\"mixAndMatch\">{}</PromotionID>\n              \
                 <PromotionReason>mixAndMatchOffer</PromotionReason>\n              <PromotionAmount>{}</PromotionAmount>\n            \
                 </Promotion>\n",
                d.promotion_id, d.amount
            );
        }
        out.push_str("          </ItemLine>\n");
    }
    out.push_str("        </TransactionLine>\n");
}

fn poslog(out: &mut String, dialect: Dialect, txs: &[GenTx]) {
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    match dialect {
        Dialect::XstorePoslog => out.push_str(
            "<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\" xmlns:dtv=\"http://www.datavantagecorp.com/xstore/\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n",
        ),
        Dialect::VismaPoslog => out.push_str(
            "<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\" xmlns:VRExt=\"http://schemas.vismaretail.com/poslog/\" \
             MajorVersion=\"6\" MinorVersion=\"0\" FixVersion=\"0\">\n",
        ),
        _ => out.push_str(
            "<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\" xmlns:acs=\"http://www.ncr.com/rsd/acs/tlog/markup/poslog/2.1\">\n",
        ),
    }
    for tx in txs {
        let xstore_type = match tx.kind {
            GenKind::Sale => "RETAIL_SALE",
            GenKind::NoSale => "NO_SALE",
            GenKind::Journal => "WORKSTATION_OPEN",
        };
        if dialect == Dialect::XstorePoslog {
            let _ = writeln!(out, "  <Transaction dtv:TransactionType=\"{xstore_type}\" dtv:AppVersion=\"19.0.1\">");
        } else {
            out.push_str("  <Transaction>\n");
        }
        if dialect == Dialect::VismaPoslog {
            let _ = writeln!(out, "    <BusinessUnit><UnitID>{}</UnitID></BusinessUnit>", tx.site);
        } else {
            let _ = writeln!(out, "    <RetailStoreID>{}</RetailStoreID>", tx.site);
        }
        let _ = write!(
            out,
            "    <WorkstationID>{}</WorkstationID>\n    <SequenceNumber>{}</SequenceNumber>\n",
            tx.register, tx.sequence
        );
        if dialect != Dialect::VismaPoslog {
            let _ = writeln!(out, "    <BusinessDayDate>{}</BusinessDayDate>", tx.business_date.format("%Y-%m-%d"));
        }
        let _ = write!(
            out,
            "    <BeginDateTime>{}</BeginDateTime>\n    <EndDateTime>{}</EndDateTime>\n    <OperatorID OperatorName=\"CASHIER {c}\">{c}</OperatorID>\n    \
             <CurrencyCode>USD</CurrencyCode>\n",
            ts(&tx.start),
            ts(&tx.end),
            c = tx.cashier
        );
        match tx.kind {
            GenKind::Sale => poslog_retail(out, dialect, tx),
            GenKind::NoSale | GenKind::Journal => {
                let _ = write!(
                    out,
                    "    <ControlTransaction Version=\"2.1\">\n      <ReasonCode>{}</ReasonCode>\n    </ControlTransaction>\n",
                    if tx.kind == GenKind::NoSale { "NoSale" } else { "SignOn" }
                );
            }
        }
        out.push_str("  </Transaction>\n");
    }
    out.push_str("</POSLog>\n");
}

fn poslog_retail(out: &mut String, dialect: Dialect, tx: &GenTx) {
    out.push_str("    <RetailTransaction Version=\"2.1\" TransactionStatus=\"Finished\">\n");
    let mut seq = 0;
    for line in &tx.lines {
        let Some(item) = line.item else { continue };
        seq += 1;
        let _ = write!(
            out,
            "      <LineItem EntryMethod=\"Scanned\">\n        <SequenceNumber>{seq}</SequenceNumber>\n        <Sale ItemType=\"Stock\">\n          \
             <POSIdentity POSIDType=\"GTIN\"><POSItemID>{code}</POSItemID></POSIdentity>\n          <ItemID>{code}</ItemID>\n          \
             <MerchandiseHierarchy Level=\"Department\">{d}</MerchandiseHierarchy>\n          <Description>{desc}</Description>\n          \
             <RegularSalesUnitPrice>{p}</RegularSalesUnitPrice>\n          <ExtendedAmount>{e}</ExtendedAmount>\n          \
             <Quantity>{q}</Quantity>\n",
            code = item.code,
            d = item.department,
            desc = item.description,
            p = line.unit_price,
            e = line.extended,
            q = line.quantity
        );
        if let Some(disc) = &line.discount {
            let _ = write!(
                out,
                "          <RetailPriceModifier MethodCode=\"PriceRule\">\n            <SequenceNumber>1</SequenceNumber>\n            \
                 <Amount Action=\"Subtract\">{}</Amount>\n            <PromotionID>{}</PromotionID>\n            \
                 <ReasonCode>MixMatch</ReasonCode>\n          </RetailPriceModifier>\n",
                disc.amount, disc.promotion_id
            );
        }
        if dialect == Dialect::XstorePoslog {
            let _ = write!(
                out,
                "          <Tax TaxType=\"Sales\">\n            <TaxAuthority>STATE</TaxAuthority>\n            \
                 <TaxableAmount>{}</TaxableAmount>\n            <Amount>{}</Amount>\n          </Tax>\n",
                line.extended - line.discount.as_ref().map_or(rust_decimal::Decimal::ZERO, |d| d.amount),
                line.tax
            );
        }
        out.push_str("        </Sale>\n      </LineItem>\n");
    }
    seq += 1;
    let _ = write!(
        out,
        "      <LineItem>\n        <SequenceNumber>{seq}</SequenceNumber>\n        <Tender TenderType=\"Cash\" TypeCode=\"Sale\">\n          \
         <TenderID>1</TenderID>\n          <Amount>{}</Amount>\n        </Tender>\n      </LineItem>\n",
        tx.total()
    );
    match dialect {
        Dialect::XstorePoslog => {
            let _ = writeln!(out, "      <Total TotalType=\"TransactionGrandAmount\">{}</Total>", tx.total());
        }
        Dialect::VismaPoslog => {
            let _ = write!(
                out,
                "      <Total TotalType=\"TransactionNetAmount\">{}</Total>\n      <Total TotalType=\"TransactionTaxAmount\">{}</Total>\n",
                tx.net(),
                tx.tax()
            );
        }
        _ => {
            let _ = write!(
                out,
                "      <Total TotalType=\"TransactionGrossAmount\">{}</Total>\n      <Total TotalType=\"TransactionNetAmount\">{}</Total>\n      \
                 <Total TotalType=\"TransactionTaxAmount\">{}</Total>\n      <Total TotalType=\"TransactionGrandAmount\">{}</Total>\n",
                tx.gross(),
                tx.net(),
                tx.tax(),
                tx.total()
            );
        }
    }
    out.push_str("    </RetailTransaction>\n");
}
