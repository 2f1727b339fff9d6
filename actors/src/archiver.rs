//! An Archiver: writes the raw file unchanged to the bronze archive before its records go on, retrying with
//! backoff; a file that still cannot be archived goes on as a failure (a dead letter, or deferred to the next run),
//! as a download that keeps failing does. Retrying it from the download would only repeat the same writes: each of
//! `max_attempts` fetches tried `max_attempts` writes.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::shared::{ParsedWork, Shared};
use crate::stages::Stages;

pub enum ArchiverMsg<S: Stages> {
    /// Archive this parsed file's raw bytes.
    Archive(ParsedWork<S>),
}

pub struct Archiver<S>(PhantomData<S>);

impl<S> Archiver<S> {
    pub(crate) fn new() -> Self {
        Archiver(PhantomData)
    }
}

impl<S: Stages> Actor for Archiver<S> {
    type Msg = ArchiverMsg<S>;
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
        let ArchiverMsg::Archive(work) = msg;
        shared.start(me.get_id(), work.ticket);
        let my_ticket = work.ticket;
        let span = tracing::info_span!(parent: &work.spans.file, "archive");
        let (result, tries) = shared
            .with_retries("archive", shared.config.max_attempts, || {
                shared.stages.archive(&work.parsed).instrument(span.clone())
            })
            .await;
        match result {
            Ok(()) => {
                let ParsedWork { file, attempts, parsed, grant, spans, .. } = work;
                shared.send_to_batcher(file, attempts, parsed, grant, spans).await;
            }
            Err(e) => {
                let ParsedWork { file, attempts, grant, spans, .. } = work;
                let kind = S::failure_kind(&e);
                let failed = shared.stages.failed(&file, "archive", attempts + tries, kind, e.to_string());
                spans.file.record("error.kind", "archive");
                shared.send_to_batcher(file, attempts, failed, grant, spans).await;
            }
        }
        shared.done(me.get_id(), my_ticket);
        Ok(())
    }
}
