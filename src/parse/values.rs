//! Text → typed values. Each function returns the reason a value is refused; the engine adds file and position.

use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rust_decimal::Decimal;

/// An XML Schema decimal: an optional sign, digits, and an optional point with digits after it (`1.5`, `-0.25`, `+5.`,
/// `.5`), its scale as written (`0.10` keeps two places). rust_decimal's own parser also took `1_000` and `1e2`, which
/// no POS schema allows and which could only be a damaged value. One pass: amounts of up to 19 digits (all real ones)
/// are built here, longer ones by rust_decimal.
pub fn decimal(text: &str) -> Result<Decimal, &'static str> {
    const NOT: &str = "not a decimal number";
    let b = text.as_bytes();
    let (negative, body) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let (mut mantissa, mut digits, mut scale, mut point) = (0u64, 0u32, 0u32, false);
    for &c in body {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                digits += 1;
                scale += u32::from(point);
            }
            b'.' if !point => point = true,
            _ => return Err(NOT),
        }
    }
    if digits == 0 {
        return Err(NOT);
    }
    let long = || "a decimal number with more digits than 28";
    if digits > 19 {
        return Decimal::from_str(text.strip_prefix('+').unwrap_or(text)).map_err(|_| long());
    }
    let signed = if negative { -i128::from(mantissa) } else { i128::from(mantissa) };
    Decimal::try_from_i128_with_scale(signed, scale).map_err(|_| long())
}

/// A business date: `YYYY-MM-DD`, optionally followed by a time part (`2021-05-28T`, `2021-05-28T00:00:00-04:00`,
/// `2021-05-28 00:00:00`), or `YYYYMMDD`. The date is taken as written, never shifted by an offset: the business
/// date is the site's, not a clock's.
pub fn date(text: &str) -> Result<NaiveDate, &'static str> {
    let b = text.as_bytes();
    if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && (b.len() == 10 || matches!(b[10], b'T' | b' ')) {
        // Every transaction carries dates: read plain digits directly, and leave any other form to chrono.
        if let (Some(y), Some(m), Some(d)) = (digits(&b[..4]), digits(&b[5..7]), digits(&b[8..10])) {
            return NaiveDate::from_ymd_opt(y as i32, m, d).ok_or("not a calendar date");
        }
        return NaiveDate::parse_from_str(&text[..10], "%Y-%m-%d").map_err(|_| "not a calendar date");
    }
    if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
        return NaiveDate::parse_from_str(text, "%Y%m%d").map_err(|_| "not a calendar date");
    }
    Err("not a date (expected YYYY-MM-DD)")
}

/// A timestamp as local wall-clock time: `YYYY-MM-DDTHH:MM[:SS[.fff]]` with an optional `Z` or `±HH:MM` offset,
/// which is dropped (times are kept as the register wrote them; the offset stays in bronze).
pub fn timestamp(text: &str) -> Result<NaiveDateTime, &'static str> {
    let b = text.as_bytes();
    if b.len() < 16 || !(b[10] == b'T' || b[10] == b' ') {
        return Err("not a timestamp (expected YYYY-MM-DDTHH:MM:SS)");
    }
    let d = date(&text[..10])?;
    let t = clock(strip_offset(&text[11..]))?;
    Ok(d.and_time(t))
}

/// A date alone, or a timestamp: a date alone is midnight until a clock time completes it.
pub fn date_or_timestamp(text: &str) -> Result<(NaiveDate, Option<NaiveTime>), &'static str> {
    if text.len() > 11 {
        let ts = timestamp(text)?;
        Ok((ts.date(), Some(ts.time())))
    } else {
        Ok((date(text)?, None))
    }
}

/// The UTC offset a timestamp is written in, in seconds east: `Z` is 0, `±HH:MM` or `±HHMM` its value; `None` when
/// the text has none (or is not a timestamp).
pub fn offset_secs(text: &str) -> Option<i32> {
    let clock = text.get(11..)?.as_bytes();
    if clock.len() < 6 {
        return None;
    }
    if clock.last() == Some(&b'Z') {
        return Some(0);
    }
    // As in `strip_offset`: the last sign past the clock's `HH:MM`.
    let at = clock.iter().rposition(|&b| b == b'+' || b == b'-').filter(|&i| i >= 5)?;
    let mut digits = [0u32; 4];
    let mut n = 0;
    for &b in clock[at + 1..].iter().filter(|&&b| b != b':') {
        *digits.get_mut(n)? = char::from(b).to_digit(10)?;
        n += 1;
    }
    let (h, m) = match n {
        4 => (digits[0] * 10 + digits[1], digits[2] * 10 + digits[3]),
        2 => (digits[0] * 10 + digits[1], 0),
        _ => return None,
    };
    if h > 18 || m > 59 {
        return None;
    }
    let secs = (h * 3600 + m * 60) as i32;
    Some(if clock[at] == b'-' { -secs } else { secs })
}

/// A clock time `HH:MM[:SS[.fff]]`, optional offset dropped.
pub fn clock(text: &str) -> Result<NaiveTime, &'static str> {
    let t = strip_offset(text);
    if let Some(time) = plain_clock(t.as_bytes()) {
        return Ok(time);
    }
    NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .map_err(|_| "not a clock time (expected HH:MM:SS)")
}

/// `HH:MM:SS` with up to nine fraction digits, the form nearly every export writes; `None` for anything else
/// (which chrono then reads or refuses).
fn plain_clock(b: &[u8]) -> Option<NaiveTime> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    let nanos = match &b[8..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => digits(frac)? * 10u32.pow(9 - frac.len() as u32),
        _ => return None,
    };
    NaiveTime::from_hms_nano_opt(h, m, s, nanos)
}

/// The value of a run of ASCII digits (at most nine), or `None` if any byte is not a digit.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    b.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
}

fn strip_offset(t: &str) -> &str {
    let t = t.strip_suffix('Z').unwrap_or(t);
    // An offset is the last '+' or '-' followed by HH:MM or HHMM; a clock time itself has neither sign.
    match t.rfind(['+', '-']) {
        Some(i) if i >= 5 => &t[..i],
        _ => t,
    }
}

/// A yes/no flag as POS exports write them.
pub fn flag(text: &str) -> Result<bool, &'static str> {
    match text {
        "true" | "TRUE" | "True" | "yes" | "YES" | "Yes" | "Y" | "y" | "1" => Ok(true),
        "false" | "FALSE" | "False" | "no" | "NO" | "No" | "N" | "n" | "0" => Ok(false),
        _ => Err("not a yes/no flag"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_shapes_vendors_write() {
        let d = NaiveDate::from_ymd_opt(2021, 5, 28).expect("date");
        for t in ["2021-05-28", "2021-05-28T", "2021-05-28T00:00:00-04:00", "2021-05-28 10:00", "20210528"] {
            assert_eq!(date(t), Ok(d), "{t}");
        }
        assert!(date("28/05/2021").is_err());
        assert!(date("2021-02-30").is_err());
    }

    #[test]
    fn offsets_are_read_in_every_form_they_are_written() {
        assert_eq!(offset_secs("2017-10-01T02:01:31Z"), Some(0));
        assert_eq!(offset_secs("2017-10-01T02:01:31.250-05:00"), Some(-5 * 3600));
        assert_eq!(offset_secs("2017-10-01T02:01:31+0530"), Some(5 * 3600 + 1800));
        assert_eq!(offset_secs("2017-10-01T02:01:31+01"), Some(3600));
        assert_eq!(offset_secs("2017-10-01T02:01:31"), None);
        assert_eq!(offset_secs("2017-10-01"), None);
        assert_eq!(offset_secs("2017-10-01T02:01:31+99:00"), None);
        assert_eq!(offset_secs("2017-10-01T02:01:31+05:00:00"), None);
        assert_eq!(offset_secs("2017-10-01é02:01:31+05:00"), None, "no panic on a character split at byte 11");
    }

    #[test]
    fn timestamps_keep_wall_clock() {
        let ts = timestamp("2017-10-01T02:01:31-05:00").expect("ts");
        assert_eq!(ts.to_string(), "2017-10-01 02:01:31");
        assert_eq!(timestamp("2017-10-01T02:01:31.250Z").expect("ts").to_string(), "2017-10-01 02:01:31.250");
        assert!(timestamp("2017-10-01").is_err());
        assert_eq!(clock("22:50:01").expect("clock").to_string(), "22:50:01");
    }

    #[test]
    fn fast_paths_agree_with_chrono() {
        for t in ["2021-05-28", "2024-02-29", "2023-02-29", "2021-13-01", "2021-00-10", "0001-01-01", "2021-05-2x"] {
            let slow = NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| "not a calendar date");
            assert_eq!(date(t), slow, "{t}");
        }
        for t in ["00:00:00", "23:59:59", "07:05:09.5", "07:05:09.123456789", "24:00:00", "12:60:00", "23:59:60"] {
            let slow = NaiveTime::parse_from_str(t, "%H:%M:%S%.f").ok();
            assert_eq!(clock(t).ok(), slow, "{t}");
        }
        assert_eq!(clock("07:05").expect("clock").to_string(), "07:05:00");
        assert!(clock("07:05:09.").is_err());
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal("0.10").expect("d") + decimal("0.20").expect("d"), decimal("0.30").expect("d"));
        assert_eq!(decimal("+1.5").expect("d").to_string(), "1.5");
        assert!(decimal("1,5").is_err());
        assert_eq!(decimal("+5.").expect("d").to_string(), "5");
        assert_eq!(decimal(".5").expect("d").to_string(), "0.5");
        assert_eq!(decimal("-0").expect("d").to_string(), "0");
        for bad in ["1_000", "1e2", "1E2", "1e308", ".", "+", "-", "", "1.2.3", "0x10", "NaN", "١٢٣", "1 000"] {
            assert_eq!(decimal(bad), Err("not a decimal number"), "{bad:?}");
        }
        assert_eq!(decimal(&"9".repeat(40)), Err("a decimal number with more digits than 28"));
        // Built here or by rust_decimal, the same value and scale as rust_decimal's parser gives.
        for ok in [
            "0.10",
            "1.2300000",
            "-19.99",
            "+0.001",
            "9999999999999999999",
            "-1234567890.123456789",
            "0",
            "12345678901234567890.5",
            "-0.0",
            "007",
        ] {
            let want = Decimal::from_str(ok.strip_prefix('+').unwrap_or(ok)).expect("rust_decimal");
            let got = decimal(ok).expect(ok);
            assert_eq!((got, got.scale(), got.to_string()), (want, want.scale(), want.to_string()), "{ok}");
        }
    }
}
