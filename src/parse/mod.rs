//! Single-pass streaming parse of one POS file into silver records, bronze records and file facts.
//!
//! [`parse_file`] decodes the bytes ([`input`]), then one pass over quick-xml events drives the dialect's compiled
//! rules ([`plan`]) through [`engine`] into [`builder`]s. No DOM is built.

mod builder;
mod engine;
pub mod error;
mod input;
mod plan;
mod values;

pub use error::{ParseError, Position};
pub use input::text_size;

use crate::dialect::Dialect;
use crate::model::{FileFacts, ParsedFile};

/// Limits and choices for one parse. The defaults suit POS files, which are kilobytes to a few megabytes.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Parse as this dialect instead of detecting it from the root element. Default: detect.
    pub dialect: Option<Dialect>,
    /// Deepest element nesting accepted. Default 128: real POS files nest under 20; deeper is an attack or a bug.
    pub max_depth: usize,
    /// Largest text of one element, in bytes. Default 1 MiB: no POS value is near that.
    pub max_text_bytes: usize,
    /// Largest file once decompressed, in bytes. Default 256 MiB: bounds a gzip bomb.
    pub max_decompressed_bytes: u64,
    /// Most distinct business dates in one file. Default 100: a POS file covers a shift, a day or a period, and
    /// each date is a partition with its own open writers (about 75 KB each) until the commit.
    pub max_business_dates: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            dialect: None,
            max_depth: 128,
            max_text_bytes: 1 << 20,
            max_decompressed_bytes: 256 << 20,
            max_business_dates: 100,
        }
    }
}

/// Parses one file. `name` is used in errors and facts only; the bytes may be gzip-compressed and in any encoding
/// the XML declaration names.
pub fn parse_file(name: &str, bytes: &[u8], opts: &ParseOptions) -> Result<ParsedFile, ParseError> {
    let decoded = input::decode(name, bytes, opts.max_decompressed_bytes)?;
    let out = engine::Engine::new(name, &decoded.text, opts).run()?;
    // Transactions come in date order, mostly: a new date is rarely one seen before, and a short list is enough.
    let mut dates: Vec<chrono::NaiveDate> = Vec::new();
    for t in &out.transactions {
        let date = t.header.key.business_date;
        if dates.last() != Some(&date) && !dates.contains(&date) {
            if dates.len() == opts.max_business_dates {
                return Err(ParseError::TooManyDates { file: name.to_owned(), limit: opts.max_business_dates });
            }
            dates.push(date);
        }
    }
    let line_count = out.transactions.iter().map(|t| t.lines.len() as u32).sum();
    let discount_count = out.transactions.iter().map(|t| t.discounts.len() as u32).sum();
    let facts = FileFacts {
        name: name.to_owned(),
        dialect: out.dialect,
        site: out.site,
        bytes: bytes.len() as u64,
        xml_bytes: decoded.text.len() as u64,
        compression: decoded.compression,
        encoding: decoded.encoding,
        content_hash: blake3::hash(bytes).to_hex().to_string(),
        transaction_count: out.transactions.len() as u32,
        line_count,
        discount_count,
    };
    Ok(ParsedFile { facts, transactions: out.transactions, envelope: out.envelope })
}
