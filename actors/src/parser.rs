//! A Parser: runs the CPU-bound parse on a thread of its own (never on the async workers) and hands the result to
//! an archiver. One per core. A panic in the parse fails this actor; its supervisor restarts it and the file is
//! retried.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

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

/// A parse to run on the parser's thread.
type Job = Box<dyn FnOnce() + Send>;

pub struct ParserState<S: Stages> {
    shared: Arc<Shared<S>>,
    /// The parser's own thread: it waits on this channel alone, where a parse on tokio's blocking pool shares one
    /// queue (a mutex and a condition variable) with every file read and archive write. Dropped with the state, which
    /// ends the thread.
    thread: SyncSender<Job>,
}

impl<S: Stages> Actor for Parser<S> {
    type Msg = ParserMsg<S>;
    type State = ParserState<S>;
    type Arguments = Arc<Shared<S>>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        shared: Arc<Shared<S>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // One job at a time: the actor handles one message at a time and waits for its parse.
        let (thread, jobs) = sync_channel::<Job>(1);
        std::thread::Builder::new().name("poslake-parse".into()).spawn(move || {
            while let Ok(job) = jobs.recv() {
                job();
            }
        })?;
        Ok(ParserState { shared, thread })
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ParserMsg::Parse(work, fetched) = msg;
        let shared = &state.shared;
        shared.start(me.get_id(), work.ticket);
        let stages = shared.stages.clone();
        let file = work.file.clone();
        let span = tracing::info_span!(parent: &work.spans.file, "parse");
        let (done, parsed) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| span.in_scope(|| stages.parse(&file, fetched))));
            let _ = done.send(result);
        });
        state.thread.send(job).map_err(|_| format!("the parse thread of {:?} is gone", work.file))?;
        let parsed = match parsed.await {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(format!("parse of {:?} panicked: {why}", work.file).into());
            }
            Err(_) => return Err(format!("the parse thread of {:?} ended", work.file).into()),
        };
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
