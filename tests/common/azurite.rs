//! A real Azurite (Microsoft's Azure Storage emulator, from npm) for a test: its own port and data folder, its
//! well-known development account, containers made on demand.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Azurite's development account and its published key (the emulator accepts nothing else by default).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

fn binary() -> PathBuf {
    super::find_program("azurite-blob", "POSLAKE_AZURITE_BLOB", "npm install -g azurite@3.35.0")
}

impl Azurite {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(binary())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--location"])
            .arg(dir.path())
            .arg("--debug")
            .arg(dir.path().join("debug.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let server = Azurite { port, _dir: dir, child };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "azurite did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The environment that points poslake (object_store) at this emulator.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{}", self.port)),
        ]
    }

    /// Creates a container with the Blob REST API (object_store has no call for it), signed with the account key.
    pub fn create_container(&self, name: &str) {
        let reply = self.send("PUT", &format!("{name}?restype=container"), "\nrestype:container", &[], &[]);
        assert!(reply.starts_with("HTTP/1.1 201"), "create container {name}: {reply}");
    }

    /// Writes a blob under a name as given, byte for byte, which object_store cannot do for names it cannot address
    /// (`a//b.xml`).
    pub fn put_blob_named(&self, container: &str, name: &str, bytes: &[u8]) {
        let reply = self.send("PUT", &format!("{container}/{name}"), "", &[("x-ms-blob-type", "BlockBlob")], bytes);
        assert!(reply.starts_with("HTTP/1.1 201"), "put {name}: {reply}");
    }

    /// One Blob REST request, signed with the account key (Shared Key: the verb, eleven standard headers of which
    /// only the length is given, the x-ms headers in order, then the resource; path-style addressing names the
    /// account twice). `resource` is the path below the account, with its query; `query` its canonical form.
    fn send(&self, verb: &str, resource: &str, query: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        let mut ms: Vec<(&str, &str)> = headers.to_vec();
        ms.extend([("x-ms-date", date.as_str()), ("x-ms-version", version)]);
        ms.sort();
        let length = if body.is_empty() { String::new() } else { body.len().to_string() };
        let path = resource.split('?').next().unwrap_or(resource);
        let canonical: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let to_sign = format!("{verb}\n\n\n{length}\n\n\n\n\n\n\n\n\n{canonical}/{ACCOUNT}/{ACCOUNT}/{path}{query}");
        let key = base64::engine::general_purpose::STANDARD.decode(KEY).expect("key");
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let lines: String = ms.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let head = format!(
            "{verb} /{ACCOUNT}/{resource} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{lines}Authorization: SharedKey \
             {ACCOUNT}:{signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            port = self.port
        );
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        reply
    }

    /// A client for one container, addressed like any Azure account endpoint.
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        poslake::install_tls_provider();
        let store = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(KEY)
            .with_endpoint(format!("http://127.0.0.1:{}/{ACCOUNT}", self.port))
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .expect("azure client");
        Arc::new(store)
    }

    /// Uploads every file under `dir` to `container` under `prefix`, keeping relative paths; returns how many.
    pub async fn upload_dir(&self, dir: &Path, container: &str, prefix: &str) -> usize {
        let store = self.store(container);
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(dir).expect("relative").to_string_lossy().into_owned();
                let bytes = std::fs::read(&p).expect("read");
                // Named as written (`parse`), as other tools upload them: `from` would percent-encode non-ASCII letters.
                let name = StorePath::parse(format!("{prefix}/{rel}")).expect("a valid name");
                store.put(&name, PutPayload::from(bytes)).await.expect("upload");
                n += 1;
            }
        }
        n
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
