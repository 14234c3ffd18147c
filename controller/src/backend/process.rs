//! The process backend: wake runs the service's command, park stops it, and the service
//! is ready when its upstream port accepts a TCP connection and then its `ready` check
//! passes (an HTTP GET, a command such as `pg_isready` exiting 0, Postgres' answer or its
//! `postmaster.pid`): many servers accept before they can answer (Postgres says "the
//! database system is starting up", Redis "LOADING"), and a client relayed to them then
//! would be refused.
//!
//! Each command runs in its own process group so that park stops the whole tree
//! (`sh -c` wrappers included): the service's stop signal (SIGTERM unless it says
//! otherwise), then SIGKILL after its grace period. Its stdout and stderr are appended
//! to its log file. A wake and a park of the same service serialize on one lock, so a
//! new process never races the old one for the port.
//!
//! What runs is written to a state file (service, pid, the process's start time). A
//! controller that dies without stopping its services (SIGKILL, a crash) leaves them
//! serving, as a Kubernetes controller leaves its workloads; the next one reads the file
//! and adopts each process still alive (same pid and start time: not a recycled pid),
//! so it neither starts a second instance nor mistakes a stranger for its own, and parks
//! it like any other. Processes of services no longer configured are stopped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use zenvoy_core::config::{ProcessOptions, ReadyCheck, ServiceConfig};

use super::{Backend, BackendError, BoxFuture};

/// How often a waking service's port is tried. A connect to a closed loopback port fails
/// at once and costs microseconds, so a short interval is cheap and keeps the wake fast.
/// The probe runs on a blocking thread: tokio's timers have 1 ms granularity, which alone
/// would add up to 2 ms to every wake.
const PROBE_INTERVAL: Duration = Duration::from_micros(100);
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the probe looks at whether the process has exited.
const EXIT_CHECK_EVERY: u32 = 100;
/// How long an adopted process (not our child: no exit status to wait for) is watched
/// after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// The longest one `http` or `command` check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A wake's checks end this much before its timeout (see `wake`).
const DEADLINE_MARGIN: Duration = Duration::from_millis(300);

#[derive(Debug)]
struct Slot {
    upstream: SocketAddr,
    command: Vec<String>,
    options: ProcessOptions,
    child: Mutex<Option<Running>>,
}

/// A service's process: started by this controller, or adopted from the one before.
#[derive(Debug)]
enum Running {
    Child(Child),
    /// Not our child (its parent died): no wait(2); its liveness is read from /proc.
    Adopted(Identity),
}

/// A process as the state file names it: its pid and its start time (clock ticks since
/// boot, `/proc/<pid>/stat` field 22), which a recycled pid does not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub pid: i32,
    pub start: u64,
}

impl Identity {
    /// The identity of a live process, None when it is gone (or a zombie).
    pub fn of(pid: i32) -> Option<Identity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        // Field 22 of the whole line is the 20th after the comm.
        let start = fields.get(19)?.parse().ok()?;
        Some(Identity { pid, start })
    }

    fn alive(&self) -> bool {
        Identity::of(self.pid) == Some(*self)
    }
}

impl Running {
    fn alive(&mut self) -> bool {
        match self {
            Running::Child(c) => c.try_wait().ok().flatten().is_none(),
            Running::Adopted(id) => id.alive(),
        }
    }

    fn identity(&self) -> Option<Identity> {
        match self {
            Running::Child(c) => Identity::of(i32::try_from(c.id()?).ok()?),
            Running::Adopted(id) => Some(*id),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ProcessBackend {
    services: Arc<HashMap<String, Arc<Slot>>>,
    /// For `http` ready checks: no proxy (the upstream is local), bounded.
    http: reqwest::Client,
    state: Option<Arc<StateFile>>,
    /// Services whose process was adopted at start (see [`Backend::running_at_start`]).
    adopted: Arc<Vec<String>>,
}

impl ProcessBackend {
    /// The services of a process-mode config.
    pub fn new<'a>(services: impl IntoIterator<Item = &'a ServiceConfig>) -> Self {
        let services = services
            .into_iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Arc::new(Slot {
                        upstream: s.upstream,
                        command: s.command.clone(),
                        options: s.process.clone(),
                        child: Mutex::new(None),
                    }),
                )
            })
            .collect();
        // A redirect is an answer, not readiness: it counts as the status it is.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CHECK_TIMEOUT)
            .build()
            .unwrap_or_default();
        ProcessBackend {
            services: Arc::new(services),
            http,
            state: None,
            adopted: Arc::default(),
        }
    }

    /// Keep what runs in `path`, and adopt the processes a previous controller left
    /// running (see the module's doc). Processes it names for services that are no
    /// longer configured are stopped. An unreadable file is logged and starts empty.
    pub fn with_state_file(mut self, path: PathBuf) -> Self {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                warn!(dir = %dir.display(), error = %e, "cannot make the state file's directory");
            }
        }
        let state = StateFile { path };
        let mut adopted = Vec::new();
        for (service, id) in state.load() {
            if !id.alive() {
                continue;
            }
            match self.services.get(&service) {
                Some(slot) => match slot.child.try_lock() {
                    Ok(mut child) => {
                        info!(%service, pid = id.pid, "adopted the process a previous controller left running");
                        *child = Some(Running::Adopted(id));
                        adopted.push(service);
                    }
                    Err(_) => warn!(%service, "cannot adopt: slot busy"),
                },
                None => {
                    warn!(%service, pid = id.pid, "stopping a process of a service no longer configured");
                    let _ = killpg(Pid::from_raw(id.pid), Signal::SIGTERM);
                }
            }
        }
        self.state = Some(Arc::new(state));
        self.adopted = Arc::new(adopted);
        self.save_blocking();
        self
    }

    /// Write what runs now (never awaits: at start, before any task runs).
    fn save_blocking(&self) {
        let Some(state) = &self.state else { return };
        let mut running = HashMap::new();
        for (name, slot) in self.services.iter() {
            if let Ok(child) = slot.child.try_lock() {
                if let Some(id) = child.as_ref().and_then(Running::identity) {
                    running.insert(name.clone(), id);
                }
            }
        }
        state.save(&running);
    }

    /// Write what runs now.
    async fn save(&self) {
        let Some(state) = &self.state else { return };
        let mut running = HashMap::new();
        for (name, slot) in self.services.iter() {
            if let Some(id) = slot.child.lock().await.as_ref().and_then(Running::identity) {
                running.insert(name.clone(), id);
            }
        }
        state.save(&running);
    }

    fn slot(&self, service: &str) -> Result<Arc<Slot>, BackendError> {
        self.services
            .get(service)
            .cloned()
            .ok_or_else(|| BackendError::UnknownService(service.to_string()))
    }
}

/// The state file: service -> process identity, as JSON, replaced whole on each change.
#[derive(Debug)]
struct StateFile {
    path: PathBuf,
}

impl StateFile {
    fn load(&self) -> HashMap<String, Identity> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                warn!(path = %self.path.display(), error = %e, "state file unreadable; adopting nothing");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the state file; adopting nothing");
                HashMap::new()
            }
        }
    }

    /// Write atomically (a temporary file renamed over it): a crash mid-write leaves
    /// the previous state, never half a file.
    fn save(&self, running: &HashMap<String, Identity>) {
        let tmp = self.path.with_extension("tmp");
        let written = serde_json::to_vec(running)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "cannot write the state file: a controller restarted after a crash would not adopt these processes");
        }
    }
}

fn spawn(service: &str, command: &[String], o: &ProcessOptions) -> Result<Child, BackendError> {
    let err = |source| BackendError::Spawn {
        service: service.to_string(),
        command: command.join(" "),
        source,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| err(std::io::Error::other("empty command")))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&o.env)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    // A log that cannot be written (a read-only directory, a full disk) must not cost
    // the wake: the output then goes where the controller's own goes.
    match open_log(&o.log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, errs)) => {
            cmd.stdout(out).stderr(errs);
        }
        Err(e) => {
            warn!(service, log = %o.log.display(), error = %e, "cannot open the service's log; its output goes to the controller's");
        }
    }
    if let Some(cwd) = &o.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd.spawn().map_err(|e| match &o.cwd {
        // The OS says ENOENT for a missing cwd as for a missing program: say which.
        Some(cwd) if !cwd.is_dir() => err(std::io::Error::new(
            e.kind(),
            format!("cwd {} is not a directory", cwd.display()),
        )),
        _ => err(e),
    })?;
    info!(service, pid = child.id(), command = %command.join(" "), log = %o.log.display(), "started");
    Ok(child)
}

/// The service's log, appended to (its directory made if missing), with a line saying
/// that a wake starts here.
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "--- zenvoy: starting (unix time {}) ---", unix_seconds())?;
    Ok(f)
}

/// The wall clock in whole seconds since the epoch (0 for a clock set before it).
fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Try to connect to `upstream` every `PROBE_INTERVAL` until it accepts (true) or
/// `until` passes (false). Blocking: run it on a blocking thread.
fn probe_until(upstream: SocketAddr, until: std::time::Instant) -> bool {
    loop {
        if std::net::TcpStream::connect_timeout(&upstream, PROBE_CONNECT_TIMEOUT).is_ok() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// One try of a service's `ready` check once its port accepts: Ok when it passes, else
/// what it saw (for the wake's error when time runs out).
async fn check_ready(
    check: &ReadyCheck,
    try_: Try,
    http: &reqwest::Client,
    o: &ProcessOptions,
    left: Duration,
) -> Result<(), Failed> {
    let bound = CHECK_TIMEOUT.min(left);
    match tokio::time::timeout(bound, check_once(check, try_, http, o)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(CheckError { said, fatal })) => Err(Failed {
            said,
            cut_short: false,
            fatal,
        }),
        Err(_) => Err(Failed {
            said: format!("the check did not finish within {bound:?}"),
            cut_short: bound < CHECK_TIMEOUT,
            fatal: false,
        }),
    }
}

/// What one try of a check is about: the upstream, and when this wake started the
/// process (seconds since the epoch; None when it was already running).
#[derive(Debug, Clone, Copy)]
struct Try {
    upstream: SocketAddr,
    spawned: Option<i64>,
}

/// What a failed try saw. `fatal`: no later try can pass (the wake ends at once).
#[derive(Debug)]
struct CheckError {
    said: String,
    fatal: bool,
}

impl From<String> for CheckError {
    fn from(said: String) -> Self {
        CheckError { said, fatal: false }
    }
}

/// A failed check: what it saw, whether the wake's deadline cut it short, and whether
/// no later try can pass.
#[derive(Debug)]
struct Failed {
    said: String,
    cut_short: bool,
    fatal: bool,
}

/// What a wake's failing checks said, for its error: a check cut short by the wake's
/// deadline says less than the answer before it, so it does not replace one.
#[derive(Debug, Default)]
struct Seen(Option<String>);

impl Seen {
    fn note(&mut self, failed: Failed) {
        if !(failed.cut_short && self.0.is_some()) {
            self.0 = Some(failed.said);
        }
    }

    fn said(self) -> String {
        self.0.unwrap_or_else(|| "no check finished".to_string())
    }
}

/// One `postgres` check: a StartupMessage, and the server's first answer read as
/// `PQping` reads it ([`pgwire::answer`]). The connection is dropped before any session.
/// Public for the wake benchmark, whose in-process Postgres client asks the same.
pub async fn postgres_ready(
    upstream: SocketAddr,
    user: &str,
    database: &str,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zenvoy_core::pgwire::{self, Answer};
    let mut s = tokio::net::TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to {upstream}: {e}"))?;
    s.write_all(&pgwire::startup_message(user, database))
        .await
        .map_err(|e| format!("writing to {upstream}: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    loop {
        match pgwire::answer(&buf) {
            Answer::Ready => return Ok(()),
            Answer::NotReady(said) => return Err(format!("Postgres at {upstream}: {said}")),
            Answer::Garbage(what) => return Err(format!("{upstream} answered {what}")),
            Answer::Incomplete if buf.len() >= pgwire::MAX_ANSWER => {
                return Err(format!("{upstream} sent no whole answer"));
            }
            Answer::Incomplete => {}
        }
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading from {upstream}: {e}"))?;
        if n == 0 {
            return Err(format!("{upstream} closed the connection before answering"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn check_once(
    check: &ReadyCheck,
    try_: Try,
    http: &reqwest::Client,
    o: &ProcessOptions,
) -> Result<(), CheckError> {
    let upstream = try_.upstream;
    match check {
        ReadyCheck::Tcp => Ok(()),
        ReadyCheck::Http { path, status } => {
            let url = format!("http://{upstream}{path}");
            let got = http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?
                .status()
                .as_u16();
            let ok = match status {
                Some(want) => got == *want,
                None => (200..300).contains(&got),
            };
            if ok {
                Ok(())
            } else {
                let want = status.map_or("2xx".to_string(), |s| s.to_string());
                Err(format!("GET {url} answered {got}, not {want}").into())
            }
        }
        ReadyCheck::Command(argv) => {
            let shown = argv.join(" ");
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| "empty ready command".to_string())?;
            let mut cmd = Command::new(program);
            cmd.args(args)
                .envs(&o.env)
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if let Some(cwd) = &o.cwd {
                cmd.current_dir(cwd);
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
            // Whatever ends this (its exit, or the caller's timeout dropping it), the
            // check's whole process group goes with it: a shell pipeline leaves nothing.
            let group = child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .map(Pid::from_raw);
            let _reap = KillGroup(group);
            let status = child
                .wait()
                .await
                .map_err(|e| format!("waiting for `{shown}`: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("`{shown}` {status}").into())
            }
        }
        ReadyCheck::Postgres { user, database } => {
            Ok(postgres_ready(upstream, user, database).await?)
        }
        ReadyCheck::PostgresDataDir(dir) => postmaster_ready(dir, try_.spawned).await,
    }
}

/// One `postgres` check with `dataDir`: the status line of its `postmaster.pid`
/// ([`postmaster`]); no connection. Run only once the port accepts, so the file is the
/// running postmaster's, not one a crash left. A file the controller may not read, or a
/// `dataDir` that does not exist, fails the wake at once: no later try would pass.
async fn postmaster_ready(dir: &std::path::Path, spawned: Option<i64>) -> Result<(), CheckError> {
    use std::io::ErrorKind;
    use tokio::io::AsyncReadExt;
    use zenvoy_core::postmaster;
    let path = dir.join("postmaster.pid");
    let shown = path.display();
    let unreadable = |e: std::io::Error| {
        let fatal = e.kind() == ErrorKind::PermissionDenied
            || (e.kind() == ErrorKind::NotFound && !dir.is_dir());
        let hint = match e.kind() {
            ErrorKind::PermissionDenied => {
                ": run the controller as the server's user, or give its group read access \
                 (initdb --allow-group-access), or use the connecting check ({postgres: {user}})"
            }
            ErrorKind::NotFound if fatal => ": dataDir is not a directory",
            _ => "",
        };
        CheckError {
            said: format!("cannot read {shown}: {e}{hint}"),
            fatal,
        }
    };
    let file = tokio::fs::File::open(&path).await.map_err(unreadable)?;
    // Bytes, not a String: its directory lines need not be UTF-8.
    let mut bytes = Vec::new();
    file.take(postmaster::MAX_LEN as u64)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    let pid_file =
        postmaster::parse(&String::from_utf8_lossy(&bytes)).map_err(|e| format!("{shown}: {e}"))?;
    Ok(postmaster::ready(&pid_file, spawned).map_err(|e| format!("{shown}: {e}"))?)
}

/// SIGKILL to a process group when dropped (a ready check's; see `check_once`). Its
/// processes are reaped by tokio (the leader) or by init (the rest).
struct KillGroup(Option<Pid>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

async fn stop(service: &str, running: Running, o: &ProcessOptions) -> Result<(), BackendError> {
    let signal = stop_signal(o);
    match running {
        Running::Child(c) => stop_child(service, c, signal, o.stop_grace).await,
        Running::Adopted(id) => stop_adopted(service, id, signal, o.stop_grace).await,
    }
}

fn stop_signal(o: &ProcessOptions) -> Signal {
    // The config's names are the ones nix knows; SIGTERM if that ever differs.
    o.stop_signal.name().parse().unwrap_or(Signal::SIGTERM)
}

/// Stop a process that is not our child: `signal` to its group, then SIGKILL after the
/// grace period; it is gone when /proc no longer shows it (its new parent reaps it).
async fn stop_adopted(
    service: &str,
    id: Identity,
    signal: Signal,
    grace: Duration,
) -> Result<(), BackendError> {
    let pgid = Pid::from_raw(id.pid);
    for (signal, wait) in [(signal, grace), (Signal::SIGKILL, KILL_WAIT)] {
        match killpg(pgid, signal) {
            Ok(()) => {}
            Err(nix::Error::ESRCH) => return Ok(()),
            Err(e) => {
                return Err(BackendError::Stop {
                    service: service.to_string(),
                    source: std::io::Error::from(e),
                })
            }
        }
        let until = tokio::time::Instant::now() + wait;
        while id.alive() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !id.alive() {
            info!(service, pid = id.pid, "stopped (adopted)");
            return Ok(());
        }
    }
    Err(BackendError::Stop {
        service: service.to_string(),
        source: std::io::Error::other(format!("pid {} still alive after SIGKILL", id.pid)),
    })
}

async fn stop_child(
    service: &str,
    mut child: Child,
    signal: Signal,
    grace: Duration,
) -> Result<(), BackendError> {
    let Some(pid) = child.id() else {
        return Ok(()); // already reaped
    };
    let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let err = |e: nix::Error| BackendError::Stop {
        service: service.to_string(),
        source: std::io::Error::from(e),
    };
    match killpg(pgid, signal) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => return Err(err(e)),
    }
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(
                service,
                pid,
                ?grace,
                "did not stop within its stopGrace; killing"
            );
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(err(e)),
            }
            child.wait().await
        }
    };
    info!(service, pid, %signal, status = ?status.ok(), "stopped");
    Ok(())
}

/// An error if the service's process has exited (it will not become ready).
async fn exited(service: &str, slot: &Slot) -> Result<(), BackendError> {
    match slot.child.lock().await.as_mut() {
        Some(Running::Child(c)) => match c.try_wait() {
            Ok(Some(status)) => Err(BackendError::Exited {
                service: service.to_string(),
                status: status.to_string(),
            }),
            _ => Ok(()),
        },
        Some(Running::Adopted(id)) if !id.alive() => Err(BackendError::Exited {
            service: service.to_string(),
            status: format!("adopted pid {} is gone", id.pid),
        }),
        _ => Ok(()),
    }
}

impl Backend for ProcessBackend {
    /// Always scales: the process backend runs in one controller, which always leads.
    fn wake(
        &self,
        service: &str,
        timeout: Duration,
        _scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let slot = self.slot(service);
        let service = service.to_string();
        let backend = self.clone();
        Box::pin(async move {
            let slot = slot?;
            // When this wake started the process (seconds since the epoch), for checks
            // that tell its files from an earlier one's.
            let spawned = {
                let mut child = slot.child.lock().await;
                let running = child.as_mut().is_some_and(Running::alive);
                if running {
                    None
                } else {
                    let at = unix_seconds();
                    *child = Some(Running::Child(spawn(
                        &service,
                        &slot.command,
                        &slot.options,
                    )?));
                    Some(at)
                }
            };
            if spawned.is_some() {
                backend.save().await;
            }
            // The planner gives up on the wake after the same timeout, on its next tick:
            // ending a little earlier makes this error, which says what the check saw,
            // the one that is recorded.
            let deadline = std::time::Instant::now()
                + timeout.saturating_sub(DEADLINE_MARGIN).max(timeout / 2);
            loop {
                let upstream = slot.upstream;
                let probe = tokio::task::spawn_blocking(move || {
                    probe_until(
                        upstream,
                        deadline.min(std::time::Instant::now() + PROBE_INTERVAL * EXIT_CHECK_EVERY),
                    )
                });
                if let Ok(true) = probe.await {
                    debug!(service, upstream = %slot.upstream, "port accepts");
                    break;
                }
                exited(&service, &slot).await?;
                if std::time::Instant::now() >= deadline {
                    return Err(BackendError::NotReady {
                        service,
                        upstream: slot.upstream,
                        waited: timeout,
                    });
                }
            }
            let ready = &slot.options.ready;
            let mut seen = Seen::default();
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let try_ = Try {
                    upstream: slot.upstream,
                    spawned,
                };
                match check_ready(&ready.check, try_, &backend.http, &slot.options, left).await {
                    Ok(()) => {
                        debug!(service, upstream = %slot.upstream, "ready");
                        return Ok(vec![slot.upstream]);
                    }
                    Err(failed) if failed.fatal => {
                        return Err(BackendError::CannotBeReady {
                            service,
                            detail: failed.said,
                        });
                    }
                    Err(failed) => {
                        debug!(service, said = %failed.said, "not ready yet");
                        seen.note(failed);
                        exited(&service, &slot).await?;
                        let now = std::time::Instant::now();
                        if now >= deadline {
                            return Err(BackendError::NotReadyInTime {
                                service,
                                waited: timeout,
                                detail: format!(
                                    "its port accepts but its ready check fails: {}",
                                    seen.said()
                                ),
                            });
                        }
                        tokio::time::sleep(ready.interval.min(deadline - now)).await;
                    }
                }
            }
        })
    }

    fn park(&self, service: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let slot = self.slot(service);
        let service = service.to_string();
        let backend = self.clone();
        Box::pin(async move {
            let slot = slot?;
            let stopped = {
                // Holding the lock while stopping makes a racing wake wait for the port.
                let mut child = slot.child.lock().await;
                match child.take() {
                    Some(c) => stop(&service, c, &slot.options).await,
                    None => return Ok(()),
                }
            };
            backend.save().await;
            stopped
        })
    }

    /// Whether the service's process (started or adopted by this controller) is alive.
    fn running(&self, service: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let slot = self.slot(service);
        Box::pin(async move {
            let slot = slot?;
            let mut child = slot.child.lock().await;
            Ok(child.as_mut().is_some_and(Running::alive))
        })
    }

    fn running_at_start(&self) -> Vec<String> {
        self.adopted.to_vec()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let backend = self.clone();
        Box::pin(async move {
            for (name, slot) in backend.services.iter() {
                if let Some(c) = slot.child.lock().await.take() {
                    if let Err(e) = stop(name, c, &slot.options).await {
                        warn!(error = %e, "stopping at shutdown");
                    }
                }
            }
            backend.save().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tells_a_live_process_from_a_recycled_pid() {
        let me = Identity::of(i32::try_from(std::process::id()).expect("pid")).expect("alive");
        assert!(me.alive());
        let recycled = Identity {
            start: me.start + 1,
            ..me
        };
        assert!(!recycled.alive(), "same pid, another start time");
        assert_eq!(Identity::of(i32::MAX), None);
    }

    #[test]
    fn the_state_file_round_trips_and_a_broken_one_adopts_nothing() {
        let dir = std::env::temp_dir().join(format!("zenvoy-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let state = StateFile {
            path: dir.join("state.json"),
        };
        assert!(state.load().is_empty(), "no file yet");
        let running = HashMap::from([("pg".to_string(), Identity { pid: 42, start: 7 })]);
        state.save(&running);
        assert_eq!(state.load(), running);
        std::fs::write(&state.path, "{not json").expect("write");
        assert!(state.load().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_check_cut_short_by_the_deadline_keeps_the_answer_before_it() {
        let failed = |said: &str, cut_short| Failed {
            said: said.to_string(),
            cut_short,
            fatal: false,
        };
        let mut seen = Seen::default();
        seen.note(failed("GET / answered 503, not 2xx", false));
        seen.note(failed("the check did not finish within 3ms", true));
        assert_eq!(seen.said(), "GET / answered 503, not 2xx");

        let mut seen = Seen::default();
        seen.note(failed("the check did not finish within 3ms", true));
        assert_eq!(
            seen.said(),
            "the check did not finish within 3ms",
            "all there is"
        );
        let mut seen = Seen::default();
        seen.note(failed("answered 503", false));
        seen.note(failed("answered 500", false));
        assert_eq!(
            seen.said(),
            "answered 500",
            "a newer answer replaces an older one"
        );
        assert_eq!(Seen::default().said(), "no check finished");
    }
}
