//! A real PostgreSQL server for a test (Debian's `postgresql` package): its own port and data folder, trust
//! authentication on loopback (or TLS only, with a certificate the test makes), stopped when dropped. As root it
//! runs as the `postgres` user, since PostgreSQL refuses to run as root.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
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
        Self::launch(false)
    }

    /// A server that accepts TLS connections only, with a certificate for localhost from a CA at [`Postgres::ca`].
    pub fn start_tls() -> Self {
        Self::launch(true)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    fn launch(tls: bool) -> Self {
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
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            "fsync=off".to_owned(),
            "max_connections=200".to_owned(),
            format!("unix_socket_directories={}", dir.path().display()),
        ];
        if tls {
            let certs = dir.path().join("tls");
            std::fs::create_dir(&certs).expect("mkdir");
            super::tls::certificates(&certs);
            for f in ["server.key", "server.pem", "ca.pem"] {
                chown(&certs.join(f), user);
            }
            std::fs::set_permissions(certs.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            settings.push("ssl=on".into());
            settings.push(format!("ssl_cert_file={}", certs.join("server.pem").display()));
            settings.push(format!("ssl_key_file={}", certs.join("server.key").display()));
            // TCP connections only over TLS (the local socket stays for pg_isready).
            std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
                .expect("pg_hba.conf");
        }
        let mut cmd = command(bin.join("postgres"), user);
        cmd.arg("-D").arg(&data).args(["-p", &port.to_string()]);
        for setting in &settings {
            cmd.args(["-c", setting]);
        }
        let child = cmd.spawn().expect("start postgres");
        let server = Postgres { port, dir, child };
        // Listening is not enough: connections are refused while the server starts up.
        let started = Instant::now();
        let ready = || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && command(bin.join("pg_isready"), None)
                    .args(["-q", "-h", &server.dir.path().display().to_string(), "-p", &port.to_string()])
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

    /// Creates an empty database `name` and returns its URL.
    #[allow(dead_code)]
    pub fn database(&self, name: &str) -> String {
        let status = command(bin_dir().join("createdb"), None)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .status()
            .expect("run createdb");
        assert!(status.success(), "createdb {name} failed");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
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
