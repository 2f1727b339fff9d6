//! poslake's supervised actor pipeline: topology, flow control, supervision and clustering, generic over the
//! stages that `poslake` (the domain crate) provides.
//!
//! # Layout
//! - [`credits`]: bounded in-flight files and bytes between stages. ractor mailboxes are unbounded, so every
//!   hand-off in the pipeline first takes a credit here; memory then depends on the limits, never on the backlog.
//!
//! The actors themselves (Discoverer, Downloader pool, Archiver, Parser pool, DedupBatcher, IcebergWriter) land
//! with the pipeline issue; see docs/architecture.md for where this crate is going.

pub mod credits;

pub use credits::{Credits, CreditsClosed, FlowLimits, Grant};
