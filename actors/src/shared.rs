//! State every actor of one run shares: the stages, the configuration, the credits, the progress, the pools of
//! the next stages (refreshed when the supervisor replaces a failed actor) and what each actor holds right now
//! (so that a failed actor's work is retried, not lost).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ractor::{ActorId, ActorRef};

use crate::credits::{Credits, FlowLimits, Grant};
use crate::progress::Progress;
use crate::stages::Stages;
use crate::{archiver, dedup_batcher, discoverer, downloader, parser, writer};

/// How long a sender waits for a failed actor's replacement before the run fails.
pub const SEND_PATIENCE: Duration = Duration::from_secs(10);

/// How a run is shaped. Every bound is here, with its default and why.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Downloaders: I/O bound, so many in flight. Default 16.
    pub downloaders: usize,
    /// Parsers: CPU bound, one per core. Default: available parallelism.
    pub parsers: usize,
    /// Archivers: I/O bound. Default 8.
    pub archivers: usize,
    /// Files per write batch. Default 16. Batches are written into data files that stay open until the domain
    /// commits, so small batches cost no small files; they keep less parsed data waiting.
    pub batch_files: usize,
    /// A partial batch is written after this long. Default 500 ms.
    pub flush_interval: Duration,
    /// Files and bytes in flight across the whole pipeline: this, not the backlog, bounds memory. Parsed files
    /// take several times their raw size, so the defaults are small: 32 files and 32 MiB of raw bytes. On 2 cores
    /// and local storage that ingests within a few percent of 128 files, at 230 instead of 380 MiB peak RSS
    /// (docs/performance.md). Remote storage wants more files in flight to hide its latency.
    pub limits: FlowLimits,
    /// Tries per file before it is dead-lettered. Default 3.
    pub max_attempts: u32,
    /// Restarts of one actor before the run gives up. Default 10.
    pub max_restarts: u32,
    /// Tries of one write before the run gives up (the warehouse is unreachable). Default 5.
    pub max_write_attempts: u32,
    /// First backoff between retries; doubled each time, with full jitter. Default 100 ms.
    pub backoff: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            downloaders: 16,
            parsers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            archivers: 8,
            batch_files: 16,
            flush_interval: Duration::from_millis(500),
            limits: FlowLimits { max_files: 32, max_bytes: 32 << 20 },
            max_attempts: 3,
            max_restarts: 10,
            max_write_attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Identifies one message in flight: registered under the actor it was sent to until that actor is done with it.
pub type Ticket = u64;

/// The spans one file's work runs under, carried in its messages: its discovery batch's span (the root of a
/// trace) and its own span (the parent of its stages' spans).
#[derive(Debug, Clone)]
pub struct Spans {
    pub batch: tracing::Span,
    pub file: tracing::Span,
}

impl Spans {
    /// The spans of a file discovered in `batch`.
    pub fn file<F: std::fmt::Debug>(batch: &tracing::Span, file: &F, bytes: u64, attempt: u32) -> Spans {
        let span = tracing::info_span!(
            parent: batch,
            "file",
            file = ?file,
            // Signed: OpenTelemetry integers are i64 (tracing would turn a u64 into text).
            bytes = bytes as i64,
            attempt = i64::from(attempt),
            vendor = tracing::field::Empty,
            site = tracing::field::Empty,
            transactions = tracing::field::Empty,
            error.kind = tracing::field::Empty,
        );
        Spans { batch: batch.clone(), file: span }
    }

    /// Spans for work outside any batch (tests, and files sent on without one).
    pub fn none() -> Spans {
        Spans { batch: tracing::Span::none(), file: tracing::Span::none() }
    }
}

/// One file in flight, with the credit it holds.
pub struct Work<S: Stages> {
    pub ticket: Ticket,
    pub file: S::File,
    pub attempts: u32,
    pub grant: Option<Grant>,
    pub spans: Spans,
}

/// A parsed (or dead-lettered) file on its way to the batcher.
pub struct ParsedWork<S: Stages> {
    pub ticket: Ticket,
    pub file: S::File,
    pub attempts: u32,
    pub parsed: S::Parsed,
    pub grant: Option<Grant>,
    pub spans: Spans,
}

/// What a message sent to an actor holds: given back to the Discoverer if that actor fails before it is done
/// with it (whether it was being handled or still waiting in the mailbox, which a failure drops).
pub struct InFlight<S: Stages> {
    pub files: Vec<(S::File, u32)>,
    pub batch: Option<S::BatchInfo>,
    /// The actor had started handling it (not merely queued): only then does a failure count as an attempt,
    /// so that files are not dead-lettered for other files' crashes.
    pub in_hand: bool,
}

impl<S: Stages> InFlight<S> {
    pub fn new(files: Vec<(S::File, u32)>, batch: Option<S::BatchInfo>) -> Self {
        InFlight { files, batch, in_hand: false }
    }
}

pub struct Pool<M> {
    refs: RwLock<Vec<ActorRef<M>>>,
    next: AtomicUsize,
}

impl<M: Send + 'static> Pool<M> {
    pub(crate) fn new() -> Self {
        Pool { refs: RwLock::new(Vec::new()), next: AtomicUsize::new(0) }
    }

    pub fn set(&self, index: usize, actor: ActorRef<M>) {
        if let Ok(mut refs) = self.refs.write() {
            if index < refs.len() {
                refs[index] = actor;
            } else {
                refs.push(actor);
            }
        }
    }

    /// The next actor, round-robin (credits bound how much waits in any mailbox).
    pub fn pick(&self) -> Option<ActorRef<M>> {
        let refs = self.refs.read().ok()?;
        if refs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % refs.len();
        Some(refs[i].clone())
    }

    pub fn all(&self) -> Vec<ActorRef<M>> {
        self.refs.read().map(|r| r.clone()).unwrap_or_default()
    }
}

pub struct Shared<S: Stages> {
    pub stages: Arc<S>,
    pub config: PipelineConfig,
    pub credits: Credits,
    pub progress: Arc<Progress>,
    /// Per actor, the messages sent to it that it has not finished with.
    pub inflight: Mutex<HashMap<ActorId, HashMap<Ticket, InFlight<S>>>>,
    /// Actors that failed: registrations under them are swept up.
    dead: Mutex<std::collections::HashSet<ActorId>>,
    tickets: AtomicU64,
    /// Discovery batches so far (each a trace).
    pub batches: AtomicU64,
    pub discoverer: Pool<discoverer::DiscovererMsg<S>>,
    pub downloaders: Pool<downloader::DownloaderMsg<S>>,
    pub parsers: Pool<parser::ParserMsg<S>>,
    pub archivers: Pool<archiver::ArchiverMsg<S>>,
    pub batcher: Pool<dedup_batcher::BatcherMsg<S>>,
    pub writer: Pool<writer::WriterMsg<S>>,
}

impl<S: Stages> Shared<S> {
    pub fn new(stages: Arc<S>, config: PipelineConfig, progress: Arc<Progress>) -> Self {
        Shared {
            credits: Credits::new(config.limits),
            stages,
            config,
            progress,
            inflight: Mutex::new(HashMap::new()),
            dead: Mutex::new(std::collections::HashSet::new()),
            tickets: AtomicU64::new(1),
            batches: AtomicU64::new(0),
            discoverer: Pool::new(),
            downloaders: Pool::new(),
            parsers: Pool::new(),
            archivers: Pool::new(),
            batcher: Pool::new(),
            writer: Pool::new(),
        }
    }

    pub fn ticket(&self) -> Ticket {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `msg` (carrying `ticket`) to an actor of `pool`, registered under that actor with what it holds.
    /// A send to an actor that just died (its replacement is on the way) is tried again on the next pick for up
    /// to [`SEND_PATIENCE`]; after that the run fails.
    pub async fn dispatch<M: Send + 'static>(&self, pool: &Pool<M>, ticket: Ticket, held: InFlight<S>, msg: M) {
        let deadline = tokio::time::Instant::now() + SEND_PATIENCE;
        let mut msg = msg;
        let mut held = Some(held);
        loop {
            if let Some(target) = pool.pick() {
                let id = target.get_id();
                if let (Ok(mut m), Some(h)) = (self.inflight.lock(), held.take()) {
                    m.entry(id).or_default().insert(ticket, h);
                }
                match target.send_message(msg) {
                    Ok(()) => return,
                    Err(ractor::MessagingErr::SendErr(back)) => {
                        // The target died. If our registration is still there, take it back and try the next pick;
                        // if the supervisor already took it, the supervisor retries these files: drop the message.
                        held = self.done(id, ticket);
                        if held.is_none() {
                            return;
                        }
                        msg = back;
                    }
                    Err(e) => {
                        self.progress.fail(format!("send failed: {e}"));
                        return;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.progress.fail("no live actor to send to".into());
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `actor` starts handling the message `ticket`.
    pub fn start(&self, actor: ActorId, ticket: Ticket) {
        if let Ok(mut m) = self.inflight.lock()
            && let Some(h) = m.get_mut(&actor).and_then(|t| t.get_mut(&ticket))
        {
            h.in_hand = true;
        }
    }

    /// `actor` is done with the message `ticket`; returns what it held.
    pub fn done(&self, actor: ActorId, ticket: Ticket) -> Option<InFlight<S>> {
        let mut m = self.inflight.lock().ok()?;
        let held = m.get_mut(&actor)?.remove(&ticket);
        if m.get(&actor).is_some_and(HashMap::is_empty) {
            m.remove(&actor);
        }
        held
    }

    /// Marks `actor` dead: anything registered under it from now on (a send that raced its death) is swept up
    /// and retried by [`Shared::sweep`].
    pub fn mark_dead(&self, actor: ActorId) {
        if let Ok(mut d) = self.dead.lock() {
            d.insert(actor);
        }
    }

    /// Retries whatever is registered under dead actors (run periodically).
    pub async fn sweep(&self) {
        let dead: Vec<ActorId> = self.dead.lock().map(|d| d.iter().copied().collect()).unwrap_or_default();
        for id in dead {
            for held in self.take_all(id) {
                self.retry_held(held, "sweep", "sent to an actor as it failed".into()).await;
            }
        }
    }

    /// Gives back what a failed actor held: its batch's reservations are released and its files retried.
    pub async fn retry_held(&self, held: InFlight<S>, stage: &'static str, reason: String) {
        if let Some(info) = &held.batch {
            self.stages.abandon(info);
        }
        let attempt = u32::from(held.in_hand);
        for (file, attempts) in held.files {
            self.retry(file, attempts + attempt, stage, reason.clone()).await;
        }
    }

    /// Everything a failed actor held.
    pub fn take_all(&self, actor: ActorId) -> Vec<InFlight<S>> {
        self.inflight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&actor))
            .map(|h| h.into_values().collect())
            .unwrap_or_default()
    }

    /// Sends a file back to be tried again from the start, or, past the attempt limit, on as a dead letter.
    pub async fn retry(&self, file: S::File, attempts: u32, stage: &'static str, reason: String) {
        self.progress.retried();
        metrics::counter!(crate::metric::RETRIES, "stage" => stage).increment(1);
        if attempts >= self.config.max_attempts {
            let parsed = self.stages.failed(&file, stage, attempts, "gave_up", reason);
            self.send_to_batcher(file, attempts, parsed, None, Spans::none()).await;
        } else {
            let ticket = self.ticket();
            let held = InFlight::new(vec![(file.clone(), attempts)], None);
            self.dispatch(&self.discoverer, ticket, held, discoverer::DiscovererMsg::Retry(ticket, file, attempts))
                .await;
        }
    }

    pub async fn send_to_batcher(
        &self,
        file: S::File,
        attempts: u32,
        parsed: S::Parsed,
        grant: Option<Grant>,
        spans: Spans,
    ) {
        let ticket = self.ticket();
        let held = InFlight::new(vec![(file.clone(), attempts)], None);
        let work = ParsedWork { ticket, file, attempts, parsed, grant, spans };
        self.dispatch(&self.batcher, ticket, held, dedup_batcher::BatcherMsg::Add(work)).await;
    }

    /// Calls `op` until it succeeds, fails with an error that is not retryable, or has been tried `limit` times,
    /// sleeping with backoff between tries. Returns the last result and how many tries it took.
    pub async fn with_retries<T, F, Fut>(
        &self,
        stage: &'static str,
        limit: u32,
        mut op: F,
    ) -> (Result<T, S::Error>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, S::Error>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match op().await {
                Err(e) if S::is_retryable(&e) && tries < limit => {
                    tracing::warn!(error = %e, stage, attempt = tries, "retrying");
                    self.progress.retried();
                    metrics::counter!(crate::metric::RETRIES, "stage" => stage).increment(1);
                    tokio::time::sleep(self.backoff(tries)).await;
                }
                result => return (result, tries),
            }
        }
    }

    /// Exponential backoff with full jitter for the given attempt (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.config.backoff.saturating_mul(1 << attempt.min(10));
        let nanos = cap.as_nanos() as u64;
        // Jitter from the clock's low bits: no RNG dependency for a sleep length.
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        Duration::from_nanos(if nanos == 0 { 0 } else { u64::from(seed) % nanos })
    }
}
