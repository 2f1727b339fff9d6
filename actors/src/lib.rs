//! poslake's supervised actor pipeline (ractor), generic over the stages the domain crate provides.
//!
//! # Layout
//! - [`stages`]: the [`Stages`] trait the domain implements (discover, fetch, parse, archive, dedup, write).
//! - [`credits`]: bounded files and bytes in flight. ractor mailboxes are unbounded, so work enters the pipeline
//!   only against a credit, returned when its batch is committed: memory depends on the limits, not the backlog.
//! - [`shared`]: configuration, pools, and what each actor holds (for retry after a failure).
//! - [`progress`]: counters and totals shared with the caller.
//! - one actor per file: [`discoverer`], [`downloader`], [`parser`], [`archiver`], [`dedup_batcher`],
//!   [`writer`], and the [`supervisor`] that restarts them (its module doc draws the tree and the policy).
//! - [`run`]: run a pipeline to the end.

pub mod archiver;
pub mod credits;
pub mod dedup_batcher;
pub mod discoverer;
pub mod downloader;
pub mod parser;
pub mod progress;
pub mod run;
pub mod shared;
pub mod stages;
pub mod supervisor;
pub mod writer;

pub use credits::{Credits, CreditsClosed, FlowLimits, Grant};
pub use progress::{Progress, Snapshot};
pub use run::{PipelineError, run};
pub use shared::PipelineConfig;
pub use stages::{Stages, WriteReport};
