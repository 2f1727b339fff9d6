//! Kill points: named places in the ingest where a test can have the process SIGKILL itself, to prove that a
//! crash at exactly that moment loses and duplicates nothing. `POSLAKE_KILL_AT=name` kills at the first time
//! `name` is reached, `name:n` at the n-th. Unset (always, outside tests), a kill point costs one atomic load.

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

struct Target {
    name: String,
    nth: u64,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var("POSLAKE_KILL_AT").ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((n, k)) => (n.to_owned(), k.parse().ok()?),
                None => (spec, 1),
            };
            Some(Target { name, nth })
        })
        .as_ref()
}

/// Reaching the kill point `name`: SIGKILLs this process if it is the configured one.
pub fn hit(name: &str) {
    let Some(t) = target() else { return };
    if t.name != name {
        return;
    }
    static HITS: OnceLock<Mutex<HashMap<String, AtomicU64>>> = OnceLock::new();
    let hits = HITS.get_or_init(|| Mutex::new(HashMap::new()));
    let n = match hits.lock() {
        Ok(mut h) => h.entry(name.to_owned()).or_insert_with(|| AtomicU64::new(0)).fetch_add(1, Ordering::SeqCst) + 1,
        Err(_) => return,
    };
    if n == t.nth {
        eprintln!("poslake: kill point {name}:{n} reached, sending SIGKILL to myself");
        // SAFETY: kill(2) on our own pid with a valid signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
