//! The IcebergWriter: writes and commits one batch at a time (commits are serialised, so each batch's dedup sees
//! every earlier batch), retrying with backoff. Only after the commit are the files' credits returned and the
//! files counted done. A warehouse that stays unreachable fails the run; the batch's reservations are released.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

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
        let (result, _) =
            shared.with_retries(shared.config.max_write_attempts, || shared.stages.write(&work.batch)).await;
        shared.done(me.get_id(), work.ticket);
        match result {
            Ok(report) => {
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
