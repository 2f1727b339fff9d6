//! Bad input: every way a POS file can be broken, hostile or oddly encoded, each asserting the specific
//! [`ParseError`] variant it must produce (with the file name it carries and, where the variant has one, a
//! position that points at the offending text), plus property tests that arbitrary bytes and mutations of a valid
//! document never panic.
//!
//! All inputs are built inline from small hand-written documents in the ARTS POSLog and Verifone Commander
//! dialects.

use std::io::Write as _;

use poslake::parse::Position;
use poslake::{Dialect, ParseError, ParseOptions, ParsedFile, parse_file};
use proptest::prelude::*;

const ARTS_NS: &str = "http://www.nrf-arts.org/IXRetail/namespace/";

/// One ARTS transaction, on one line.
fn arts_tx(seq: u32, description: &str, amount: &str) -> String {
    format!(
        "<Transaction><RetailStoreID>S1</RetailStoreID><WorkstationID>3</WorkstationID>\
         <SequenceNumber>{seq}</SequenceNumber><BusinessDayDate>2026-01-02</BusinessDayDate>\
         <RetailTransaction><LineItem><Sale><ItemID>1</ItemID><Description>{description}</Description>\
         <Quantity>1</Quantity><ExtendedAmount>{amount}</ExtendedAmount></Sale></LineItem>\
         <Total TotalType=\"TransactionGrandAmount\">{amount}</Total></RetailTransaction></Transaction>"
    )
}

/// An ARTS POSLog with the given transactions, one per line; the root opens on line 2.
fn arts_doc(transactions: &[String]) -> String {
    let mut doc = format!("<?xml version=\"1.0\"?>\n<POSLog xmlns=\"{ARTS_NS}\">\n");
    for tx in transactions {
        doc.push_str(tx);
        doc.push('\n');
    }
    doc.push_str("</POSLog>\n");
    doc
}

/// The ARTS document most tests start from: two transactions, lines 3 and 4.
fn arts_valid() -> String {
    arts_doc(&[arts_tx(1, "Coffee", "1.00"), arts_tx(2, "Tea", "2.50")])
}

/// A Verifone Commander tlog: the period's `openedTime` gives the business date, `trHeader` the rest.
fn verifone_doc() -> String {
    "<?xml version=\"1.0\"?>\n\
     <transSet xmlns=\"urn:vfi-sapphire:tlog.2003-06-27\" site=\"77\">\n\
     <openedTime>2026-01-02T05:00:00-05:00</openedTime>\n\
     <trans type=\"sale\"><trHeader><trTickNum><posNum>1</posNum><trSeq>5</trSeq></trTickNum>\
     <date>2026-01-02T10:00:00-05:00</date><storeNumber>77</storeNumber></trHeader>\
     <trLines><trLine type=\"plu\"><trlUPC>0001</trlUPC><trlDesc>Gum</trlDesc><trlQty>1</trlQty>\
     <trlLineTot>2.00</trlLineTot></trLine></trLines></trans>\n\
     </transSet>\n"
        .to_owned()
}

fn parse(name: &str, bytes: &[u8]) -> Result<ParsedFile, ParseError> {
    parse_file(name, bytes, &ParseOptions::default())
}

fn parse_err(name: &str, bytes: &[u8]) -> ParseError {
    parse_with_err(name, bytes, &ParseOptions::default())
}

fn parse_with_err(name: &str, bytes: &[u8], opts: &ParseOptions) -> ParseError {
    match parse_file(name, bytes, opts) {
        Ok(parsed) => panic!("{name}: expected an error, parsed {} transactions", parsed.transactions.len()),
        Err(err) => {
            assert!(err.to_string().starts_with(&format!("{name}: ")), "error does not name the file: {err}");
            err
        }
    }
}

/// Asserts that `pos` is consistent (its line and column are those of its offset in `text`) and that the offset
/// lies within `start..=end` of `text`, the span of the offending construct.
#[track_caller]
fn assert_pos_within(text: &str, pos: Position, start: usize, end: usize) {
    assert_eq!(pos, Position::locate(text, pos.offset), "line/column disagree with the offset");
    assert!(
        (start as u64..=end as u64).contains(&pos.offset),
        "position {pos} not within bytes {start}..={end}: {:?}",
        &text[start.min(text.len())..end.min(text.len())]
    );
}

/// 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> u32 {
    text[..offset].matches('\n').count() as u32 + 1
}

fn find(text: &str, needle: &str) -> usize {
    text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the document"))
}

fn descriptions(parsed: &ParsedFile) -> Vec<String> {
    parsed.transactions.iter().flat_map(|t| t.lines.iter().filter_map(|l| l.description.clone())).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip write");
    enc.finish().expect("gzip finish")
}

fn latin1(text: &str) -> Vec<u8> {
    text.chars().map(|c| u8::try_from(u32::from(c)).expect("Latin-1 character")).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The baseline: the documents the other tests break are themselves valid.

#[test]
fn baseline_documents_parse() {
    let parsed = parse("ok.xml", arts_valid().as_bytes()).expect("valid ARTS");
    assert_eq!(parsed.facts.dialect, Dialect::ArtsPoslog);
    assert_eq!(parsed.transactions.len(), 2);
    let key = &parsed.transactions[1].header.key;
    assert_eq!((key.site.as_str(), key.register.as_deref(), key.sequence.as_str()), ("S1", Some("3"), "2"));
    assert_eq!(key.business_date.to_string(), "2026-01-02");
    assert_eq!(descriptions(&parsed), ["Coffee", "Tea"]);

    let parsed = parse("ok-verifone.xml", verifone_doc().as_bytes()).expect("valid Verifone");
    assert_eq!(parsed.facts.dialect, Dialect::VerifoneCommander);
    assert_eq!(parsed.transactions.len(), 1);
    assert_eq!(parsed.transactions[0].header.key.sequence, "5");
    assert_eq!(descriptions(&parsed), ["Gum"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Malformed XML.

/// A reference to NUL is refused like NUL itself; references to other control characters (a printer escape in a
/// receipt line) are kept as the characters they name, so that the sale is not lost over them.
#[test]
fn character_references_to_nul_are_malformed_and_other_controls_kept() {
    let doc = arts_valid().replace("<Description>Tea</Description>", "<Description>T&#0;ea</Description>");
    match parse_err("nul-ref.xml", doc.as_bytes()) {
        ParseError::Malformed { position, reason, .. } => {
            assert_eq!(position.line, 4);
            assert!(reason.contains("&#0;"), "{reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    let doc = arts_valid().replace("<Description>Tea</Description>", "<Description>T&#x1B;e&#7;a</Description>");
    let parsed = parse("escape.xml", doc.as_bytes()).expect("parses");
    assert_eq!(descriptions(&parsed), ["Coffee", "T\u{1b}e\u{7}a"]);
}

#[test]
fn mismatched_end_tag_is_malformed_at_the_end_tag() {
    let doc = arts_valid().replace("<Description>Tea</Description>", "<Description>Tea</Descripton>");
    let at = find(&doc, "</Descripton>");
    match parse_err("mismatch.xml", doc.as_bytes()) {
        ParseError::Malformed { file, position, reason } => {
            assert_eq!(file, "mismatch.xml");
            assert_eq!(position.line, 4, "the second transaction's line");
            assert_pos_within(&doc, position, at, at + 2);
            assert!(reason.contains("Descripton"), "reason names the bad tag: {reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn garbage_text_after_the_root_is_malformed() {
    let doc = format!("{}this is not XML\n", arts_valid());
    let at = find(&doc, "this is not XML");
    match parse_err("garbage.xml", doc.as_bytes()) {
        ParseError::Malformed { file, position, reason } => {
            assert_eq!(file, "garbage.xml");
            assert_pos_within(&doc, position, at, doc.len());
            assert!(reason.contains("outside the root"), "{reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn second_root_element_is_malformed() {
    let doc = format!("{}<POSLog xmlns=\"{ARTS_NS}\"/>\n", arts_valid());
    let at = doc.rfind("<POSLog").expect("second root");
    match parse_err("two-roots.xml", doc.as_bytes()) {
        ParseError::Malformed { position, reason, .. } => {
            assert_eq!(position.line, line_of(&doc, at));
            assert_pos_within(&doc, position, at, doc.len());
            assert!(reason.contains("after the root"), "{reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn unclosed_attribute_quote_is_malformed() {
    // The quote never closes: the rest of the file is swallowed into the attribute value.
    let doc =
        arts_valid().replace("TotalType=\"TransactionGrandAmount\">2.50", "TotalType=\"TransactionGrandAmount>2.50");
    let tag = doc.rfind("<Total TotalType=").expect("the broken tag");
    match parse_err("quote.xml", doc.as_bytes()) {
        ParseError::Malformed { file, position, .. } => {
            assert_eq!(file, "quote.xml");
            // quick-xml reports an unclosed quote at the `<` of its tag.
            assert_eq!(position.line, 4);
            assert_pos_within(&doc, position, tag, tag + "<Total TotalType=".len());
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn unclosed_attribute_quote_that_closes_later_is_malformed() {
    // The stray quote pairs with the next `"` in the file, leaving garbage inside the tag.
    let doc = arts_valid().replace(
        "<LineItem><Sale><ItemID>1</ItemID><Description>Tea",
        "<LineItem a=\"x><Sale><ItemID>1</ItemID><Description>Tea",
    );
    assert!(matches!(parse_err("quote2.xml", doc.as_bytes()), ParseError::Malformed { .. }));
}

#[test]
fn raw_less_than_in_an_attribute_value_is_malformed() {
    // XML 1.0 forbids a raw `<` in an attribute value (`&lt;` is the way to write one); quick-xml reads it.
    for (name, value) in [("lt.xml", "a<b"), ("lt-tab.xml", "a\t<b")] {
        let doc = verifone_doc().replace("<trLine type=\"plu\">", &format!("<trLine type=\"plu\" note=\"{value}\">"));
        match parse_err(name, doc.as_bytes()) {
            ParseError::Malformed { reason, .. } => {
                assert!(reason.contains("attribute note") && reason.contains("raw '<'"), "{reason}")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }
    let escaped = verifone_doc().replace("<trLine type=\"plu\">", "<trLine type=\"plu\" note=\"a&lt;b\">");
    let parsed = parse("lt-escaped.xml", escaped.as_bytes()).expect("an escaped < parses");
    assert!(parsed.transactions[0].bronze.iter().any(|(k, v)| k.ends_with("_attr_note") && v == "a<b"));
}

// ---------------------------------------------------------------------------------------------------------------
// Truncation.

#[test]
fn file_cut_inside_element_text_is_truncated() {
    let doc = arts_valid();
    let cut = find(&doc, "<Description>Tea") + "<Description>Te".len();
    let text = &doc[..cut];
    match parse_err("cut.xml", text.as_bytes()) {
        ParseError::Truncated { file, position, open, innermost } => {
            assert_eq!(file, "cut.xml");
            // POSLog / Transaction / RetailTransaction / LineItem / Sale / Description.
            assert_eq!(open, 6);
            assert_eq!(innermost, "Description");
            assert_eq!(position, Position::locate(text, cut as u64));
            assert_eq!((position.offset, position.line), (cut as u64, 4));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn file_cut_between_elements_is_truncated() {
    let doc = arts_valid();
    let cut = find(&doc, "</RetailTransaction></Transaction>\n</POSLog>") + "</RetailTransaction>".len();
    match parse_err("cut2.xml", &doc.as_bytes()[..cut]) {
        ParseError::Truncated { open, innermost, position, .. } => {
            assert_eq!((open, innermost.as_str()), (2, "Transaction"));
            assert_eq!(position.offset, cut as u64);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn file_cut_before_the_root_closes_is_truncated() {
    let doc = arts_valid();
    let cut = find(&doc, "</POSLog>");
    match parse_err("cut3.xml", &doc.as_bytes()[..cut]) {
        ParseError::Truncated { open, innermost, .. } => assert_eq!((open, innermost.as_str()), (1, "POSLog")),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn gzip_cut_short_fails_to_decompress() {
    let gz = gzip(arts_valid().as_bytes());
    let err = parse_err("cut.xml.gz", &gz[..gz.len() / 2]);
    assert!(
        matches!(err, ParseError::Decompress { compression: "gzip", .. } | ParseError::Truncated { .. }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Character encodings.

#[test]
fn declared_iso_8859_1_is_decoded() {
    let doc = arts_valid().replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>");
    let doc = doc.replace("Coffee", "Café crème");
    let bytes = latin1(&doc);
    assert!(bytes.contains(&0xE9), "é is the single byte 0xE9");
    let parsed = parse("latin1.xml", &bytes).expect("ISO-8859-1 parses");
    assert_eq!(descriptions(&parsed), ["Café crème", "Tea"]);
    // encoding_rs decodes the ISO-8859-1 label as its superset windows-1252, as browsers do.
    assert_eq!(parsed.facts.encoding, "windows-1252");
}

#[test]
fn declared_windows_1252_is_decoded() {
    let doc = arts_valid().replace("<?xml version=\"1.0\"?>", "<?xml version='1.0' encoding='windows-1252'?>");
    let mut bytes = doc.replace("Coffee", "Caf\u{e9} @").into_bytes();
    // 0xE9 is é; 0x80 is € in windows-1252 (a C1 control in ISO-8859-1): replace the placeholders byte-wise.
    let i = bytes.windows(2).position(|w| w == "é".as_bytes()).expect("é");
    bytes.splice(i..i + 2, [0xE9]);
    let j = bytes.iter().position(|&b| b == b'@').expect("@");
    bytes[j] = 0x80;
    let parsed = parse("cp1252.xml", &bytes).expect("windows-1252 parses");
    assert_eq!(descriptions(&parsed), ["Café €", "Tea"]);
    assert_eq!(parsed.facts.encoding, "windows-1252");
}

#[test]
fn invalid_utf8_without_declaration_names_the_position() {
    let doc = arts_valid().replace("Coffee", "Caf\u{e9}");
    let mut bytes = doc.clone().into_bytes();
    let i = bytes.windows(2).position(|w| w == "é".as_bytes()).expect("é");
    bytes.splice(i..i + 2, [0xE9]); // Latin-1 é in a file that declares nothing, so must be UTF-8.
    match parse_err("bad-utf8.xml", &bytes) {
        ParseError::InvalidEncoding { file, encoding, position } => {
            assert_eq!(file, "bad-utf8.xml");
            assert_eq!(encoding, "UTF-8");
            assert_eq!(position.offset, i as u64);
            assert_eq!(position.line, 3);
            let line_start = doc[..i].rfind('\n').expect("newline") + 1;
            assert_eq!(position.column as usize, i - line_start + 1);
        }
        other => panic!("expected InvalidEncoding, got {other:?}"),
    }
}

#[test]
fn invalid_utf8_with_utf8_declaration_names_the_position() {
    let doc = arts_valid().replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let mut bytes = doc.into_bytes();
    let i = bytes.windows(6).position(|w| w == b"Coffee").expect("Coffee") + 3;
    bytes[i] = 0xFF;
    match parse_err("bad-utf8-decl.xml", &bytes) {
        ParseError::InvalidEncoding { encoding: "UTF-8", position, .. } => {
            assert_eq!((position.offset, position.line), (i as u64, 3));
        }
        other => panic!("expected InvalidEncoding, got {other:?}"),
    }
}

#[test]
fn unknown_declared_encoding_is_unsupported() {
    let doc = arts_valid().replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"EBCDIC-KLINGON\"?>");
    match parse_err("klingon.xml", doc.as_bytes()) {
        ParseError::UnsupportedEncoding { file, label } => {
            assert_eq!(file, "klingon.xml");
            assert_eq!(label, "EBCDIC-KLINGON");
        }
        other => panic!("expected UnsupportedEncoding, got {other:?}"),
    }
}

/// A file that declares utf-16 but has no BOM, its declaration readable as ASCII, is UTF-8 under a wrong label (.NET
/// writes such files): read as UTF-8, not refused as an unsupported encoding. Bytes that are not UTF-8 under that
/// label are refused where the first bad one is. A UTF-32 byte order mark is named as such.
#[test]
fn a_utf16_label_on_utf8_bytes_reads_as_utf8_and_utf32_is_named() {
    let doc = arts_valid()
        .replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"utf-16\"?>")
        .replace("Coffee", "Café");
    let parsed = parse("dotnet.xml", doc.as_bytes()).expect("UTF-8 under a utf-16 label parses");
    assert_eq!(parsed.facts.encoding, "UTF-8");
    assert_eq!(parsed.transactions.len(), 2);
    let descriptions: Vec<_> =
        parsed.transactions.iter().flat_map(|t| &t.lines).map(|l| l.description.clone()).collect();
    assert!(descriptions.contains(&Some("Café".to_owned())), "{descriptions:?}");
    let mut bytes = doc.into_bytes();
    let i = bytes.windows(3).position(|w| w == b"Caf").expect("Caf") + 3;
    bytes[i] = 0xFF;
    assert!(matches!(parse_err("bad.xml", &bytes), ParseError::InvalidEncoding { encoding: "UTF-8", .. }));

    let utf32: Vec<u8> =
        [0xFF, 0xFE, 0, 0].into_iter().chain("<a/>".chars().flat_map(|c| (c as u32).to_le_bytes())).collect();
    match parse_err("utf32.xml", &utf32) {
        ParseError::UnsupportedEncoding { label, .. } => assert!(label.contains("UTF-32"), "{label}"),
        other => panic!("expected UnsupportedEncoding, got {other:?}"),
    }
}

#[test]
fn utf8_bom_is_accepted() {
    let doc = arts_valid().replace("Coffee", "Café");
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice(doc.as_bytes());
    let parsed = parse("bom.xml", &bytes).expect("UTF-8 with BOM parses");
    assert_eq!(descriptions(&parsed), ["Café", "Tea"]);
    assert_eq!(parsed.facts.encoding, "UTF-8");
}

#[test]
fn utf16le_with_bom_is_accepted() {
    let doc = arts_valid()
        .replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"UTF-16\"?>")
        .replace("Coffee", "Café");
    let mut bytes = vec![0xFF, 0xFE];
    for unit in doc.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    let parsed = parse("utf16.xml", &bytes).expect("UTF-16LE with BOM parses");
    assert_eq!(descriptions(&parsed), ["Café", "Tea"]);
    assert_eq!(parsed.facts.encoding, "UTF-16LE");
    assert_eq!(parsed.transactions.len(), 2);
}

#[test]
fn crlf_line_endings_leave_no_carriage_returns() {
    let doc = arts_valid()
        .replace("<Description>Tea</Description>", "<Description>Tea\nwith milk</Description>")
        .replace('\n', "\r\n");
    let parsed = parse("crlf.xml", doc.as_bytes()).expect("CRLF parses");
    assert_eq!(parsed.transactions.len(), 2);
    // XML normalises CRLF to LF inside text (XML 1.0 §2.11).
    assert_eq!(descriptions(&parsed), ["Coffee", "Tea\nwith milk"]);
    for tx in &parsed.transactions {
        for (key, value) in tx.bronze.iter() {
            assert!(!key.contains('\r') && !value.contains('\r'), "stray CR in bronze {key:?} = {value:?}");
        }
        assert!(!tx.header.key.sequence.contains('\r'));
    }
    for (key, value) in parsed.envelope.iter() {
        assert!(!value.contains('\r'), "stray CR in envelope {key:?} = {value:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Compression and archives.

#[test]
fn gzip_parses_identically_to_plain() {
    let plain = arts_valid();
    let from_plain = parse("day.xml", plain.as_bytes()).expect("plain");
    let from_gzip = parse("day.xml.gz", &gzip(plain.as_bytes())).expect("gzip");
    let json = |p: &ParsedFile| serde_json::to_value(&p.transactions).expect("json");
    assert_eq!(json(&from_plain), json(&from_gzip));
    assert_eq!(from_plain.envelope, from_gzip.envelope);
    assert_eq!(from_plain.facts.xml_bytes, from_gzip.facts.xml_bytes);
    assert_eq!(from_plain.facts.transaction_count, from_gzip.facts.transaction_count);
    assert_eq!(from_plain.facts.compression, poslake::model::Compression::None);
    assert_eq!(from_gzip.facts.compression, poslake::model::Compression::Gzip);
    assert_eq!(from_gzip.facts.bytes, gzip(plain.as_bytes()).len() as u64);
}

#[test]
fn gzip_detected_by_magic_not_by_name() {
    let gz = gzip(arts_valid().as_bytes());
    let parsed = parse("misnamed.xml", &gz).expect("gzip under a .xml name");
    assert_eq!(parsed.transactions.len(), 2);
}

#[test]
fn gzip_bomb_is_too_large() {
    // 64 MiB of spaces compress to ~64 KiB; the limit stops decompression at 1 MiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&chunk).expect("write");
    }
    let bomb = enc.finish().expect("finish");
    assert!(bomb.len() < 1 << 20, "the bomb itself is small: {}", bomb.len());
    let opts = ParseOptions { max_decompressed_bytes: 1 << 20, ..ParseOptions::default() };
    match parse_with_err("bomb.xml.gz", &bomb, &opts) {
        ParseError::TooLarge { file, limit } => {
            assert_eq!(file, "bomb.xml.gz");
            assert_eq!(limit, 1 << 20);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn plain_file_over_the_limit_is_too_large() {
    let doc = arts_valid();
    let opts = ParseOptions { max_decompressed_bytes: 100, ..ParseOptions::default() };
    assert!(matches!(parse_with_err("big.xml", doc.as_bytes(), &opts), ParseError::TooLarge { limit: 100, .. }));
}

#[test]
fn zip_archive_is_unsupported() {
    // A local file header: PK\x03\x04, then version, flags … as a zip tool writes them.
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00".to_vec();
    zip.extend_from_slice(&[0; 20]);
    zip.extend_from_slice(b"day.xml");
    match parse_err("day.zip", &zip) {
        ParseError::UnsupportedArchive { file, format } => {
            assert_eq!(file, "day.zip");
            assert_eq!(format, "zip");
        }
        other => panic!("expected UnsupportedArchive, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// DOCTYPE and entities.

#[test]
fn billion_laughs_entity_declaration_is_refused() {
    let doctype = "<!DOCTYPE POSLog [\n\
                   <!ENTITY lol \"lol\">\n\
                   <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n\
                   <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n\
                   <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n\
                   ]>";
    let doc = arts_valid()
        .replace("<?xml version=\"1.0\"?>\n", &format!("<?xml version=\"1.0\"?>\n{doctype}\n"))
        .replace("Coffee", "&lol3;");
    let start = find(&doc, "<!DOCTYPE");
    match parse_err("lol.xml", doc.as_bytes()) {
        ParseError::EntityDeclaration { file, position } => {
            assert_eq!(file, "lol.xml");
            assert_pos_within(&doc, position, start, start + doctype.len());
            assert!((2..=7).contains(&position.line), "{position}");
        }
        other => panic!("expected EntityDeclaration, got {other:?}"),
    }
}

#[test]
fn external_entity_declaration_is_refused() {
    let doc = arts_valid()
        .replace(
            "<?xml version=\"1.0\"?>\n",
            "<?xml version=\"1.0\"?>\n<!DOCTYPE POSLog [ <!ENTITY xxe SYSTEM \"file:///etc/passwd\"> ]>\n",
        )
        .replace("Coffee", "&xxe;");
    assert!(matches!(parse_err("xxe.xml", doc.as_bytes()), ParseError::EntityDeclaration { .. }));
}

#[test]
fn undeclared_entity_in_text_is_unknown() {
    let doc = arts_valid().replace("Coffee", "Coffee &foo; beans");
    let at = find(&doc, "&foo;");
    match parse_err("entity.xml", doc.as_bytes()) {
        ParseError::UnknownEntity { file, position, name } => {
            assert_eq!(file, "entity.xml");
            assert_eq!(name, "foo");
            assert_eq!(position.line, 3);
            assert_pos_within(&doc, position, at, at + "&foo;".len());
        }
        other => panic!("expected UnknownEntity, got {other:?}"),
    }
}

#[test]
fn undeclared_entity_in_attribute_is_unknown() {
    let doc = arts_valid().replace("TotalType=\"TransactionGrandAmount\">2.50", "TotalType=\"Grand&foo;\">2.50");
    let tag = find(&doc, "<Total TotalType=\"Grand&foo;\">");
    match parse_err("attr-entity.xml", doc.as_bytes()) {
        ParseError::UnknownEntity { file, position, name } => {
            assert_eq!(file, "attr-entity.xml");
            assert_eq!(name, "foo");
            assert_eq!(position.line, 4);
            assert_pos_within(&doc, position, tag, tag + "<Total TotalType=\"Grand&foo;\">".len());
        }
        other => panic!("expected UnknownEntity, got {other:?}"),
    }
}

#[test]
fn attribute_values_are_normalized_and_kept_whole() {
    // XML 1.0 §3.3.3: references expand, and tab, CR, LF and CRLF each become one space; a value without them is
    // taken as it stands, multi-byte characters included.
    let doc = verifone_doc().replace(
        "<trLine type=\"plu\">",
        "<trLine type=\"plu\" note=\"Tea &amp; cake\tfor\r\ntwo\" libellé=\"crème brûlée\" ref=\"&#233;t&#xE9;\">",
    );
    let parsed = parse("attrs.xml", doc.as_bytes()).expect("attributes parse");
    let tx = &parsed.transactions[0];
    let value = |suffix: &str| {
        tx.bronze
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| v.to_owned())
            .unwrap_or_else(|| panic!("no bronze key ends with {suffix}"))
    };
    assert_eq!(value("_attr_note"), "Tea & cake for two");
    assert_eq!(value("_attr_libellé"), "crème brûlée");
    assert_eq!(value("_attr_ref"), "été");
    assert_eq!(value("trLine_attr_type"), "plu");
}

#[test]
fn predefined_and_character_references_are_expanded() {
    let doc = arts_valid().replace("Coffee", "Tea &amp; cake &lt;3 &#233;&#xE9; &quot;&apos;&gt;");
    let parsed = parse("refs.xml", doc.as_bytes()).expect("predefined entities parse");
    assert_eq!(descriptions(&parsed)[0], "Tea & cake <3 éé \"'>");
}

#[test]
fn system_doctype_is_never_fetched() {
    // Neither the network address nor the local file may be read: the parse has to come out the same whatever
    // they hold, and fast. The local path is a file this test writes with an entity that would break the parse
    // if it were read and expanded.
    let dir = tempfile::tempdir().expect("tempdir");
    let dtd = dir.path().join("evil.dtd");
    std::fs::write(&dtd, "<!ENTITY evil \"EVIL\">").expect("write dtd");
    let doctypes = [
        "<!DOCTYPE POSLog SYSTEM \"http://127.0.0.1:9/never-fetched.dtd\">".to_owned(),
        format!("<!DOCTYPE POSLog SYSTEM \"file://{}\">", dtd.display()),
        "<!DOCTYPE POSLog PUBLIC \"-//NRF//POSLog//EN\" \"https://example.invalid/poslog.dtd\">".to_owned(),
    ];
    for doctype in doctypes {
        let doc = arts_valid().replace("<?xml version=\"1.0\"?>\n", &format!("<?xml version=\"1.0\"?>\n{doctype}\n"));
        let started = std::time::Instant::now();
        let first = parse("system.xml", doc.as_bytes()).expect("a SYSTEM DOCTYPE without ENTITY parses");
        let second = parse("system.xml", doc.as_bytes()).expect("again");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(descriptions(&first), ["Coffee", "Tea"]);
        assert_eq!(
            serde_json::to_value(&first.transactions).expect("json"),
            serde_json::to_value(&second.transactions).expect("json")
        );

        // A reference to an entity that only the external DTD would declare stays unknown.
        let with_ref = doc.replace("Coffee", "&evil;");
        let a = parse_err("system-ref.xml", with_ref.as_bytes());
        assert!(matches!(&a, ParseError::UnknownEntity { name, .. } if name == "evil"), "{a:?}");
        assert_eq!(a, parse_err("system-ref.xml", with_ref.as_bytes()), "deterministic");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Resource limits.

#[test]
fn very_deep_nesting_is_too_deep() {
    let depth = 10_000;
    let mut doc = format!("<?xml version=\"1.0\"?>\n<POSLog xmlns=\"{ARTS_NS}\">");
    doc.push_str(&"<a>".repeat(depth));
    doc.push_str(&"</a>".repeat(depth));
    doc.push_str("</POSLog>\n");
    match parse_err("deep.xml", doc.as_bytes()) {
        ParseError::TooDeep { file, position, limit } => {
            assert_eq!(file, "deep.xml");
            assert_eq!(limit, 128);
            assert_eq!(position.line, 2);
            // The 129th element (POSLog is the first) is the one refused: the 128th `<a>`.
            let root_end = find(&doc, "/\">") + 3;
            let refused = root_end + 127 * 3;
            assert_pos_within(&doc, position, refused, refused + 3);
        }
        other => panic!("expected TooDeep, got {other:?}"),
    }
}

#[test]
fn deep_nesting_under_a_raised_limit_does_not_overflow_the_stack() {
    let depth = 10_000;
    let tx = arts_tx(1, "Deep", "1.00");
    let deep = format!("{}{}", "<x>".repeat(depth), "</x>".repeat(depth));
    let doc = arts_doc(&[tx.replace("<RetailTransaction>", &format!("{deep}<RetailTransaction>"))]);
    let opts = ParseOptions { max_depth: depth + 10, ..ParseOptions::default() };
    let parsed = parse_file("deep-ok.xml", doc.as_bytes(), &opts).expect("parses under the raised limit");
    assert_eq!(descriptions(&parsed), ["Deep"]);
}

#[test]
fn huge_text_node_is_text_too_large() {
    let limit = 4096;
    let big = "x".repeat(limit + 1);
    let doc = arts_valid().replace("Coffee", &big);
    let start = find(&doc, "<Description>x");
    let opts = ParseOptions { max_text_bytes: limit, ..ParseOptions::default() };
    match parse_with_err("big-text.xml", doc.as_bytes(), &opts) {
        ParseError::TextTooLarge { file, position, limit: l } => {
            assert_eq!(file, "big-text.xml");
            assert_eq!(l, limit);
            assert_eq!(position.line, 3);
            assert_pos_within(
                &doc,
                position,
                start,
                start + "<Description>".len() + big.len() + "</Description>".len(),
            );
        }
        other => panic!("expected TextTooLarge, got {other:?}"),
    }
    // Exactly at the limit is fine.
    let doc = arts_valid().replace("Coffee", &"x".repeat(limit));
    parse_file("at-limit.xml", doc.as_bytes(), &opts).expect("text of exactly the limit parses");
}

#[test]
fn huge_text_node_over_the_default_limit() {
    let big = "y".repeat((1 << 20) + 1);
    let doc = arts_valid().replace("Coffee", &big);
    assert!(matches!(
        parse_err("big-default.xml", doc.as_bytes()),
        ParseError::TextTooLarge { limit, .. } if limit == 1 << 20
    ));
}

#[test]
fn huge_text_split_by_references_is_still_counted() {
    // Text, references and CDATA pieces of one element add up against the limit.
    let piece = "z".repeat(1000);
    let text = format!("{piece}&amp;{piece}<![CDATA[{piece}]]>{piece}&#65;{piece}");
    let doc = arts_valid().replace("Coffee", &text);
    let opts = ParseOptions { max_text_bytes: 4000, ..ParseOptions::default() };
    assert!(matches!(
        parse_with_err("split-text.xml", doc.as_bytes(), &opts),
        ParseError::TextTooLarge { limit: 4000, .. }
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// Missing and invalid values.

/// The second transaction with `element` removed must fail with MissingField naming `field` and ordinal 2.
#[track_caller]
fn assert_missing(element: &str, field: &str) {
    let second = arts_tx(2, "Tea", "2.50");
    let open = format!("<{element}>");
    let close = format!("</{element}>");
    let from = second.find(&open).expect("element in the transaction");
    let to = second.find(&close).expect("end tag") + close.len();
    let broken = format!("{}{}", &second[..from], &second[to..]);
    let doc = arts_doc(&[arts_tx(1, "Coffee", "1.00"), broken.clone()]);
    let end = find(&doc, &broken) + broken.len();
    match parse_err("missing.xml", doc.as_bytes()) {
        ParseError::MissingField { file, position, transaction, field: f } => {
            assert_eq!(file, "missing.xml");
            assert_eq!(f, field);
            assert_eq!(transaction, 2, "the second transaction in the file");
            // "ending at": the end of the transaction's end tag.
            assert_eq!(position.line, 4);
            assert_pos_within(&doc, position, end - "</Transaction>".len(), end);
        }
        other => panic!("without <{element}>: expected MissingField, got {other:?}"),
    }
}

#[test]
fn transaction_without_sequence_is_missing_field() {
    assert_missing("SequenceNumber", "transaction sequence");
}

#[test]
fn transaction_without_site_is_missing_field() {
    assert_missing("RetailStoreID", "site");
}

#[test]
fn transaction_without_business_date_is_missing_field() {
    assert_missing("BusinessDayDate", "business date");
}

#[test]
fn transaction_without_register_is_missing_field() {
    // ARTS keys by workstation: the sequence restarts per register.
    assert_missing("WorkstationID", "register");
}

#[test]
fn verifone_transaction_without_sequence_is_missing_field() {
    let doc = verifone_doc().replace("<trSeq>5</trSeq>", "");
    match parse_err("vf-missing.xml", doc.as_bytes()) {
        ParseError::MissingField { field, transaction, .. } => {
            assert_eq!((field, transaction), ("transaction sequence", 1));
        }
        other => panic!("expected MissingField, got {other:?}"),
    }
}

#[test]
fn comma_decimal_amount_is_invalid_value() {
    let doc = arts_doc(&[arts_tx(1, "Coffee", "1.00"), arts_tx(2, "Tea", "1.00").replacen("1.00", "12,50", 1)]);
    let start = find(&doc, "<ExtendedAmount>12,50");
    match parse_err("comma.xml", doc.as_bytes()) {
        ParseError::InvalidValue { file, position, field, value, reason } => {
            assert_eq!(file, "comma.xml");
            assert_eq!(field, "extended amount");
            assert_eq!(value, "12,50");
            assert!(!reason.is_empty());
            assert_eq!(position.line, 4);
            assert_pos_within(&doc, position, start, start + "<ExtendedAmount>12,50</ExtendedAmount>".len());
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }
}

#[test]
fn invalid_business_date_is_invalid_value() {
    let doc = arts_valid().replacen("2026-01-02", "02/01/2026", 1);
    match parse_err("date.xml", doc.as_bytes()) {
        ParseError::InvalidValue { field, value, position, .. } => {
            assert_eq!((field, value.as_str()), ("business date", "02/01/2026"));
            assert_eq!(position.line, 3);
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }
}

#[test]
fn invalid_value_in_total_names_the_field() {
    let doc = arts_valid().replace("TransactionGrandAmount\">2.50", "TransactionGrandAmount\">two fifty");
    match parse_err("total.xml", doc.as_bytes()) {
        ParseError::InvalidValue { field, value, .. } => {
            assert_eq!((field, value.as_str()), ("total amount", "two fifty"));
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dialects and empty input.

#[test]
fn unknown_root_is_unknown_dialect() {
    let doc = "<?xml version=\"1.0\"?>\n<Foo xmlns=\"urn:example:foo\"><Bar/></Foo>\n";
    match parse_err("foo.xml", doc.as_bytes()) {
        ParseError::UnknownDialect { file, position, root, namespace } => {
            assert_eq!(file, "foo.xml");
            assert_eq!((position.line, position.column), (2, 30), "just past the root's start tag");
            assert_eq!(root, "Foo");
            assert_eq!(namespace.as_deref(), Some("urn:example:foo"));
        }
        other => panic!("expected UnknownDialect, got {other:?}"),
    }
    match parse_err("foo2.xml", b"<Foo/>") {
        ParseError::UnknownDialect { root, namespace, .. } => assert_eq!((root.as_str(), namespace), ("Foo", None)),
        other => panic!("expected UnknownDialect, got {other:?}"),
    }
}

#[test]
fn empty_file_is_empty() {
    match parse_err("empty.xml", b"") {
        ParseError::Empty { file } => assert_eq!(file, "empty.xml"),
        other => panic!("expected Empty, got {other:?}"),
    }
    // A gzip member holding nothing is empty too.
    assert!(matches!(parse_err("empty.xml.gz", &gzip(b"")), ParseError::Empty { .. }));
}

#[test]
fn file_without_root_element_is_an_error() {
    for (name, bytes) in [
        ("blank.xml", &b"  \n\t\n"[..]),
        ("decl-only.xml", &b"<?xml version=\"1.0\"?>\n"[..]),
        ("comment-only.xml", &b"<!-- nothing here -->"[..]),
    ] {
        let err = parse_err(name, bytes);
        assert!(matches!(err, ParseError::Empty { .. } | ParseError::Malformed { .. }), "{name}: {err:?}");
    }
}

#[test]
fn forced_dialect_that_does_not_match_the_root_is_mismatch() {
    let opts = ParseOptions { dialect: Some(Dialect::VerifoneCommander), ..ParseOptions::default() };
    match parse_with_err("forced.xml", arts_valid().as_bytes(), &opts) {
        ParseError::DialectMismatch { file, position, dialect, root } => {
            assert_eq!(file, "forced.xml");
            assert!(position.line >= 1 && position.offset > 0, "{position:?}");
            assert_eq!(dialect, "verifone-commander");
            assert_eq!(root, "POSLog");
        }
        other => panic!("expected DialectMismatch, got {other:?}"),
    }
    let opts = ParseOptions { dialect: Some(Dialect::ArtsPoslog), ..ParseOptions::default() };
    assert!(matches!(
        parse_with_err("forced2.xml", verifone_doc().as_bytes(), &opts),
        ParseError::DialectMismatch { dialect: "arts-poslog", ref root, .. } if root == "transSet"
    ));
}

#[test]
fn forced_dialect_that_matches_the_root_parses() {
    let opts = ParseOptions { dialect: Some(Dialect::ArtsPoslog), ..ParseOptions::default() };
    let parsed = parse_file("forced-ok.xml", arts_valid().as_bytes(), &opts).expect("forced ARTS");
    assert_eq!(parsed.facts.dialect, Dialect::ArtsPoslog);
}

#[test]
fn every_error_kind_is_stable_and_not_retryable() {
    let errors = [
        parse_err("a", b""),
        parse_err("a", b"PK\x03\x04"),
        parse_err("a", b"<Foo/>"),
        parse_err("a", b"<POSLog><Transaction>"),
    ];
    let kinds: Vec<_> = errors.iter().map(ParseError::kind).collect();
    assert_eq!(kinds, ["empty", "unsupported_archive", "unknown_dialect", "truncated"]);
    assert!(errors.iter().all(|e| !e.is_retryable()));
}

// ---------------------------------------------------------------------------------------------------------------
// Properties: nothing panics, and every error names the file.

const PROP_NAME: &str = "prop-input.xml";

/// Parses with detection and with every forced dialect; asserts the outcome is deterministic and that an error
/// names the file and carries a sane position.
fn check_never_panics(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut all = vec![ParseOptions::default()];
    all.extend(Dialect::ALL.iter().map(|&d| ParseOptions { dialect: Some(d), ..ParseOptions::default() }));
    for opts in &all {
        match parse_file(PROP_NAME, bytes, opts) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.facts.transaction_count as usize, parsed.transactions.len());
            }
            Err(err) => {
                let shown = err.to_string();
                prop_assert!(shown.starts_with(&format!("{PROP_NAME}: ")), "error does not name the file: {}", shown);
                if let Some(pos) = err.position() {
                    prop_assert!(pos.line >= 1 && pos.column >= 1, "{:?}", pos);
                }
                prop_assert_eq!(Err(err), parse_file(PROP_NAME, bytes, opts).map(|_| ()), "not deterministic");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<prop::sample::Index>(), prop::sample::select(b"<>/&;\"'=?![]-\r\n\0\xff\xe9".to_vec()))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Flip(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Mutation::Delete(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Duplicate(a, b) => {
            let (a, b) = (a.index(bytes.len()), b.index(bytes.len()));
            let (from, to) = (a.min(b), a.max(b).min(a.min(b) + 64));
            let piece = bytes[from..to].to_vec();
            bytes.splice(to..to, piece);
        }
    }
}

fn valid_documents() -> Vec<Vec<u8>> {
    let arts = arts_valid();
    vec![
        arts.clone().into_bytes(),
        verifone_doc().into_bytes(),
        gzip(arts.as_bytes()),
        latin1(
            &arts
                .replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>")
                .replace("Coffee", "Café"),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_never_panics(&bytes)?;
    }

    #[test]
    fn arbitrary_xmlish_text_never_panics(
        text in "(<[A-Za-z]{1,8}( [a-z]{1,4}=\"[^\"<]{0,6}\")?/?>|</[A-Za-z]{1,8}>|&[a-z#0-9]{0,5};|<!\\[CDATA\\[[a-z]{0,5}\\]\\]>|[a-zA-Z0-9 .,\n]{0,12}){0,40}"
    ) {
        check_never_panics(text.as_bytes())?;
        let rooted = format!("<POSLog xmlns=\"{ARTS_NS}\"><Transaction>{text}</Transaction></POSLog>");
        check_never_panics(rooted.as_bytes())?;
    }

    #[test]
    fn mutated_valid_documents_never_panic(
        which in 0usize..4,
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = valid_documents().swap_remove(which);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_never_panics(&bytes)?;
    }

    #[test]
    fn every_truncation_of_a_valid_document_fails_cleanly(cut in any::<prop::sample::Index>()) {
        let doc = arts_valid();
        // Cut anywhere before the root closes (the trailing newline after `</POSLog>` is not needed).
        let end = find(&doc, "</POSLog>") + 1;
        let cut = cut.index(end);
        let result = parse_file(PROP_NAME, &doc.as_bytes()[..cut], &ParseOptions::default());
        prop_assert!(result.is_err(), "a document cut at byte {} parsed", cut);
        check_never_panics(&doc.as_bytes()[..cut])?;
    }
}

// Regressions for bugs found while writing these tests.

#[test]
fn file_cut_inside_a_tag_is_truncated() {
    let doc = arts_valid();
    let cut = find(&doc, "<Description") + "<Descri".len();
    match parse_err("cut-tag.xml", &doc.as_bytes()[..cut]) {
        ParseError::Truncated { file, open, .. } => {
            assert_eq!(file, "cut-tag.xml");
            assert!(open >= 3, "open elements: {open}");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn cdata_line_endings_are_normalised() {
    let doc = arts_doc(&[arts_tx(1, "<![CDATA[a\r\nb]]>", "1.00")]);
    let parsed = parse("cdata.xml", doc.as_bytes()).expect("parses");
    assert_eq!(descriptions(&parsed), vec!["a\nb".to_owned()]);
}

#[test]
fn whitespace_only_file_is_empty() {
    assert!(matches!(parse_err("blank.xml", b"  \n\t \r\n"), ParseError::Empty { .. }));
}

#[test]
fn repeated_siblings_get_distinct_bronze_keys() {
    let doc = arts_doc(&["<Transaction><RetailStoreID>1</RetailStoreID><WorkstationID>2</WorkstationID><SequenceNumber>3</SequenceNumber>\
         <BusinessDayDate>2026-01-02</BusinessDayDate><RetailTransaction>\
         <LineItem><Sale><ItemID>1</ItemID></Sale></LineItem><LineItem><Sale><ItemID>2</ItemID></Sale></LineItem>\
         <LineItem><Sale><ItemID>3</ItemID></Sale></LineItem></RetailTransaction></Transaction>".to_string()]);
    let parsed = parse("repeats.xml", doc.as_bytes()).expect("parses");
    let bronze = &parsed.transactions[0].bronze;
    assert_eq!(bronze.get("Transaction/RetailTransaction/LineItem/Sale/ItemID"), Some("1"));
    assert_eq!(bronze.get("Transaction/RetailTransaction/LineItem[2]/Sale/ItemID"), Some("2"));
    assert_eq!(bronze.get("Transaction/RetailTransaction/LineItem[3]/Sale/ItemID"), Some("3"));
}

/// A transaction with the given XML inside it (after its key fields), as the only transaction of an ARTS file.
fn arts_with(inner: &str) -> String {
    arts_doc(&[format!(
        "<Transaction><RetailStoreID>1</RetailStoreID><WorkstationID>2</WorkstationID>\
         <SequenceNumber>3</SequenceNumber><BusinessDayDate>2026-01-02</BusinessDayDate>{inner}</Transaction>"
    )])
}

/// Past the few names a linear scan serves, children are counted through an index: every name still gets its
/// own count, a name first seen late among many keeps counting, and a wide element nested in a wide element
/// counts apart from it.
#[test]
fn wide_elements_count_each_child_name_apart() {
    let mut inner = String::from("<Wide>");
    for i in 0..100 {
        inner.push_str(&format!("<e{i}>{i}</e{i}>"));
    }
    inner.push_str("<e7>again</e7><e99>again</e99><Inner>");
    for i in 0..40 {
        inner.push_str(&format!("<e{i}>in{i}</e{i}>"));
    }
    inner.push_str("<e0>in-again</e0></Inner><e0>third</e0><e0>fourth</e0></Wide>");
    let parsed = parse("wide.xml", arts_with(&inner).as_bytes()).expect("parses");
    let bronze = &parsed.transactions[0].bronze;
    assert_eq!(bronze.get("Transaction/Wide/e0"), Some("0"));
    assert_eq!(bronze.get("Transaction/Wide/e99"), Some("99"));
    assert_eq!(bronze.get("Transaction/Wide/e7[2]"), Some("again"));
    assert_eq!(bronze.get("Transaction/Wide/e99[2]"), Some("again"));
    assert_eq!(bronze.get("Transaction/Wide/Inner/e39"), Some("in39"));
    assert_eq!(bronze.get("Transaction/Wide/Inner/e0[2]"), Some("in-again"));
    assert_eq!(bronze.get("Transaction/Wide/e0[2]"), Some("third"));
    assert_eq!(bronze.get("Transaction/Wide/e0[3]"), Some("fourth"));
}

/// Past the few attribute names a list serves, they go in a set: a repeat is still caught, and every attribute
/// still lands in bronze.
#[test]
fn a_repeat_among_many_attributes_is_malformed() {
    let attrs: String = (0..200).map(|i| format!(" a{i}=\"{i}\"")).collect();
    let parsed = parse("many.xml", arts_with(&format!("<Many{attrs}/>")).as_bytes()).expect("parses");
    let bronze = &parsed.transactions[0].bronze;
    assert_eq!(bronze.get("Transaction/Many_attr_a0"), Some("0"));
    assert_eq!(bronze.get("Transaction/Many_attr_a199"), Some("199"));
    let doc = arts_with(&format!("<Many{attrs} a150=\"again\"/>"));
    match parse_err("many.xml", doc.as_bytes()) {
        ParseError::Malformed { reason, .. } => {
            assert!(reason.contains("a150") && reason.contains("twice"), "{reason}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// Long names repeated down a deep path for every value would make a flat record thousands of times the file:
/// refused with its own kind before memory runs out. An attribute value is held to the limit element text is.
#[test]
fn a_flat_record_out_of_proportion_to_the_file_is_refused() {
    let names: Vec<String> = (0..10).map(|k| format!("N{k}{}", "x".repeat(1_000))).collect();
    let mut inner: String = names.iter().map(|n| format!("<{n}>")).collect();
    inner.push_str(&"<L>1</L>".repeat(2_000));
    inner.extend(names.iter().rev().map(|n| format!("</{n}>")));
    let doc = arts_with(&inner);
    let err = parse_err("long-names.xml", doc.as_bytes());
    assert!(matches!(err, ParseError::RecordTooLarge { .. }), "{err:?}");
    assert_eq!(err.kind(), "record_too_large");

    let opts = ParseOptions { max_text_bytes: 100, ..ParseOptions::default() };
    let doc = arts_with(&format!("<Note text=\"{}\"/>", "y".repeat(101)));
    assert!(matches!(parse_with_err("attr.xml", doc.as_bytes(), &opts), ParseError::TextTooLarge { .. }));
}

#[test]
fn whitespace_inside_a_value_is_kept_and_only_its_ends_are_trimmed() {
    // Leading whitespace is skipped before the reader makes an event of it; once a value has begun, whitespace
    // is content: after a reference, after CDATA, and around a child element (the parent's `_tagvalue`).
    let doc = arts_doc(&[arts_tx(1, "\n   x &amp;  y\t<![CDATA[ z ]]>  w  \n", "1.00")]);
    let parsed = parse("spaces.xml", doc.as_bytes()).expect("parses");
    assert_eq!(descriptions(&parsed), vec!["x &  y\t z   w".to_owned()]);

    let doc = arts_doc(&["<Transaction><RetailStoreID>1</RetailStoreID><WorkstationID>2</WorkstationID>\
         <SequenceNumber>3</SequenceNumber><BusinessDayDate>2026-01-02</BusinessDayDate>\
         <Note>\n  a <Tag>t</Tag> b\n</Note></Transaction>"
        .to_string()]);
    let parsed = parse("mixed.xml", doc.as_bytes()).expect("parses");
    let bronze = &parsed.transactions[0].bronze;
    assert_eq!(bronze.get("Transaction/Note_tagvalue"), Some("a  b"));
    assert_eq!(bronze.get("Transaction/Note/Tag"), Some("t"));
}

#[test]
fn an_attribute_given_twice_is_malformed() {
    let doc = arts_valid().replacen("<Transaction>", "<Transaction Kind=\"a\" Other=\"b\" Kind=\"c\">", 1);
    assert_ne!(doc, arts_valid(), "the fixture has a Transaction start tag");
    match parse_err("twice.xml", doc.as_bytes()) {
        ParseError::Malformed { reason, position, .. } => {
            assert!(reason.contains("Kind") && reason.contains("twice"), "{reason}");
            assert_eq!(position.line, line_of(&doc, find(&doc, "Kind=\"a\"")));
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// `poslake parse` exits 1 when a file fails (and still parses the others), and 2 only for a usage error, so that a
/// script tells a bad file from a mistyped flag. Both were 2 until session 28.
#[test]
fn the_parse_command_exits_1_for_a_bad_file_and_2_only_for_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.xml");
    let bad = dir.path().join("bad.xml");
    std::fs::write(&good, arts_valid()).expect("write");
    std::fs::write(&bad, "<POSLog><Transaction>").expect("write");
    let parse = |args: &[&str], files: &[&std::path::Path]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .arg("parse")
            .args(args)
            .args(files)
            .output()
            .expect("run poslake parse");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = parse(&["--summary"], &[&good]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout, stderr) = parse(&["--summary"], &[&good, &bad]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("(1 failed)") && stderr.contains("bad.xml"), "the good file parsed, the bad one named");
    let (code, _, stderr) = parse(&["--no-such-flag"], &[&good]);
    assert_eq!(code, Some(2), "{stderr}");
}

/// A flag's value that can never work is a usage error (exit 2) that says what the flag takes: `--every` in whole
/// seconds, whatever is wrong with it (a fraction, milliseconds and a bare number exited 1 and 2 by turns, and the
/// hint for a bare number suggested milliseconds), and `--no-ingest-running` only beside the orphan sweep it allows.
#[test]
fn flags_that_cannot_work_are_usage_errors_that_say_what_they_take() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake")).args(args).output().expect("run poslake");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for every in ["1.5s", "500ms", "abc", "10"] {
        let (code, stderr) = run(&["ingest", "--every", every, "--staging", "/nonexistent"]);
        assert_eq!(code, Some(2), "{every}: {stderr}");
        assert!(stderr.contains("--every takes whole seconds") && !stderr.contains("10ms"), "{every}: {stderr}");
    }
    let (code, stderr) = run(&["ingest", "--every", "8d", "--staging", "/nonexistent"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("over a week"), "{stderr}");
    let (code, stderr) = run(&["maintain", "--no-ingest-running", "--lake", "/nonexistent"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--remove-orphans-older-than-hours"), "{stderr}");
}

/// With `--log-format json`, every line of stderr is a JSON object, also when the log itself cannot be set up (a
/// bad telemetry variable: the error is written as one of its lines), for `poslake parse`'s per-file errors, and
/// for a usage error.
#[test]
fn json_logs_stay_json_when_the_log_cannot_be_set_up_and_when_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<NotPos/>").expect("write");
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);
    let cases: [Case; 2] = [
        (&["tables", "--lake", "/nonexistent", "--log-format", "json"], Some(("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus"))),
        (&["parse", "--log-format", "json", path_str(&bad), "/nonexistent.xml"], None),
    ];
    for (args, env) in cases {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        command.args(args).env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1");
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let out = command.output().expect("run poslake");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{args:?}: something is said");
        for line in lines {
            let object: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
            assert!(object["fields"]["message"].is_string(), "{line}");
        }
    }
    // A usage error too (exit 2), asked for by the flag or by the variable, which clap could not read back.
    for (args, env) in [
        (&["tables", "--lake", "/nonexistent", "--log-format", "json", "--bogus"][..], None),
        (&["ingest", "--lake", "/nonexistent"], Some([("POSLAKE_LOG_FORMAT", "json"), ("POSLAKE_DEDUP", "bogus")])),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        command.args(args).envs(env.into_iter().flatten());
        let out = command.output().expect("run poslake");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let object: serde_json::Value = serde_json::from_str(stderr.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON line ({e}): {stderr}"));
        assert_eq!(object["level"], "ERROR", "{object}");
    }
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// A bad value from an environment variable is named as coming from it: clap names only the flag, which the command
/// line does not hold (until session 28 `POSLAKE_DEDUP=bogus` read as a bad `--dedup`). An empty variable says so.
#[test]
fn a_bad_value_from_an_environment_variable_is_named_as_such() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(["dedup", "stats"]).args(args).env_remove("POSLAKE_DEDUP").env_remove("POSLAKE_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run poslake");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&[("POSLAKE_DEDUP", "bogus")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("'bogus'") && stderr.contains("environment variable POSLAKE_DEDUP"), "{stderr}");
    let (code, stderr) = run(&[("POSLAKE_DEDUP", "bogus")], &["--dedup", "nope"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("'nope'") && !stderr.contains("environment variable"), "the flag's own value: {stderr}");
    let (code, stderr) = run(&[("POSLAKE_DEDUP", "")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("POSLAKE_DEDUP is set but empty"), "{stderr}");
}

/// A value refused after parsing (a worker index, a URL) shows no flag, so the error is followed by the settings the
/// environment gave; a command line that gave them itself gets no such note. A replay sets the workers' settings aside
/// (one replay takes every dead letter), so a worker's environment does not stop it.
#[test]
fn an_error_names_the_settings_the_environment_gave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"));
        cmd.args(args).arg("--lake").arg(&lake).env("RUST_LOG", "error");
        for var in ["POSLAKE_WORKERS", "POSLAKE_WORKER_INDEX", "POSLAKE_DEDUP", "POSLAKE_CONFIG", "POSLAKE_LAKE"] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run poslake");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let workers = [("POSLAKE_WORKERS", "3"), ("POSLAKE_WORKER_INDEX", "5")];
    let (code, stderr) = run(&workers, &["ingest", "--dedup", "redis-bitmap"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("worker_index 5 is not below workers (3)"), "{stderr}");
    assert!(stderr.contains("note: settings from the environment: POSLAKE_WORKERS, POSLAKE_WORKER_INDEX"), "{stderr}");
    let (code, stderr) = run(&[], &["ingest", "--dedup", "redis-bitmap", "--workers", "3", "--worker-index", "5"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("worker_index 5") && !stderr.contains("note:"), "all from the command line: {stderr}");

    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let (code, stderr) = run(&[], &["ingest", "--staging", staging.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "an empty staging folder makes the lake: {stderr}");
    let (code, stderr) = run(&[("POSLAKE_WORKERS", "2")], &["replay", "--dry-run"]);
    assert_eq!(code, Some(0), "a replay with a worker's environment, on the embedded store: {stderr}");
}

/// Commands that read a lake tell a lake that is not there from one they cannot read: `exists` said "no lake" for
/// both, which sent the user to ingest into a lake that was only unreadable.
#[test]
fn a_lake_that_cannot_be_read_is_not_reported_as_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = |lake: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["tables", "--lake"])
            .arg(lake)
            .env_remove("POSLAKE_CATALOG")
            .output()
            .expect("run poslake tables");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = tables(&dir.path().join("nothing"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no lake at"), "{stderr}");
    // A path through a regular file cannot be read (ENOTDIR), whoever runs the test (root reads past permissions).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").expect("write");
    let (code, stderr) = tables(&file.join("lake"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot be read") && !stderr.contains("no lake at"), "{stderr}");
}

/// A bad tracing variable is refused at start whether or not an endpoint is set: it used to wait, unnoticed, for the
/// day tracing was turned on.
#[test]
fn a_bad_tracing_variable_is_refused_without_an_endpoint_too() {
    for (var, value) in [("OTEL_TRACES_SAMPLER_ARG", "abc"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["dedup", "plan"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env(var, value)
            .output()
            .expect("run poslake");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

/// A value that names the site or the business date for the whole file, given twice with two values: the file's
/// transactions would all take the first silently (an audit saw a Passport file with a second `TransmissionHeader`
/// land site 7002's sales under site 7001, and 7001's own file then taken for duplicates of them). Refused; the
/// same value twice is not.
#[test]
fn a_second_different_site_or_date_for_the_whole_file_is_an_invalid_value() {
    let passport = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dialects/naxml-passport/ordinary.xml"),
    )
    .expect("fixture");
    let header = " <TransmissionHeader>\n  <StoreLocationID>4711</StoreLocationID>\n";
    assert!(passport.contains(header));
    let report = "</JournalReport>";
    let with_second = |site: &str| {
        let second =
            format!(" <TransmissionHeader>\n  <StoreLocationID>{site}</StoreLocationID>\n </TransmissionHeader>\n");
        passport.replacen(report, &format!("{report}\n{second}"), 1)
    };
    let same = with_second("4711");
    let parsed = parse("same-site.xml", same.as_bytes()).expect("the same site twice parses");
    assert_eq!(parsed.facts.site.as_deref(), Some("4711"));
    let other = with_second("4712");
    match parse_err("two-sites.xml", other.as_bytes()) {
        ParseError::InvalidValue { field, value, reason, .. } => {
            assert_eq!((field, value.as_str()), ("site", "4712"));
            assert!(reason.contains("another site"), "{reason}");
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }

    let verifone = verifone_doc();
    let opened = "<openedTime>2026-01-02T05:00:00-05:00</openedTime>";
    let later = verifone.replacen(opened, &format!("{opened}<openedTime>2026-01-02T09:00:00-05:00</openedTime>"), 1);
    parse("same-day.xml", later.as_bytes()).expect("a second opening on the same day parses");
    let next_day = verifone.replacen(opened, &format!("{opened}<openedTime>2026-01-03T05:00:00-05:00</openedTime>"), 1);
    match parse_err("two-days.xml", next_day.as_bytes()) {
        ParseError::InvalidValue { field, reason, .. } => {
            assert_eq!(field, "business date");
            assert!(reason.contains("another business date"), "{reason}");
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }
}

/// Each business date is a partition with its own writers until the commit: a file spread over more dates than
/// `max_business_dates` (100) is refused as `too_many_dates` (an audit drove one 8 MB file of 20,000 dates to 1.5 GB).
#[test]
fn a_file_over_too_many_business_dates_is_refused() {
    let day = |n: u32| chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date") + chrono::Days::new(u64::from(n));
    let doc = |dates: u32| {
        let txs: Vec<String> =
            (0..dates).map(|n| arts_tx(n + 1, "Gum", "1.00").replacen("2026-01-02", &day(n).to_string(), 1)).collect();
        arts_doc(&txs)
    };
    let opts = ParseOptions::default();
    let parsed = parse("100.xml", doc(opts.max_business_dates as u32).as_bytes()).expect("at the limit");
    assert_eq!(parsed.transactions.len(), opts.max_business_dates);
    let err = parse_err("101.xml", doc(opts.max_business_dates as u32 + 1).as_bytes());
    assert_eq!(err.kind(), "too_many_dates", "{err}");
    assert!(err.to_string().contains("more than 100 business dates"), "{err}");
    // Transactions back and forth over a few dates are not many dates.
    let txs: Vec<String> =
        (0..300).map(|n| arts_tx(n + 1, "Gum", "1.00").replacen("2026-01-02", &day(n % 3).to_string(), 1)).collect();
    parse("few.xml", arts_doc(&txs).as_bytes()).expect("three dates");
}

/// Names are bounded like values: an element or attribute name past 1 KiB is malformed, and an error quotes at most
/// 200 characters of the input (an audit saw a 200 MiB root name quoted whole in a dead letter's reason).
#[test]
fn long_names_are_refused_and_errors_quote_the_input_briefly() {
    let long = "N".repeat(2000);
    let element = arts_valid().replacen("<Description>", &format!("<{long}/><Description>"), 1);
    let err = parse_err("element.xml", element.as_bytes());
    assert_eq!(err.kind(), "malformed", "{err}");
    assert!(err.to_string().contains("element name of 2000 bytes"), "{err}");
    let attribute = arts_valid().replacen("<Sale>", &format!("<Sale {long}=\"1\">"), 1);
    let err = parse_err("attribute.xml", attribute.as_bytes());
    assert!(err.to_string().contains("attribute name of 2000 bytes"), "{err}");

    // Under the name limit, an unknown root and an undeclared entity are quoted in part.
    let root = "R".repeat(1000);
    let err = parse_err("root.xml", format!("<{root}><a/></{root}>").as_bytes());
    assert_eq!(err.kind(), "unknown_dialect", "{err}");
    assert!(err.to_string().len() < 400 && err.to_string().contains("(1000 bytes in all)"), "{err}");
    let entity = arts_valid().replacen("Coffee", &format!("&{};", "e".repeat(1000)), 1);
    let err = parse_err("entity.xml", entity.as_bytes());
    assert_eq!(err.kind(), "unknown_entity", "{err}");
    assert!(err.to_string().len() < 400, "{err}");
    // A mismatched end tag's reason (quick-xml's, naming both tags) too.
    let mismatched = arts_valid().replacen("</Description>", &format!("</{}>", "D".repeat(1000)), 1);
    let err = parse_err("end.xml", mismatched.as_bytes());
    assert_eq!(err.kind(), "malformed", "{err}");
    assert!(err.to_string().len() < 400, "{err}");
}
