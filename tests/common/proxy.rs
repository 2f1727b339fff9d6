//! A TCP proxy that cuts the network once: after `cut_after` bytes have come back from the server it resets every
//! open connection and refuses new ones for `cut_for`, then forwards again. A network blip between poslake and a
//! storage service, at a point set by progress rather than by the clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
pub struct ProxyStats {
    down: AtomicBool,
    cut_done: AtomicBool,
    /// Bytes from the server to clients, in all.
    pub bytes: AtomicU64,
    /// Bytes from the server after the cut ended.
    pub bytes_after_cut: AtomicU64,
    /// Connections reset by the cut, and refused while it lasted.
    pub reset: AtomicU64,
    pub refused: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    pub stats: Arc<ProxyStats>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(upstream: u16, cut_after: u64, cut_for: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stats = Arc::new(ProxyStats::default());
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let s = stats.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    s.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let task = tokio::spawn(forward(client, server, s.clone(), conns.clone(), cut_after, cut_for));
                if let Ok(mut c) = conns.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        Proxy { port, stats, accept }
    }

    pub fn cut_happened(&self) -> bool {
        self.stats.cut_done.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    stats: Arc<ProxyStats>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    cut_after: u64,
    cut_for: Duration,
) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let upstream = tokio::io::copy(&mut cr, &mut sw);
    let downstream = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let total = stats.bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if stats.cut_done.load(Ordering::SeqCst) && !stats.down.load(Ordering::SeqCst) {
                stats.bytes_after_cut.fetch_add(n as u64, Ordering::SeqCst);
            }
            if total >= cut_after && !stats.cut_done.swap(true, Ordering::SeqCst) {
                stats.down.store(true, Ordering::SeqCst);
                let open: Vec<AbortHandle> = conns.lock().map(|c| c.clone()).unwrap_or_default();
                stats.reset.fetch_add(open.len() as u64, Ordering::SeqCst);
                let s = stats.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(cut_for).await;
                    s.down.store(false, Ordering::SeqCst);
                });
                // This connection too: aborting its own task ends it at the next await.
                for h in open {
                    h.abort();
                }
                return;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
