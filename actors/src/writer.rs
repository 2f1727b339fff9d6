//! The IcebergWriter: writes and commits one batch at a time (commits are serialised, so each batch's dedup sees
//! every earlier batch), retrying with backoff. Only after the commit are the files' credits returned and the
//! files counted done. A warehouse that stays unreachable fails the run; the batch's reservations are released.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::credits::Grant;
use crate::shared::Shared;
use crate::stages::Stages;

pub struct BatchWork<S: Stages> {
    pub ticket: crate::shared::Ticket,
    pub batch: S::Batch,
    pub info: S::BatchInfo,
    /// The batch's files and their attempts, to retry them if this actor fails.
    pub files: Vec<(S::File, u32)>,
    /// Returned (dropped) once the batch is committed.
    pub grants: Vec<Grant>,
    /// The trace the batch's write runs in, and its files' spans (kept open until the batch is written).
    pub trace: tracing::Span,
    pub spans: Vec<crate::shared::Spans>,
}

pub enum WriterMsg<S: Stages> {
    /// Write and commit this batch.
    Write(BatchWork<S>),
}

pub struct IcebergWriter<S>(PhantomData<S>);

impl<S> IcebergWriter<S> {
    pub(crate) fn new() -> Self {
        IcebergWriter(PhantomData)
    }
}

impl<S: Stages> Actor for IcebergWriter<S> {
    type Msg = WriterMsg<S>;
    type State = Arc<Shared<S>>;
    type Arguments = Arc<Shared<S>>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        shared: Arc<Shared<S>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WriterMsg::Write(work) = msg;
        shared.start(me.get_id(), work.ticket);
        let span = tracing::info_span!(
            parent: &work.trace,
            "write",
            files = work.files.len() as i64,
            transactions = tracing::field::Empty,
            new = tracing::field::Empty,
            duplicates = tracing::field::Empty,
            quarantined = tracing::field::Empty,
            dead_letters = tracing::field::Empty,
        );
        let (result, _) = shared
            .with_retries("write", shared.config.max_write_attempts, || {
                shared.stages.write(&work.batch).instrument(span.clone())
            })
            .await;
        shared.done(me.get_id(), work.ticket);
        match result {
            Ok(report) => {
                span.record("transactions", report.transactions as i64);
                span.record("new", report.new_transactions as i64);
                span.record("duplicates", report.duplicates as i64);
                span.record("quarantined", report.quarantined as i64);
                span.record("dead_letters", report.dead_letters as i64);
                shared.progress.committed(work.files.len() as u64, &report);
                drop(work.grants);
            }
            Err(e) => {
                shared.stages.abandon(&work.info);
                shared.progress.fail(format!("writing a batch of {} files failed: {e}", work.files.len()));
            }
        }
        Ok(())
    }
}
