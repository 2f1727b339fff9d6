//! A Downloader: fetches a file's bytes, retrying retryable errors with backoff, and hands them to a parser.
//! I/O bound: a pool of many runs at once.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::parser::ParserMsg;
use crate::shared::{InFlight, Shared, Work};
use crate::stages::Stages;

pub enum DownloaderMsg<S: Stages> {
    /// Fetch this file.
    Fetch(Work<S>),
}

pub struct Downloader<S>(PhantomData<S>);

impl<S> Downloader<S> {
    pub(crate) fn new() -> Self {
        Downloader(PhantomData)
    }
}

impl<S: Stages> Actor for Downloader<S> {
    type Msg = DownloaderMsg<S>;
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
        let DownloaderMsg::Fetch(work) = msg;
        shared.start(me.get_id(), work.ticket);
        let span = tracing::info_span!(parent: &work.spans.file, "download");
        let (result, tries) = shared
            .with_retries("download", shared.config.max_attempts, || {
                shared.stages.fetch(&work.file).instrument(span.clone())
            })
            .await;
        let my_ticket = work.ticket;
        match result {
            Ok(fetched) => {
                let text = shared.stages.text_size(&work.file, &fetched);
                if work.grant.as_ref().is_some_and(|g| text > g.bytes()) {
                    // A compressed file was let in by its compressed size; its text may be hundreds of times that,
                    // and every stage after this holds it or what is parsed from it. So it takes credit for its
                    // text first, off this actor: files queued in its mailbox hold credit, and a wait here could be
                    // for theirs. Its first grant goes back before it waits, so that no waiter holds credit another
                    // waits for. Closed credits mean a drain: it goes on without.
                    let (shared, mut work) = (Arc::clone(shared), work);
                    work.grant = None;
                    tokio::spawn(async move {
                        work.grant = shared.credits.acquire(text).await.ok();
                        to_parser(&shared, work, fetched).await;
                    });
                } else {
                    to_parser(shared, work, fetched).await;
                }
            }
            Err(e) => {
                // A download that keeps failing is dead-lettered with its reason; the run goes on.
                let kind = S::failure_kind(&e);
                let parsed = shared.stages.failed(&work.file, "download", work.attempts + tries, kind, e.to_string());
                work.spans.file.record("error.kind", "download");
                shared.send_to_batcher(work.file, work.attempts, parsed, work.grant, work.spans).await;
            }
        }
        shared.done(me.get_id(), my_ticket);
        Ok(())
    }
}

/// Hands a fetched file to a parser.
async fn to_parser<S: Stages>(shared: &Shared<S>, work: Work<S>, fetched: S::Fetched) {
    let ticket = shared.ticket();
    let held = InFlight::new(vec![(work.file.clone(), work.attempts)], None);
    let work = Work { ticket, ..work };
    shared.dispatch(&shared.parsers, ticket, held, ParserMsg::Parse(work, fetched)).await;
}
