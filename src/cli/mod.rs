//! The `poslake` binary's commands, one module each, and their arguments.

pub mod args;
pub mod dedup;
pub mod ingest;
pub mod lake;
pub mod parse;
pub mod progress;
pub mod stop;
