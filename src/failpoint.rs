//! Kill points: named places in the ingest where a test can have the process SIGKILL itself, to prove that a
//! crash at exactly that moment loses and duplicates nothing. `POSLAKE_KILL_AT=name` kills at the first time
//! `name` is reached, `name:n` at the n-th; `POSLAKE_STOP_AT` stops the process there instead (SIGSTOP), alive
//! until it is sent SIGCONT. Unset (always, outside tests), a kill point costs one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Every kill point, in pipeline order (the tests iterate over these).
pub const POINTS: &[&str] = &[
    "download",
    "archive",
    "parse",
    "dedup-check",
    "write",
    "commit-intent",
    "commit-table",
    "commit-recorded",
    "commit-keys",
    "commit-applied",
    "recover-intent",
    "merge",
    "expire-marker",
    "expire-table",
];

/// Kill points of the commands beside the ingest (`poslake dedup rebuild`), tested on their own.
pub const COMMAND_POINTS: &[&str] = &["rebuild-scan"];

/// What a kill point does when reached.
#[derive(Clone, Copy)]
enum Action {
    /// SIGKILL: the process dies there (`POSLAKE_KILL_AT`).
    Kill,
    /// SIGSTOP: the process stops there, alive, until a SIGCONT (`POSLAKE_STOP_AT`): a frozen container or a
    /// debugger's breakpoint, for the tests of a worker paused mid-run.
    Stop,
}

struct Target {
    name: String,
    nth: u64,
    action: Action,
}

fn targets() -> &'static [Target] {
    static TARGETS: OnceLock<Vec<Target>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        [("POSLAKE_KILL_AT", Action::Kill), ("POSLAKE_STOP_AT", Action::Stop)]
            .into_iter()
            .filter_map(|(var, action)| {
                let spec = std::env::var(var).ok()?;
                let (name, nth) = match spec.split_once(':') {
                    Some((n, k)) => (n.to_owned(), k.parse().ok()?),
                    None => (spec, 1),
                };
                Some(Target { name, nth, action })
            })
            .collect()
    })
}

/// Reaching the kill point `name`: SIGKILLs (or SIGSTOPs) this process if it is a configured one.
pub fn hit(name: &str) {
    let targets = targets();
    if targets.is_empty() || !targets.iter().any(|t| t.name == name) {
        return;
    }
    static HITS: OnceLock<Mutex<HashMap<String, AtomicU64>>> = OnceLock::new();
    let hits = HITS.get_or_init(|| Mutex::new(HashMap::new()));
    let n = match hits.lock() {
        Ok(mut h) => h.entry(name.to_owned()).or_insert_with(|| AtomicU64::new(0)).fetch_add(1, Ordering::SeqCst) + 1,
        Err(_) => return,
    };
    for t in targets.iter().filter(|t| t.name == name && t.nth == n) {
        let (signal, what) = match t.action {
            Action::Kill => (libc::SIGKILL, "SIGKILL"),
            Action::Stop => (libc::SIGSTOP, "SIGSTOP"),
        };
        eprintln!("poslake: kill point {name}:{n} reached, sending {what} to myself");
        // To this thread (raise(3), tgkill), not to the process: a signal sent to the process may be taken by
        // another thread, and this one would go on past the point for a moment (an audit found claims made after a
        // stop at `dedup-check`). SIGKILL and SIGSTOP still act on the whole process, before this call returns.
        // SAFETY: raise(3) with a valid signal number has no memory-safety preconditions.
        unsafe {
            libc::raise(signal);
        }
    }
}
