//! The process's drain request. A signal (SIGINT, SIGTERM) is addressed to the whole process, so the request is too:
//! the binary sets it on the first signal, and every wait that may last long (the Redis pool's retries while the
//! server is unreachable) ends at once when it is set, instead of waiting out its limit. What the waiting caller
//! held is not committed; the next run takes it again.

use std::sync::OnceLock;

use tokio::sync::watch;

/// A drain request that any number of waits may watch.
struct Drain(watch::Sender<bool>);

impl Drain {
    fn new() -> Self {
        Drain(watch::channel(false).0)
    }

    fn request(&self) {
        self.0.send_replace(true);
    }

    fn requested(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender outlives every wait, so the channel never closes; were it closed, the wait would just end.
        let _ = rx.wait_for(|asked| *asked).await;
    }
}

fn process() -> &'static Drain {
    static PROCESS: OnceLock<Drain> = OnceLock::new();
    PROCESS.get_or_init(Drain::new)
}

/// Asks every long wait of this process to end.
pub fn request() {
    process().request();
}

/// Whether a drain was asked for.
pub fn requested() -> bool {
    process().requested()
}

/// Returns once a drain is asked for (at once if it was already).
pub async fn wait() {
    process().wait().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_request_ends_waits_already_running_and_later_ones() {
        let drain = Arc::new(super::Drain::new());
        assert!(!drain.requested());
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a wait ended before any request");
        drain.request();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("joined");
        assert!(drain.requested());
        tokio::time::timeout(Duration::from_secs(5), drain.wait()).await.expect("at once");
    }
}
