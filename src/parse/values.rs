//! Text → typed values. Each function returns the reason a value is refused; the engine adds file and position.

use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rust_decimal::Decimal;

pub fn decimal(text: &str) -> Result<Decimal, &'static str> {
    let t = text.strip_prefix('+').unwrap_or(text);
    Decimal::from_str(t).map_err(|_| "not a decimal number")
}

/// A business date: `YYYY-MM-DD`, optionally followed by a time part (`2021-05-28T`, `2021-05-28T00:00:00-04:00`,
/// `2021-05-28 00:00:00`), or `YYYYMMDD`. The date is taken as written, never shifted by an offset: the business
/// date is the site's, not a clock's.
pub fn date(text: &str) -> Result<NaiveDate, &'static str> {
    let b = text.as_bytes();
    if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && (b.len() == 10 || matches!(b[10], b'T' | b' ')) {
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

/// A clock time `HH:MM[:SS[.fff]]`, optional offset dropped.
pub fn clock(text: &str) -> Result<NaiveTime, &'static str> {
    let t = strip_offset(text);
    NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .map_err(|_| "not a clock time (expected HH:MM:SS)")
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
    fn timestamps_keep_wall_clock() {
        let ts = timestamp("2017-10-01T02:01:31-05:00").expect("ts");
        assert_eq!(ts.to_string(), "2017-10-01 02:01:31");
        assert_eq!(timestamp("2017-10-01T02:01:31.250Z").expect("ts").to_string(), "2017-10-01 02:01:31.250");
        assert!(timestamp("2017-10-01").is_err());
        assert_eq!(clock("22:50:01").expect("clock").to_string(), "22:50:01");
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal("0.10").expect("d") + decimal("0.20").expect("d"), decimal("0.30").expect("d"));
        assert_eq!(decimal("+1.5").expect("d").to_string(), "1.5");
        assert!(decimal("1,5").is_err());
    }
}
