//! Typed parse errors. Every error names the file, where in it (byte offset, line, column of the XML text after
//! decompression and transcoding), and why. None is retryable: the same bytes fail the same way, so a file that
//! fails here goes to the dead letters at once.

use std::fmt;

use serde::Serialize;

/// Where in the XML text an error was found. Offsets count bytes of the UTF-8 text the parser read (after
/// decompression and transcoding); lines and columns are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    pub offset: u64,
    pub line: u32,
    pub column: u32,
}

impl Position {
    pub const START: Position = Position { offset: 0, line: 1, column: 1 };

    /// Computes line and column for `offset` in `text`. Called on the error path only.
    pub fn locate(text: &str, offset: u64) -> Position {
        let end = (offset as usize).min(text.len());
        let before = &text.as_bytes()[..end];
        let line = before.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Position { offset, line, column: (end - line_start) as u32 + 1 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {} (byte {})", self.line, self.column, self.offset)
    }
}

/// Why a file could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{file}: empty file")]
    Empty { file: String },

    #[error("{file}: larger than the limit of {limit} bytes once decompressed")]
    TooLarge { file: String, limit: u64 },

    /// Each business date is a partition of every table, with its own data files: a file spread over very many
    /// makes as many open writers, and memory and small files grow with them (an audit saw 1.5 GB and 60,000 data
    /// files from one 8 MB file of 20,000 dates).
    #[error(
        "{file}: its transactions fall on more than {limit} business dates (one file is a shift, a day or a period); \
         split it"
    )]
    TooManyDates { file: String, limit: usize },

    #[error("{file}: cannot decompress ({compression}): {reason}")]
    Decompress { file: String, compression: &'static str, reason: String },

    #[error("{file}: unsupported archive format ({format}); poslake reads plain or gzip-compressed XML")]
    UnsupportedArchive { file: String, format: &'static str },

    #[error("{file}: unsupported character encoding {label:?}")]
    UnsupportedEncoding { file: String, label: String },

    #[error("{file}: text is not valid {encoding} at {position}")]
    InvalidEncoding { file: String, encoding: &'static str, position: Position },

    #[error("{file}: malformed XML at {position}: {reason}")]
    Malformed { file: String, position: Position, reason: String },

    #[error("{file}: XML ends early at {position}: {open} element(s) still open, innermost <{innermost}>")]
    Truncated { file: String, position: Position, open: usize, innermost: String },

    #[error("{file}: DOCTYPE declares entities at {position}; entity declarations are refused (expansion attacks)")]
    EntityDeclaration { file: String, position: Position },

    #[error("{file}: reference to undeclared entity &{name}; at {position}")]
    UnknownEntity { file: String, position: Position, name: String },

    #[error("{file}: elements nested deeper than {limit} at {position}")]
    TooDeep { file: String, position: Position, limit: usize },

    #[error("{file}: text of one element, or value of one attribute, larger than {limit} bytes at {position}")]
    TextTooLarge { file: String, position: Position, limit: usize },

    /// The flat bronze record would be out of all proportion to the file (long names repeated down deep paths
    /// for every value): refused before it exhausts memory.
    #[error("{file}: its flat record would exceed {limit} bytes (at {position}), far more than the file's size")]
    RecordTooLarge { file: String, position: Position, limit: usize },

    #[error("{file}: unknown dialect: root element <{root}>{} at {position}", namespace.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default())]
    UnknownDialect { file: String, position: Position, root: String, namespace: Option<String> },

    #[error("{file}: root element <{root}> at {position} is not a {dialect} file")]
    DialectMismatch { file: String, position: Position, dialect: &'static str, root: String },

    #[error("{file}: transaction {transaction} (ending at {position}) has no {field}")]
    MissingField { file: String, position: Position, transaction: u32, field: &'static str },

    #[error("{file}: invalid {field} {value:?} at {position}: {reason}")]
    InvalidValue { file: String, position: Position, field: &'static str, value: String, reason: &'static str },
}

impl ParseError {
    /// A short stable name for the kind of error, for dead-letter records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::Empty { .. } => "empty",
            ParseError::TooLarge { .. } => "too_large",
            ParseError::TooManyDates { .. } => "too_many_dates",
            ParseError::Decompress { .. } => "decompress",
            ParseError::UnsupportedArchive { .. } => "unsupported_archive",
            ParseError::UnsupportedEncoding { .. } => "unsupported_encoding",
            ParseError::InvalidEncoding { .. } => "invalid_encoding",
            ParseError::Malformed { .. } => "malformed",
            ParseError::Truncated { .. } => "truncated",
            ParseError::EntityDeclaration { .. } => "entity_declaration",
            ParseError::UnknownEntity { .. } => "unknown_entity",
            ParseError::TooDeep { .. } => "too_deep",
            ParseError::TextTooLarge { .. } => "text_too_large",
            ParseError::RecordTooLarge { .. } => "record_too_large",
            ParseError::UnknownDialect { .. } => "unknown_dialect",
            ParseError::DialectMismatch { .. } => "dialect_mismatch",
            ParseError::MissingField { .. } => "missing_field",
            ParseError::InvalidValue { .. } => "invalid_value",
        }
    }

    /// Parsing is deterministic: the same bytes fail the same way, so no parse error is worth a retry.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// The position, where the error has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            ParseError::InvalidEncoding { position, .. }
            | ParseError::Malformed { position, .. }
            | ParseError::Truncated { position, .. }
            | ParseError::EntityDeclaration { position, .. }
            | ParseError::UnknownEntity { position, .. }
            | ParseError::TooDeep { position, .. }
            | ParseError::TextTooLarge { position, .. }
            | ParseError::RecordTooLarge { position, .. }
            | ParseError::UnknownDialect { position, .. }
            | ParseError::DialectMismatch { position, .. }
            | ParseError::MissingField { position, .. }
            | ParseError::InvalidValue { position, .. } => Some(*position),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_columns() {
        let text = "ab\ncde\nf";
        assert_eq!(Position::locate(text, 0), Position { offset: 0, line: 1, column: 1 });
        assert_eq!(Position::locate(text, 4), Position { offset: 4, line: 2, column: 2 });
        assert_eq!(Position::locate(text, 99).line, 3);
    }
}
