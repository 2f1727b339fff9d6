//! Stopping the main job on a signal. The first SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and Kubernetes send)
//! drains the run in progress: no new file is taken, the files in flight are committed, and a service waiting for
//! its next run ends at once. A second signal exits at once: nothing uncommitted becomes visible, and the next run
//! redoes it. A command that tends the lake or the store (`maintain`, `reconcile`, `dedup stats`/`rebuild`/`bench`)
//! stops at its next step on the first signal ([`until_signal`]): each of their steps is safe to cut short, as a
//! kill is.

use std::sync::{Arc, Mutex};

use poslake_actors::Progress;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "Ctrl-C",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as shells report a process a signal ended.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

pub struct Stopper {
    inner: Arc<Inner>,
    /// What a stop leaves, said after it: the next run's work, or nothing.
    aftermath: &'static str,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes a service sleeping between runs (a permit is kept if none is sleeping yet).
    stopped: Notify,
}

#[derive(Default)]
struct State {
    signal: Option<Signal>,
    /// The run in progress, asked to drain when the signal comes.
    current: Option<Arc<Progress>>,
}

impl Stopper {
    /// Takes over SIGINT and SIGTERM for the rest of the process. `notice` says what the first signal does; `json`:
    /// the command's reader takes JSON on stdout, and gets a line from a second signal too.
    pub fn install(notice: &'static str, aftermath: &'static str, json: bool) -> std::io::Result<Self> {
        let at_once = match aftermath == DRAIN_AFTERMATH {
            true => "nothing uncommitted became visible, and the next run finishes or redoes what was in flight",
            false => "the command did not finish, and what it had not committed is left as a kill leaves it",
        };
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let inner = Arc::new(Inner { state: Mutex::new(State::default()), stopped: Notify::new() });
        let shared = inner.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                Some(()) = interrupt.recv() => Signal::Interrupt,
                Some(()) = terminate.recv() => Signal::Terminate,
                else => return,
            };
            if poslake::telemetry::json_logs() {
                tracing::warn!(signal = first.name(), "stopping: {notice}");
            } else {
                // On its own line: a terminal shows `^C`, and maybe the progress bar, where the cursor is.
                eprintln!("\nstopping on {}: {notice}", first.name());
            }
            if let Ok(mut state) = shared.state.lock() {
                state.signal = Some(first);
                if let Some(progress) = &state.current {
                    progress.request_stop();
                }
            }
            // Waits that could last long (an unreachable Redis) end now rather than at their limit. After the signal
            // is recorded: a run they cut short is then seen as stopped by it, not as failed.
            poslake::drain::request();
            shared.stopped.notify_one();
            let second = tokio::select! {
                _ = interrupt.recv() => Signal::Interrupt,
                _ = terminate.recv() => Signal::Terminate,
            };
            let quit = format!("stopped at once by a second signal ({}): {at_once}", second.name());
            poslake::telemetry::notice(poslake::telemetry::Notice::Warning, &quit);
            if json {
                let _ = crate::print_json_error(&anyhow::anyhow!(quit), Some(first.name()));
            }
            std::process::exit(i32::from(first.exit_code()));
        });
        Ok(Stopper { inner, aftermath })
    }

    /// Makes `progress` the run a signal drains; if a signal came already, it is drained from the start.
    pub fn watch(&self, progress: &Arc<Progress>) {
        if let Ok(mut state) = self.inner.state.lock() {
            if state.signal.is_some() {
                progress.request_stop();
            }
            state.current = Some(progress.clone());
        }
    }

    /// A run that failed after a signal: the drain cut it short (a wait for an unreachable Redis ends at once) or
    /// it failed meanwhile. Either way the process stops as the signal asked, and says why; nothing uncommitted
    /// became visible, and the next run takes the files again. A single run exits with the signal's code (it did not
    /// finish); a service with 0, as every service stopped by a signal does (its runs go on at its next start).
    /// Without a signal the error is the caller's. With `--json` the error goes to stdout as well.
    pub fn failed_run(
        &self,
        error: anyhow::Error,
        service: bool,
        json: bool,
    ) -> anyhow::Result<std::process::ExitCode> {
        let Some(signal) = self.signal() else { return Err(error) };
        use poslake::telemetry::{Notice, notice};
        notice(Notice::Error, &crate::error_chain(&error));
        if json {
            crate::print_json_error(&error, Some(signal.name()))?;
        }
        let stopped = format!("stopped by {}: {}", signal.name(), self.aftermath);
        notice(Notice::Plain, &stopped);
        Ok(match service {
            true => std::process::ExitCode::SUCCESS,
            false => std::process::ExitCode::from(signal.exit_code()),
        })
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<Signal> {
        self.inner.state.lock().ok().and_then(|s| s.signal)
    }

    /// Returns the signal once one has come.
    pub async fn signalled(&self) -> Signal {
        loop {
            if let Some(signal) = self.signal() {
                return signal;
            }
            self.inner.stopped.notified().await;
        }
    }

    /// Sleeps until `deadline`, or until a signal: then returns it.
    pub async fn sleep_until(&self, deadline: tokio::time::Instant) -> Option<Signal> {
        if let Some(signal) = self.signal() {
            return Some(signal);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => None,
            _ = self.inner.stopped.notified() => self.signal(),
        }
    }
}

/// What the first signal does to a run of the main job.
pub const DRAIN_NOTICE: &str = "no new file is taken, those in flight are finished (again to quit now)";
/// What a run of the main job that a signal cut short leaves.
pub const DRAIN_AFTERMATH: &str = "the run did not finish; what it had not committed is left for the next run";

/// Runs a command that tends the lake or the store until it ends or a signal comes. On a signal it stops at its next
/// step, within [`STOP_GRACE`]: a wait for Redis ends at once, and what it had not committed is left as a kill would
/// leave it (an intent the next run finishes, a file the next orphan sweep removes). Without this, a signal killed the process with
/// nothing said, not even to a `--json` reader. A command that ends despite the signal reports as usual.
pub async fn until_signal(
    command: impl std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
    aftermath: &'static str,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let stopper = Stopper::install("the command stops at its next step (again to quit now)", aftermath, json)
        .map_err(|e| anyhow::anyhow!("listening for SIGINT and SIGTERM: {e}"))?;
    let mut command = std::pin::pin!(command);
    tokio::select! {
        // The command first: a wait the signal ended says what it was waiting for.
        biased;
        result = &mut command => result.or_else(|error| stopper.failed_run(error, false, json)),
        signal = stopper.signalled() => {
            // A step that watches the drain ends on its own (the bench deletes what it wrote): a moment for that.
            match tokio::time::timeout(STOP_GRACE, &mut command).await {
                Ok(result) => result.or_else(|error| stopper.failed_run(error, false, json)),
                Err(_) => {
                    stopper.failed_run(anyhow::anyhow!("stopped by {} before it finished", signal.name()), false, json)
                }
            }
        }
    }
}

/// How long a command that tends the lake or the store has, after a signal, to end on its own.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What a stopped `maintain`, `reconcile` or `dedup rebuild` leaves.
pub const UNFINISHED: &str = "the command did not finish; what it committed stays, and running it again does the rest";
/// What a stopped command that only reads leaves.
pub const NOTHING_CHANGED: &str = "the command did not finish, and changed nothing";
