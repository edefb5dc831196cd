//! A private PostgreSQL cluster for tests that stop and restart the server (the
//! shared `TEST_DATABASE_URL` one must never be restarted under other tests).
//!
//! `initdb` refuses to run as root, so as root every PostgreSQL command runs as the
//! `postgres` user (`runuser`). The binaries are Debian's (`/usr/lib/postgresql/*/bin`),
//! which `./scripts/test` installs when they are missing. The cluster is stopped
//! (immediately) and its directory removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A running private PostgreSQL on a free loopback port, trust authentication.
pub struct PrivatePostgres {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Creates a cluster with `fsync=off` (tests only) and starts it.
    pub fn start() -> PrivatePostgres {
        let bindir = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's PostgreSQL in /usr/lib/postgresql (./scripts/test installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new()
            .prefix("wabridge-it-pg-")
            .tempdir()
            .expect("a temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown of the cluster directory failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { bindir, dir, port };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_server();
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server the way a crash does (`-m immediate`: no checkpoint, every
    /// connection cut), leaving the data directory for [`Self::start_server`].
    pub fn crash(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server on its port (crash recovery runs first after a
    /// [`Self::crash`]) and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL tool, run as the `postgres` user when this process is root.
    fn command(&self, tool: &str) -> Command {
        let bin = self.bindir.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let bin = self.bindir.join(tool);
        let out = self
            .command(tool)
            .args(args)
            .current_dir(Path::new("/"))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}
