//! A real `redis-server` for a test: its own port and data folder, append-only file fsynced on every write (the
//! configuration poslake documents for an exact shared filter), stopped, killed and restarted at will.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Arguments beyond the defaults (`--cluster-enabled yes`, …).
    extra: Vec<String>,
}

fn binary() -> PathBuf {
    super::find_program("redis-server", "POSLAKE_REDIS_SERVER", "apt-get install redis-server")
}

/// A free port on loopback. A cluster node also listens on its port + 10,000 (the cluster bus), so its port must be
/// at most 55,535 with that one free too; the kernel hands out ports up to 60,999.
fn free_port(cluster: bool) -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        if !cluster || (port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
    panic!("no free port for a cluster node and its bus");
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with `extra` arguments too.
    pub fn start_with(extra: &[&str]) -> Self {
        let cluster = extra.contains(&"--cluster-enabled");
        let port = free_port(cluster);
        let extra = extra.iter().map(|a| (*a).to_owned()).collect();
        let mut server = RedisServer { port, dir: tempfile::tempdir().expect("tempdir"), child: None, extra };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A `redis-bitmap` store on this server, sized small for tests.
    pub fn bitmap(&self) -> poslake::config::DedupConfig {
        poslake::config::DedupConfig {
            backend: poslake::config::DedupBackend::RedisBitmap,
            redis_url: self.url(),
            expected_keys_per_period: 200_000,
            max_shard_mib: 1,
            timeout_ms: 1000,
            ..poslake::config::DedupConfig::default()
        }
    }

    fn launch(&mut self) {
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while !self.ping() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not answer on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Stops the server cleanly (SIGTERM: it flushes its append-only file) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child we spawned; no memory is involved.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Kills the server and deletes its data: a Redis that comes back empty.
    pub fn kill_and_wipe(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for entry in std::fs::read_dir(self.dir.path()).expect("read dir").flatten() {
            if entry.file_name() != "redis.log" {
                let p = entry.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }

    /// A copy of the server's data folder as it is now (its append-only files), to come back to later.
    pub fn copy_data(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_tree(self.dir.path(), copy.path());
        copy
    }

    /// Kills the server and puts back the data of `copy` ([`Self::copy_data`]): a Redis that comes back without
    /// the writes it took since, as one whose append-only file lost its last second, or a replica that took over
    /// before it received them.
    pub fn kill_and_restore(&mut self, copy: &std::path::Path) {
        self.kill_and_wipe();
        copy_tree(copy, self.dir.path());
    }

    /// Starts it again on the same port and data folder.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Runs one command with the redis-cli wire protocol and returns the raw reply text.
    pub fn command(&self, args: &[&str]) -> String {
        Client { port: self.port }.command(args)
    }

    /// Runs one command whose reply is an integer (`DBSIZE`, `SCARD`, `CLUSTER KEYSLOT`).
    pub fn integer(&self, args: &[&str]) -> u64 {
        let answer = self.command(args);
        answer.trim().strip_prefix(':').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{args:?}: {answer}"))
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (path, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_name() == "redis.log" {
            continue;
        }
        if path.is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// Commands to a server by its port, from any thread.
pub struct Client {
    pub port: u16,
}

impl Client {
    /// Runs one command with the redis-cli wire protocol and returns the raw reply text.
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).expect("send");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf).expect("reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `primaries` cluster nodes that split the hash slots evenly, each with `replicas` replicas, and waits until
/// the cluster is up and every replica has synced.
pub fn cluster(primaries: usize, replicas: usize) -> Vec<RedisServer> {
    let cluster = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"];
    let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas)).map(|_| RedisServer::start_with(&cluster)).collect();
    let id = |n: &RedisServer| n.command(&["CLUSTER", "MYID"]).lines().nth(1).expect("id").to_owned();
    for (i, node) in nodes.iter().take(primaries).enumerate() {
        let (from, to) = (16_384 * i / primaries, 16_384 * (i + 1) / primaries - 1);
        let added = node.command(&["CLUSTER", "ADDSLOTSRANGE", &from.to_string(), &to.to_string()]);
        assert!(added.starts_with("+OK"), "{added}");
    }
    for node in &nodes[1..] {
        assert!(nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()]).starts_with("+OK"));
    }
    let started = std::time::Instant::now();
    let known = |n: &RedisServer| n.command(&["CLUSTER", "NODES"]).lines().filter(|l| l.contains(':')).count();
    while nodes.iter().any(|n| known(n) < nodes.len()) {
        assert!(started.elapsed() < Duration::from_secs(30), "the nodes never met");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, replica) in nodes.iter().enumerate().skip(primaries) {
        let primary = id(&nodes[(i - primaries) % primaries]);
        let done = replica.command(&["CLUSTER", "REPLICATE", &primary]);
        assert!(done.starts_with("+OK"), "{done}");
    }
    let up = |n: &RedisServer| {
        n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            && (!n.command(&["ROLE"]).contains("slave")
                || n.command(&["INFO", "replication"]).contains("master_link_status:up"))
    };
    while !nodes.iter().all(up) {
        assert!(started.elapsed() < Duration::from_secs(60), "the cluster never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes
}
