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
//! - [`metric`]: the metric names it publishes (`metrics` facade).
//! - [`run`]: run a pipeline to the end.
//!
//! Each file's work runs under tracing spans carried in its messages: a span per batch of discovered files (the
//! trace), a span per file under it, and a span per stage under that, so a tracing subscriber (OpenTelemetry in
//! the binary) sees one trace per batch. See [`shared::Spans`].

pub mod archiver;
pub mod credits;
pub mod dedup_batcher;
pub mod discoverer;
pub mod downloader;
pub mod metric;
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
pub use shared::{PipelineConfig, Spans};
pub use stages::{Stages, WriteReport};
