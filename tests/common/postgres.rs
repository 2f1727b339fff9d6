//! A real PostgreSQL server for a test (Debian's `postgresql` package): its own port and data folder, trust
//! authentication on loopback, stopped when dropped. As root it runs as the `postgres` user, since PostgreSQL
//! refuses to run as root.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

/// The folder of PostgreSQL's programs: `$POSLAKE_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("POSLAKE_PG_BIN") {
        return p.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()));
    found.pop().expect("PostgreSQL not found: install it (apt-get install postgresql) or run scripts/test, which does")
}

/// The user and group ids to run PostgreSQL as: ours, or the `postgres` user's when we are root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions; getpwnam gets a NUL-terminated name and its result is only read here,
    // before any other call could overwrite it.
    unsafe {
        if libc::getuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(!pw.is_null(), "running as root, and there is no postgres user to run PostgreSQL as");
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn command(program: PathBuf, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

fn chown(path: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

impl Postgres {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let user = run_as();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        chown(dir.path(), user);
        chown(&data, user);
        let bin = bin_dir();
        let status = command(bin.join("initdb"), user)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let child = command(bin.join("postgres"), user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200", "-c"])
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .spawn()
            .expect("start postgres");
        let server = Postgres { port, _dir: dir, child };
        // Listening is not enough: connections are refused while the server starts up.
        let started = Instant::now();
        let ready = || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && command(bin.join("pg_isready"), None)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
        };
        while !ready() {
            assert!(started.elapsed() < Duration::from_secs(30), "postgres did not accept connections on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: PostgreSQL's immediate shutdown, which ends its backends too.
        // SAFETY: kill(2) on a child we spawned; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGQUIT);
        }
        let _ = self.child.wait();
    }
}
