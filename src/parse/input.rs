//! Turns the bytes of a file as received into UTF-8 XML text: gzip detected by magic bytes (never by name), byte
//! order marks, and the encoding the XML declaration names (ISO-8859-1 and Windows-1252 are common in POS exports).

use std::borrow::Cow;
use std::io::Read;

use encoding_rs::Encoding;

use super::error::{ParseError, Position};
use crate::model::Compression;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZIP_MAGIC: [u8; 4] = [b'P', b'K', 0x03, 0x04];

/// The XML text of one file and how it was obtained.
pub struct Decoded<'a> {
    pub text: Cow<'a, str>,
    pub compression: Compression,
    pub encoding: &'static str,
}

/// Decompresses and decodes `bytes`. `max_bytes` bounds the decompressed size (a gzip bomb stops there).
pub fn decode<'a>(file: &str, bytes: &'a [u8], max_bytes: u64) -> Result<Decoded<'a>, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty { file: file.to_owned() });
    }
    // Other archives and compressors by their magic numbers: named as such, not as text that is not UTF-8 (an
    // audit saw bzip2, xz and zstd files reported so). zlib's two-byte header (`x` then a check byte) cannot begin
    // an XML document.
    let other: [(&[u8], &'static str); 9] = [
        (&ZIP_MAGIC, "zip"),
        (b"BZh", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c], "7z"),
        (&[0x78, 0x01], "zlib"),
        (&[0x78, 0x5e], "zlib"),
        (&[0x78, 0x9c], "zlib"),
        (&[0x78, 0xda], "zlib"),
    ];
    if let Some(&(_, format)) = other.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return Err(ParseError::UnsupportedArchive { file: file.to_owned(), format });
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        let raw = gunzip(file, bytes, max_bytes)?;
        let (text, encoding) = transcode_owned(file, raw)?;
        refuse_nul(file, &text)?;
        return Ok(Decoded { text: Cow::Owned(text), compression: Compression::Gzip, encoding });
    }
    if bytes.len() as u64 > max_bytes {
        return Err(ParseError::TooLarge { file: file.to_owned(), limit: max_bytes });
    }
    let (text, encoding) = transcode(file, bytes)?;
    refuse_nul(file, &text)?;
    Ok(Decoded { text, compression: Compression::None, encoding })
}

/// XML 1.0 allows no NUL character anywhere, and quick-xml does not look for one (a record holding one would break
/// consumers that treat text as C strings).
fn refuse_nul(file: &str, text: &str) -> Result<(), ParseError> {
    match memchr::memchr(0, text.as_bytes()) {
        Some(at) => Err(ParseError::Malformed {
            file: file.to_owned(),
            position: Position::locate(text, at as u64),
            reason: "a NUL character, which XML does not allow".into(),
        }),
        None => Ok(()),
    }
}

fn gunzip(file: &str, bytes: &[u8], max_bytes: u64) -> Result<Vec<u8>, ParseError> {
    let failed = |reason: String| ParseError::Decompress { file: file.to_owned(), compression: "gzip", reason };
    let mut out = Vec::with_capacity(gzip_size_hint(bytes, max_bytes));
    // Member by member: some exporters concatenate gzip members, and some pad the file with zero bytes after the
    // last (to a block size), which `gzip -d` takes and a decoder of members alone reads as a bad next header.
    let mut rest = bytes;
    loop {
        let mut member = flate2::bufread::GzDecoder::new(rest);
        let room = (max_bytes + 1).saturating_sub(out.len() as u64);
        (&mut member).take(room).read_to_end(&mut out).map_err(|e| failed(e.to_string()))?;
        if out.len() as u64 > max_bytes {
            break;
        }
        rest = member.into_inner();
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        if !rest.starts_with(&GZIP_MAGIC) {
            return Err(failed(format!(
                "{} bytes after the end of the gzip stream are not another member",
                rest.len()
            )));
        }
    }
    if out.len() as u64 > max_bytes {
        return Err(ParseError::TooLarge { file: file.to_owned(), limit: max_bytes });
    }
    if out.is_empty() {
        return Err(ParseError::Empty { file: file.to_owned() });
    }
    if out.starts_with(&GZIP_MAGIC) {
        return Err(failed("the decompressed file is gzip-compressed again (gzip inside gzip)".into()));
    }
    // A trailer that claimed far more than came out must not leave that much reserved while the file is parsed.
    if out.capacity() > out.len().saturating_mul(2) {
        out.shrink_to_fit();
    }
    Ok(out)
}

/// About how many bytes the text of `bytes` takes once decompressed, within `max_bytes` (past which the parse refuses
/// it): a gzip stream's from its trailer ([`gzip_size_hint`]), any other file's own size. For flow control, which
/// lets a file in by its size as listed and must then count what it takes in memory.
pub fn text_size(bytes: &[u8], max_bytes: u64) -> u64 {
    if bytes.starts_with(&GZIP_MAGIC) {
        (gzip_size_hint(bytes, max_bytes) as u64).max(bytes.len() as u64)
    } else {
        bytes.len() as u64
    }
}

/// How much to reserve for a gzip stream's text: the size its trailer declares (the last four bytes: the last
/// member's size modulo 4 GiB), within what deflate can expand to (about 1,032 to 1) and the limit. Only a hint, as
/// the trailer is the sender's word: a wrong one costs a regrowth, never a wrong result. A right one saves the
/// doublings (about five buffers of growing size per file) that a guess costs.
fn gzip_size_hint(bytes: &[u8], max_bytes: u64) -> usize {
    let declared = bytes.last_chunk::<4>().map_or(0, |t| u32::from_le_bytes(*t)) as u64;
    let most = (bytes.len() as u64).saturating_mul(1032);
    let hint = if declared == 0 || declared > most { (bytes.len() as u64).saturating_mul(6) } else { declared };
    usize::try_from(hint.min(max_bytes)).unwrap_or(usize::MAX)
}

/// Which encoding the text is in, and the length of its byte order mark: a BOM decides first, then the XML
/// declaration's `encoding`; with neither, UTF-8.
fn encoding_of(file: &str, bytes: &[u8]) -> Result<(&'static Encoding, usize), ParseError> {
    // UTF-32's byte order marks, which encoding_rs does not know: the little-endian one would read as UTF-16's.
    if bytes.starts_with(&[0xff, 0xfe, 0, 0]) || bytes.starts_with(&[0, 0, 0xfe, 0xff]) {
        return Err(ParseError::UnsupportedEncoding {
            file: file.to_owned(),
            label: "UTF-32 (by its byte order mark)".into(),
        });
    }
    if let Some(found) = Encoding::for_bom(bytes) {
        return Ok(found);
    }
    // UTF-16 without a BOM still shows itself in its first character, `<` (XML 1.0, appendix F).
    match bytes {
        [0x3c, 0, _, 0, ..] => return Ok((encoding_rs::UTF_16LE, 0)),
        [0, 0x3c, 0, _, ..] => return Ok((encoding_rs::UTF_16BE, 0)),
        _ => {}
    }
    let Some(label) = declared_encoding(bytes) else { return Ok((encoding_rs::UTF_8, 0)) };
    let unsupported = || ParseError::UnsupportedEncoding { file: file.to_owned(), label: label.to_owned() };
    let encoding = Encoding::for_label(label.as_bytes()).ok_or_else(unsupported)?;
    if encoding == encoding_rs::UTF_16LE || encoding == encoding_rs::UTF_16BE {
        // A declaration readable as ASCII is not UTF-16 text: with no BOM, the bytes are in an ASCII-compatible
        // encoding whatever the label says. .NET writes such files (an `XmlWriter` over a `StringWriter` declares
        // utf-16, and the string is then saved as UTF-8), so they are read as UTF-8, and refused as any other
        // file that is not (with the position of the first bad byte). Until session 32 they were refused as
        // "unsupported encoding utf-16", which UTF-16 with a BOM is not.
        return Ok((encoding_rs::UTF_8, 0));
    }
    Ok((encoding, 0))
}

/// Decodes to UTF-8 (see [`encoding_of`]); text that should be UTF-8 and is not is refused with the position of
/// the first bad byte.
fn transcode<'a>(file: &str, bytes: &'a [u8]) -> Result<(Cow<'a, str>, &'static str), ParseError> {
    let (encoding, bom_len) = encoding_of(file, bytes)?;
    let body = &bytes[bom_len..];
    if encoding == encoding_rs::UTF_8 {
        return utf8(file, body).map(|t| (Cow::Borrowed(t), "UTF-8"));
    }
    decode_with(file, encoding, body).map(|t| (t, encoding.name()))
}

/// [`transcode`] for text already in a buffer of its own (decompressed): UTF-8 stays in that buffer instead of
/// being copied to a new one.
fn transcode_owned(file: &str, mut raw: Vec<u8>) -> Result<(String, &'static str), ParseError> {
    let (encoding, bom_len) = encoding_of(file, &raw)?;
    if encoding == encoding_rs::UTF_8 {
        raw.drain(..bom_len);
        return String::from_utf8(raw)
            .map(|t| (t, "UTF-8"))
            .map_err(|e| invalid_utf8(file, e.as_bytes(), e.utf8_error()));
    }
    decode_with(file, encoding, &raw[bom_len..]).map(|t| (t.into_owned(), encoding.name()))
}

fn utf8<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, ParseError> {
    std::str::from_utf8(bytes).map_err(|e| invalid_utf8(file, bytes, e))
}

fn invalid_utf8(file: &str, bytes: &[u8], e: std::str::Utf8Error) -> ParseError {
    let valid = &bytes[..e.valid_up_to()];
    // The valid prefix is UTF-8, so it can be located as text.
    let prefix = std::str::from_utf8(valid).unwrap_or_default();
    ParseError::InvalidEncoding {
        file: file.to_owned(),
        encoding: "UTF-8",
        position: Position::locate(prefix, e.valid_up_to() as u64),
    }
}

fn decode_with<'a>(file: &str, encoding: &'static Encoding, bytes: &'a [u8]) -> Result<Cow<'a, str>, ParseError> {
    let (text, had_errors) = encoding.decode_without_bom_handling(bytes);
    if had_errors {
        let at = text.find('\u{FFFD}').unwrap_or(0);
        return Err(ParseError::InvalidEncoding {
            file: file.to_owned(),
            encoding: encoding.name(),
            position: Position::locate(&text, at as u64),
        });
    }
    Ok(text)
}

/// The `encoding` pseudo-attribute of an XML declaration at the very start, tolerating the spaces around `=`
/// that the XML grammar allows (real Passport files write `version ="1.0"`).
fn declared_encoding(bytes: &[u8]) -> Option<&str> {
    let head = bytes.get(..bytes.len().min(512))?;
    let decl = head.strip_prefix(b"<?xml")?;
    let end = decl.windows(2).position(|w| w == b"?>")?;
    let decl = std::str::from_utf8(&decl[..end]).ok()?;
    let at = decl.find("encoding")?;
    let rest = decl[at + "encoding".len()..].trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    let close = rest.find(quote)?;
    Some(rest[..close].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTF8_BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

    #[test]
    fn reads_declared_encoding_with_spaces() {
        assert_eq!(declared_encoding(b"<?xml version =\"1.0\" encoding = 'ISO-8859-1'?><a/>"), Some("ISO-8859-1"));
        assert_eq!(declared_encoding(b"<?xml version=\"1.0\"?><a/>"), None);
        assert_eq!(declared_encoding(b"<a/>"), None);
    }

    #[test]
    fn latin1_is_transcoded() {
        let bytes = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>caf\xe9</a>";
        let d = decode("f.xml", bytes, 1 << 20).expect("decodes");
        assert!(d.text.contains("café"));
        assert_eq!(d.encoding, "windows-1252");
    }

    #[test]
    fn bom_is_stripped_and_utf16_decoded() {
        let mut bytes = UTF8_BOM.to_vec();
        bytes.extend_from_slice(b"<a/>");
        assert_eq!(decode("f", &bytes, 100).expect("utf8 bom").text, "<a/>");
        let mut utf16: Vec<u8> = vec![0xff, 0xfe];
        for u in "<a>é</a>".encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let d = decode("f", &utf16, 100).expect("utf16");
        assert_eq!(d.text, "<a>é</a>");
        assert_eq!(d.encoding, "UTF-16LE");
    }

    /// The bad byte of `<a>\n ok \xff</a>`: line 2, column 5, offset 8.
    fn assert_bad_byte_located(err: Option<ParseError>) {
        match err {
            Some(ParseError::InvalidEncoding { position, .. }) => {
                assert_eq!((position.line, position.column, position.offset), (2, 5, 8));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_names_the_position() {
        assert_bad_byte_located(decode("f.xml", b"<a>\n ok \xff</a>", 100).err());
    }

    fn gzip_with(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
        enc.write_all(bytes).expect("write");
        enc.finish().expect("finish")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        gzip_with(bytes, flate2::Compression::fast())
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let gz = gzip_with(&vec![b' '; 1 << 20], flate2::Compression::best());
        assert!(matches!(decode("f.gz", &gz, 1000), Err(ParseError::TooLarge { limit: 1000, .. })));
    }

    /// Gzipped text goes through the owned path: the same answers as plain text, BOM, encodings and errors alike.
    #[test]
    fn gzipped_text_decodes_like_plain_text() {
        let mut bom = UTF8_BOM.to_vec();
        bom.extend_from_slice("<a>café</a>".as_bytes());
        let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>caf\xe9</a>".to_vec();
        for plain in [bom, latin1, b"<a>plain</a>".to_vec()] {
            let want = decode("f.xml", &plain, 1 << 20).expect("plain");
            let gz = gzip(&plain);
            let got = decode("f.gz", &gz, 1 << 20).expect("gzipped");
            assert_eq!((got.text.as_ref(), got.encoding), (want.text.as_ref(), want.encoding));
            assert_eq!(got.compression, Compression::Gzip);
        }
        assert_bad_byte_located(decode("f.gz", &gzip(b"<a>\n ok \xff</a>"), 100).err());
    }

    /// The trailer's size is a hint only: a lying one changes nothing but the first reservation.
    #[test]
    fn a_gzip_trailer_that_lies_about_the_size_changes_nothing() {
        let text = "<a>".to_owned() + &"x".repeat(10_000) + "</a>";
        let honest = gzip(text.as_bytes());
        assert_eq!(gzip_size_hint(&honest, 1 << 20), text.len());
        assert_eq!(gzip_size_hint(&honest, 100), 100, "never past the limit");
        let n = honest.len();
        for declared in [0u32, 1, 5_000, u32::MAX] {
            let mut lying = honest.clone();
            lying[n - 4..].copy_from_slice(&declared.to_le_bytes());
            assert!(gzip_size_hint(&lying, 1 << 30) <= n * 1032, "within what deflate can expand to");
            // The decoder checks the trailer's size itself: a lie is a decompression error, not other text.
            let got = decode("f.gz", &lying, 1 << 20);
            assert!(
                matches!(got, Err(ParseError::Decompress { .. })),
                "declared {declared}: {:?}",
                got.map(|d| d.text)
            );
        }
    }

    /// A stream whose last member is empty declares 0 bytes, so the buffer starts from a guess (6 times the
    /// compressed size); text that compresses less than that does not keep the guess's reservation.
    #[test]
    fn a_guess_too_large_is_not_kept() {
        let mut text = "<a>".to_owned();
        let mut x: u32 = 1;
        for _ in 0..10_000 {
            // Letters from a xorshift sequence: text that gzip barely compresses.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            text.push(char::from(b'a' + (x % 26) as u8));
        }
        text.push_str("</a>");
        let mut two_members = gzip(text.as_bytes());
        two_members.extend(gzip(b""));
        assert!(gzip_size_hint(&two_members, 1 << 20) > 2 * text.len(), "the guess is too large");
        let d = decode("f.gz", &two_members, 1 << 20).expect("decodes");
        assert_eq!(d.text, text);
        let Cow::Owned(owned) = d.text else { panic!("gzipped text is owned") };
        assert!(owned.capacity() <= 2 * owned.len(), "{} reserved for {} bytes", owned.capacity(), owned.len());
    }

    /// UTF-16 without a BOM is known by its first character; a NUL anywhere is refused with its position.
    #[test]
    fn utf16_without_a_bom_decodes_and_nul_is_refused() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>é</a>";
        let le: Vec<u8> = doc.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = doc.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for (bytes, name) in [(le, "UTF-16LE"), (be, "UTF-16BE")] {
            let d = decode("u.xml", &bytes, 1 << 20).expect("decodes");
            assert_eq!((d.text.as_ref(), d.encoding), (doc, name));
        }
        let err = decode("nul.xml", b"<a>\n x\0</a>", 1 << 20).map(|_| ()).expect_err("NUL");
        match err {
            ParseError::Malformed { position, reason, .. } => {
                assert_eq!((position.line, position.column), (2, 3));
                assert!(reason.contains("NUL"), "{reason}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(decode("nul.gz", &gzip(b"<a>\0</a>"), 1 << 20).is_err(), "gzipped text is checked too");
    }

    /// Zero bytes after the last member (block padding) are what `gzip -d` skips too; anything else after it is
    /// named as such, and a gzip file inside the gzip file says so rather than failing as text that is not UTF-8.
    #[test]
    fn gzip_padding_is_skipped_and_trailing_data_and_double_gzip_are_named() {
        let text = b"<a>padded</a>";
        let mut padded = gzip(text);
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(decode("p.gz", &padded, 1 << 20).expect("padded").text, "<a>padded</a>");
        let mut two = gzip(b"<a>");
        two.extend_from_slice(&gzip(b"two</a>"));
        two.extend_from_slice(&[0; 7]);
        assert_eq!(decode("t.gz", &two, 1 << 20).expect("two members").text, "<a>two</a>");
        let reason = |bytes: &[u8]| match decode("g.gz", bytes, 1 << 20).map(|_| ()) {
            Err(ParseError::Decompress { reason, .. }) => reason,
            other => panic!("expected Decompress, got {other:?}"),
        };
        let mut trailing = gzip(text);
        trailing.extend_from_slice(b"garbage");
        assert!(reason(&trailing).contains("7 bytes after the end of the gzip stream"), "{}", reason(&trailing));
        assert!(reason(&gzip(&gzip(text))).contains("gzip inside gzip"), "{}", reason(&gzip(&gzip(text))));
    }

    #[test]
    fn zip_and_unknown_encodings_are_refused() {
        assert!(matches!(decode("f", b"PK\x03\x04rest", 100), Err(ParseError::UnsupportedArchive { .. })));
        for (bytes, named) in [
            (&b"BZh91AY&SY"[..], "bzip2"),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4][..], "xz"),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x05][..], "zstd"),
            (&[0x78, 0x9c, 0xb3, 0x49][..], "zlib"),
        ] {
            match decode("f", bytes, 100) {
                Err(ParseError::UnsupportedArchive { format, .. }) => assert_eq!(format, named),
                other => panic!("{named}: {other:?}", other = other.err()),
            }
        }
        assert!(matches!(
            decode("f", b"<?xml version=\"1.0\" encoding=\"klingon\"?><a/>", 100),
            Err(ParseError::UnsupportedEncoding { .. })
        ));
    }
}
