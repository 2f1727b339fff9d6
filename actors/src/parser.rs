//! A Parser: runs the CPU-bound parse on a blocking thread (never on the async workers) and hands the result to
//! an archiver. One per core. A panic in the parse fails this actor; its supervisor restarts it and the file is
//! retried.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::archiver::ArchiverMsg;
use crate::shared::{InFlight, ParsedWork, Shared, Work};
use crate::stages::Stages;

pub enum ParserMsg<S: Stages> {
    /// Parse these bytes of this file.
    Parse(Work<S>, S::Fetched),
}

pub struct Parser<S>(PhantomData<S>);

impl<S> Parser<S> {
    pub(crate) fn new() -> Self {
        Parser(PhantomData)
    }
}

impl<S: Stages> Actor for Parser<S> {
    type Msg = ParserMsg<S>;
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
        let ParserMsg::Parse(work, fetched) = msg;
        shared.start(me.get_id(), work.ticket);
        let stages = shared.stages.clone();
        let file = work.file.clone();
        let span = tracing::info_span!(parent: &work.spans.file, "parse");
        let parsed = tokio::task::spawn_blocking(move || span.in_scope(|| stages.parse(&file, fetched)))
            .await
            .map_err(|e| format!("parse of {:?} panicked: {e}", work.file))?;
        let ticket = shared.ticket();
        let held = InFlight::new(vec![(work.file.clone(), work.attempts)], None);
        S::annotate(&parsed, &work.spans.file);
        let out = ParsedWork {
            ticket,
            file: work.file,
            attempts: work.attempts,
            parsed,
            grant: work.grant,
            spans: work.spans,
        };
        shared.dispatch(&shared.archivers, ticket, held, ArchiverMsg::Archive(out)).await;
        shared.done(me.get_id(), work.ticket);
        Ok(())
    }
}
