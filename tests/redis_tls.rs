//! `rediss://` with AUTH against a real redis-server serving TLS only, with a certificate from a CA the test makes
//! (openssl) and poslake trusts through `SSL_CERT_FILE`; a wrong password is a clear error, not a retry loop.
#![cfg(feature = "lake")]

mod common;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::header_keys;
use common::tls::certificates;
use poslake::generate::{FileKind, GenerateArgs, generate, read_manifest};
use poslake::lake::Warehouse;

struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &Path, password: &str) -> TlsRedis {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--tls-auth-clients", "no", "--requirepass", password, "--daemonize", "no"])
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server with TLS (Debian's build has it)");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "redis-server (TLS) did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsRedis { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_password_ingests_and_a_wrong_password_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    certificates(d);
    let redis = start_tls_redis(d, "s3cret-pass");
    let staging = d.join("staging");
    let report = generate(&GenerateArgs {
        out: staging.clone(),
        seed: 23,
        sites: 3,
        days: 1,
        files_per_day: 3,
        min_transactions: 10,
        max_transactions: 20,
        ..GenerateArgs::default()
    })
    .expect("generate");
    let manifest = read_manifest(&staging).expect("manifest");
    let lake = d.join("lake");
    let ingest = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_poslake"))
            .args(["ingest", "--json", "--dedup", "redis-bitmap", "--redis-url", &url, "--staging"])
            .arg(&staging)
            .arg("--lake")
            .arg(&lake)
            .env("SSL_CERT_FILE", d.join("ca.pem"))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run poslake")
    };

    let wrong = ingest(format!("rediss://default:nope@localhost:{}", redis.port));
    assert!(!wrong.status.success(), "a wrong password fails the run");
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(message.contains("localhost") && !message.contains("nope"), "clear, and no password shown: {message}");
    assert!(!message.contains("unreachable"), "an auth failure is not retried as an outage: {message}");

    // No password at all: the server's "Authentication required", with what to do, and no retries.
    let none = ingest(format!("rediss://localhost:{}/0", redis.port));
    assert!(!none.status.success(), "no password fails the run");
    let message = String::from_utf8_lossy(&none.stderr);
    assert!(message.contains("the server needs a password: give it in the URL"), "{message}");
    assert!(!message.contains("unreachable"), "not retried as an outage: {message}");

    let ok = ingest(format!("rediss://default:s3cret-pass@localhost:{}", redis.port));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json summary");
    assert!(summary["dedup"].as_str().is_some_and(|s| s.starts_with("redis-bitmap at rediss://default:***@")));
    assert_eq!(summary["new_transactions"].as_u64(), Some(report.unique_keys));
    let wh = Warehouse::open(&lake).await.expect("open");
    let want: BTreeSet<String> =
        manifest.iter().filter(|m| m.kind != FileKind::Malformed).flat_map(|m| m.keys.iter().cloned()).collect();
    assert_eq!(header_keys(&wh).await.into_iter().collect::<BTreeSet<_>>(), want);
}
