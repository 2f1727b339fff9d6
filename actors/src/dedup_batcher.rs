//! The DedupBatcher: gathers parsed files into batches (by count, after the flush interval, or when the run's last
//! file has come), has the dedup store check and reserve their keys, and hands each batch to the writer.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::shared::{InFlight, ParsedWork, Shared};
use crate::stages::Stages;
use crate::writer::{BatchWork, WriterMsg};

pub enum BatcherMsg<S: Stages> {
    /// One more parsed (or dead-lettered) file.
    Add(ParsedWork<S>),
    /// Write what is pending, if anything (sent by the flush timer).
    Flush,
}

pub struct DedupBatcher<S>(PhantomData<S>);

impl<S> DedupBatcher<S> {
    pub(crate) fn new() -> Self {
        DedupBatcher(PhantomData)
    }
}

pub struct BatcherState<S: Stages> {
    shared: Arc<Shared<S>>,
    pending: Vec<ParsedWork<S>>,
    ticker: Option<JoinHandle<()>>,
}

impl<S: Stages> Actor for DedupBatcher<S> {
    type Msg = BatcherMsg<S>;
    type State = BatcherState<S>;
    type Arguments = Arc<Shared<S>>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        shared: Arc<Shared<S>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(BatcherState { shared, pending: Vec::new(), ticker: None })
    }

    async fn post_start(&self, me: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.ticker = Some(me.send_interval(state.shared.config.flush_interval, || BatcherMsg::Flush));
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // Pending files stay registered under this actor (their tickets) until their batch is handed on.
            BatcherMsg::Add(work) => {
                state.shared.start(me.get_id(), work.ticket);
                state.pending.push(work);
                // The last files of a run go at once rather than at the next tick: nothing more will join them.
                let last = state.shared.progress.reached_batcher();
                // Nor can anything join while every file the credits let in is here: more are let in only once
                // this batch is written (the in-flight bound is below the batch size, or large files used up the
                // bytes). Waiting for the tick would stall each such batch by the flush interval.
                let here = state.pending.iter().filter(|w| w.grant.is_some()).count();
                let all_here = here >= state.shared.credits.granted() as usize;
                if state.pending.len() >= state.shared.config.batch_files || last || all_here {
                    flush(&me, state).await;
                }
            }
            BatcherMsg::Flush => {
                if !state.pending.is_empty() {
                    flush(&me, state).await;
                }
            }
        }
        Ok(())
    }
}

async fn flush<S: Stages>(me: &ActorRef<BatcherMsg<S>>, state: &mut BatcherState<S>) {
    let shared = state.shared.clone();
    let mut files = Vec::with_capacity(state.pending.len());
    let mut grants = Vec::with_capacity(state.pending.len());
    let mut parsed = Vec::with_capacity(state.pending.len());
    let mut tickets = Vec::with_capacity(state.pending.len());
    let mut spans: Vec<crate::shared::Spans> = Vec::with_capacity(state.pending.len());
    for w in state.pending.drain(..) {
        files.push((w.file, w.attempts));
        grants.extend(w.grant);
        parsed.push(w.parsed);
        tickets.push(w.ticket);
        spans.push(w.spans);
    }
    // The batch's stages run in the trace of its first file's discovery batch, linked to the others'.
    let trace = spans.first().map_or_else(tracing::Span::none, |s| s.batch.clone());
    let dedup_span = tracing::info_span!(parent: &trace, "dedup", files = files.len() as i64);
    for s in &spans {
        if s.batch.id() != trace.id() {
            dedup_span.follows_from(&s.batch);
        }
    }
    let batch = match shared.stages.dedup(parsed).instrument(dedup_span).await {
        Ok(batch) => batch,
        Err(e) => {
            // The store stayed unreachable past its limit (or failed outright): the run stops; these files are
            // not committed, so the next run takes them again.
            shared.progress.fail(format!("dedup of a batch of {} files failed: {e}", files.len()));
            for t in tickets {
                shared.done(me.get_id(), t);
            }
            return;
        }
    };
    let info = S::batch_info(&batch);
    let ticket = shared.ticket();
    let held = InFlight::new(files.clone(), Some(info.clone()));
    let work = BatchWork { ticket, batch, info, files, grants, trace, spans };
    // Registered under the writer before the files leave this actor's registry: never held by neither.
    shared.dispatch(&shared.writer, ticket, held, WriterMsg::Write(work)).await;
    for t in tickets {
        shared.done(me.get_id(), t);
    }
}
