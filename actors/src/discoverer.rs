//! The Discoverer: streams the staging listing and feeds files downstream only as credits allow, so the backlog
//! stays in storage, not in memory. Also takes back files to retry.

use std::marker::PhantomData;
use std::sync::Arc;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::credits::Grant;
use crate::dedup_batcher::BatcherMsg;
use crate::downloader::DownloaderMsg;
use crate::shared::{InFlight, Shared, Spans, Ticket, Work};
use crate::stages::Stages;

pub enum DiscovererMsg<S: Stages> {
    /// List staging and feed every file (sent once, at start).
    Start,
    /// Try this file again from the download (`attempts` so far).
    Retry(Ticket, S::File, u32),
}

pub struct Discoverer<S>(PhantomData<S>);

impl<S> Discoverer<S> {
    pub(crate) fn new() -> Self {
        Discoverer(PhantomData)
    }
}

impl<S: Stages> Actor for Discoverer<S> {
    type Msg = DiscovererMsg<S>;
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
        match msg {
            DiscovererMsg::Start => {
                let mut files = shared.stages.discover();
                let mut batch = tracing::Span::none();
                let mut in_batch = 0usize;
                while !shared.progress.stop_requested()
                    && let Some(next) = files.next().await
                {
                    let file = match next {
                        Ok(file) => file,
                        Err(e) => {
                            shared.progress.fail(format!("listing staging failed: {e}"));
                            return Ok(());
                        }
                    };
                    let size = S::size(&file);
                    // Waits here while the pipeline is full: backpressure reaches the listing.
                    let Ok(grant) = shared.credits.acquire(size).await else { return Ok(()) };
                    if shared.progress.stop_requested() {
                        break;
                    }
                    shared.progress.discovered(size);
                    // One trace per batch of discovered files: its span parents the files' spans.
                    if in_batch == 0 {
                        batch = new_batch(shared, false);
                    }
                    in_batch = (in_batch + 1) % shared.config.batch_files.max(1);
                    let spans = Spans::file(&batch, &file, size, 0);
                    send(shared, file, 0, grant, spans).await;
                }
                shared.progress.discovery_finished();
                // The last files may have reached the batcher before discovery was marked finished, so the batcher
                // could not tell they were the last: have it write them now rather than at its next tick.
                if shared.progress.all_reached_batcher() {
                    for batcher in shared.batcher.all() {
                        let _ = batcher.cast(BatcherMsg::Flush);
                    }
                }
            }
            DiscovererMsg::Retry(ticket, file, attempts) => {
                let size = S::size(&file);
                let Ok(grant) = shared.credits.acquire(size).await else { return Ok(()) };
                let spans = Spans::file(&new_batch(shared, true), &file, size, attempts);
                send(shared, file, attempts, grant, spans).await;
                shared.done(me.get_id(), ticket);
            }
        }
        Ok(())
    }
}

/// A new discovery batch: the root span of a trace.
fn new_batch<S: Stages>(shared: &Shared<S>, retry: bool) -> tracing::Span {
    let n = shared.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info_span!(parent: None, "ingest.batch", batch = n, retry)
}

async fn send<S: Stages>(shared: &Shared<S>, file: S::File, attempts: u32, grant: Grant, spans: Spans) {
    let ticket = shared.ticket();
    let held = InFlight::new(vec![(file.clone(), attempts)], None);
    let work = Work { ticket, file, attempts, grant: Some(grant), spans };
    shared.dispatch(&shared.downloaders, ticket, held, DownloaderMsg::Fetch(work)).await;
}
