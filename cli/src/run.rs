//! `zenvoy run --config FILE`: the whole stack for one config on this host. The
//! controller and the holder run in this process, through their libraries, on one tokio
//! runtime; Envoy runs as a child process with the bootstrap from [`crate::bootstrap`].
//! Every address comes from the config.
//!
//! ```text
//!  zenvoy (this process)                                   Envoy (child, own process group)
//!  +----------------------------------------------+       +------------------------------+
//!  | controller  controller.listen  <--ADS, stats-------- | node zenvoy-envoy            |
//!  |             controller.admin   /metrics /status     | admin envoy.admin            |
//!  | holder      holder.address     <--held connections-- | listeners from the controller|
//!  |             holder.admin       /metrics             |                              |
//!  +----------------------------------------------+       +------------------------------+
//!  <runDir>/logs/zenvoy.log (controller + holder, also on stderr), envoy.log, <service>.log
//! ```
//!
//! Stopping (SIGINT or SIGTERM, at any moment of start-up or after): Envoy first (SIGTERM,
//! SIGKILL after [`ENVOY_STOP_GRACE`], waited for either way), so no client arrives at a
//! holder or service that is going away and the connections Envoy held to the holder
//! close; then the holder and the controller together, and the controller stops every
//! service it started (each with its `stopSignal` and `stopGrace`). Every step of start-up
//! records what it started in one [`Stack`] before it waits for anything, so the stop
//! path always knows everything there is to stop.
//!
//! Local mode is plaintext on this host's loopback: a config with `controller.tls` is
//! refused (run the three binaries yourself for mTLS).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use zenvoy_core::config::Config;
use zenvoy_holder::{Ingress, Limits, Settings, Timeouts};

use crate::{bootstrap, reachable};

/// What `zenvoy run` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// The Envoy binary; found by [`crate::envoy::locate`] when absent.
    pub envoy: Option<PathBuf>,
    /// Instead of the config's `runDir`.
    pub dir: Option<PathBuf>,
}

/// Envoy's node id towards the in-process controller.
pub const ENVOY_NODE_ID: &str = "zenvoy-envoy";
/// The holder's node id towards the in-process controller.
pub const HOLDER_NODE_ID: &str = "zenvoy-holder";
/// In `<runDir>`: the bound addresses, written once Envoy is ready and removed at exit,
/// for `zenvoy status --config` (and scripts) when the config has port 0 somewhere.
pub const ADDRESSES_FILE: &str = "addresses.json";
/// How long Envoy gets to exit after SIGTERM before SIGKILL.
pub const ENVOY_STOP_GRACE: Duration = Duration::from_secs(5);

/// Envoy's stats push interval: activity is seen within this.
const FLUSH: Duration = Duration::from_secs(1);
/// How often the controller reads the config file again (as `zenvoy-controller`'s
/// `--reload-interval` default).
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Envoy is ready once CDS and LDS arrived from the controller: normally well under a
/// second; this bounds a start-up that hangs (a controller Envoy cannot reach).
const ENVOY_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often start-up looks at Envoy's admin file and `/ready`.
const POLL: Duration = Duration::from_millis(50);
/// How often a running stack is looked at for a part that stopped on its own.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// Run the stack for `opts.config` until SIGINT or SIGTERM (Ok) or until a part of it
/// fails (Err, after the rest was stopped).
///
/// # Errors
/// An invalid or unsupported config, an address that cannot be bound, no Envoy, an Envoy
/// that exits or is not ready in time, a controller or holder that fails.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Before anything starts: from here on SIGINT and SIGTERM are requests to stop that
    // every step sees, never the default action (which would leave Envoy and the
    // services running without us).
    let signals = Signals::install().context("installing the SIGINT and SIGTERM handlers")?;
    let shown = opts.config.display().to_string();
    let mut config =
        Config::load(&opts.config).with_context(|| format!("{shown}: invalid configuration"))?;
    if config.controller.tls.is_some() {
        anyhow::bail!(
            "{shown}: controller.tls is set, but `zenvoy run` is local mode: the controller, \
             the holder and Envoy talk plaintext on this host's loopback. Remove \
             controller.tls to run it here, or run zenvoy-controller, zenvoy-holder and Envoy \
             (`zenvoy envoy-bootstrap --tls-ca ...`) yourself for mTLS"
        );
    }
    if let Some(dir) = &opts.dir {
        set_run_dir(&mut config, dir)?;
    }
    let run_dir = config.run_dir.clone();
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    init_tracing(&logs.join("zenvoy.log"))?;
    info!(config = %shown, run_dir = %run_dir.display(), "starting");
    for w in config.warnings() {
        warn!(warning = %w, "config");
    }
    // The holder in this process keeps a descriptor per held connection and five per
    // relay (Envoy and the services inherit the raised limit).
    zenvoy_holder::raise_nofile(Limits::default().max_pending_total);
    let envoy_bin = crate::envoy::locate(opts.envoy.as_deref())?;
    info!(envoy = %envoy_bin.display(), "Envoy binary");
    if let Some(signal) = signals.received() {
        info!(signal, "stopped before anything started");
        return Ok(());
    }
    let addresses_file = run_dir.join(ADDRESSES_FILE);
    let _ = std::fs::remove_file(&addresses_file);
    let listeners = Listeners::bind(&config).await?;
    // The controller publishes the holder's address to Envoy: the bound one, so that
    // port 0 works and an unspecified IP becomes one Envoy can dial.
    config.holder.address = reachable(listeners.holder.local_addr()?);

    let mut stack = Stack::new();
    let ended = match start(
        &mut stack,
        &config,
        &opts.config,
        listeners,
        &envoy_bin,
        &signals,
    )
    .await
    {
        Ok(up) => {
            if let Err(e) =
                zenvoy_base::write_atomically(&addresses_file, up.json(&opts.config).as_bytes())
            {
                warn!(error = %e, file = %addresses_file.display(), "cannot write the addresses");
            }
            print_running(&config, &opts.config, &up);
            supervise(&mut stack, &signals).await
        }
        Err(ended) => ended,
    };
    match &ended {
        Ended::Signal(signal) => {
            info!(signal, "stopping");
            println!(
                "zenvoy: {signal}: stopping Envoy, then the holder and the controller (which \
                 stops the services it started)"
            );
        }
        Ended::Failed(e) => {
            let e = format!("{e:#}");
            error!(error = %e, "stopping after a failure");
        }
    }
    let stopped = stack.stop().await;
    let _ = std::fs::remove_file(&addresses_file);
    match ended {
        Ended::Signal(_) => {
            stopped?;
            info!("stopped");
            println!("zenvoy: stopped");
            Ok(())
        }
        Ended::Failed(e) => {
            if let Err(also) = stopped {
                let also = format!("{also:#}");
                error!(error = %also, "while stopping");
            }
            Err(e)
        }
    }
}

/// `--dir` replaces `runDir`, and with it every service log that was inside it (the
/// default `<runDir>/logs/<name>.log` among them).
fn set_run_dir(config: &mut Config, dir: &Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).with_context(|| format!("--dir {}", dir.display()))?;
    let old = std::mem::replace(&mut config.run_dir, dir.clone());
    for s in &mut config.services {
        if let Ok(rest) = s.process.log.strip_prefix(&old) {
            s.process.log = dir.join(rest);
        }
    }
    Ok(())
}

/// Why the stack is stopping.
enum Ended {
    Signal(&'static str),
    Failed(anyhow::Error),
}

/// What start-up started, so that stopping finds all of it whenever it comes.
struct Stack {
    /// Set once Envoy is stopped: the controller and the holder stop.
    halt: watch::Sender<bool>,
    controller: Option<JoinHandle<Result<(), zenvoy_controller::RunError>>>,
    holder: Option<JoinHandle<std::io::Result<()>>>,
    envoy: Option<Envoy>,
}

/// The Envoy child process.
struct Envoy {
    child: Child,
    log: PathBuf,
    admin_file: PathBuf,
}

/// What runs where, once Envoy is ready.
struct Up {
    grpc: SocketAddr,
    controller_admin: SocketAddr,
    holder_listen: SocketAddr,
    holder_admin: SocketAddr,
    envoy_admin: SocketAddr,
    envoy_pid: Option<u32>,
    envoy_log: PathBuf,
    /// Envoy's listeners by name with the addresses they bound (port 0 resolved).
    listeners: Vec<(String, SocketAddr)>,
}

impl Up {
    fn json(&self, config: &Path) -> String {
        let listeners: serde_json::Map<String, Value> = self
            .listeners
            .iter()
            .map(|(name, addr)| (name.clone(), Value::from(addr.to_string())))
            .collect();
        json!({
            "pid": std::process::id(),
            "config": config.display().to_string(),
            "controller": {
                "grpc": self.grpc.to_string(),
                "admin": self.controller_admin.to_string(),
            },
            "holder": {
                "listen": self.holder_listen.to_string(),
                "admin": self.holder_admin.to_string(),
            },
            "envoy": {
                "admin": self.envoy_admin.to_string(),
                "pid": self.envoy_pid,
                "listeners": listeners,
            },
        })
        .to_string()
    }
}

/// The controller's and the holder's listeners, bound before anything starts so that a
/// taken address is reported by its config key and nothing has to be stopped.
struct Listeners {
    grpc: TcpListener,
    admin: TcpListener,
    holder: TcpListener,
    holder_admin: TcpListener,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let tcp = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {key} {addr}"))
        };
        Ok(Listeners {
            grpc: tcp("controller.listen", config.controller.listen).await?,
            admin: tcp("controller.admin", config.controller.admin).await?,
            // With the holder's backlog, as its binary binds it.
            holder: zenvoy_holder::bind(config.holder.address, false)
                .with_context(|| format!("binding holder.address {}", config.holder.address))?,
            holder_admin: tcp("holder.admin", config.holder.admin).await?,
        })
    }
}

/// Start the controller, the holder and Envoy, recording each in `stack` as it starts,
/// and wait until Envoy is ready; any signal or failure on the way ends it early.
async fn start(
    stack: &mut Stack,
    config: &Config,
    config_path: &Path,
    listeners: Listeners,
    envoy_bin: &Path,
    signals: &Signals,
) -> Result<Up, Ended> {
    let failed = |e: std::io::Error| Ended::Failed(e.into());
    let grpc = reachable(listeners.grpc.local_addr().map_err(failed)?);
    let controller_admin = listeners.admin.local_addr().map_err(failed)?;
    let holder_listen = listeners.holder.local_addr().map_err(failed)?;
    let holder_admin = listeners.holder_admin.local_addr().map_err(failed)?;

    let reload = zenvoy_controller::reload::Reload {
        path: config_path.to_path_buf(),
        interval: RELOAD_INTERVAL,
    };
    stack.controller = Some(tokio::spawn(zenvoy_controller::run(
        config.clone(),
        Some(reload),
        Some(config.state_file()),
        listeners.grpc,
        listeners.admin,
        halted(stack.halt.subscribe()),
    )));
    stack.holder = Some(tokio::spawn(zenvoy_holder::run(
        holder_settings(grpc),
        vec![(listeners.holder, Ingress::Proxy)],
        listeners.holder_admin,
        halted(stack.halt.subscribe()),
    )));
    info!(%grpc, admin = %controller_admin, "controller started");
    info!(listen = %holder_listen, admin = %holder_admin, "holder started");

    if let Some(signal) = signals.received() {
        return Err(Ended::Signal(signal));
    }
    let envoy = spawn_envoy(envoy_bin, config, grpc).map_err(Ended::Failed)?;
    let envoy_pid = envoy.child.id();
    let envoy_log = envoy.log.clone();
    let admin_file = envoy.admin_file.clone();
    info!(pid = envoy_pid, log = %envoy_log.display(), "Envoy started");
    stack.envoy = Some(envoy);

    let client =
        crate::status::client(Duration::from_secs(1)).map_err(|e| Ended::Failed(e.into()))?;
    let deadline = Instant::now() + ENVOY_READY_TIMEOUT;
    let mut envoy_admin: Option<SocketAddr> = None;
    loop {
        if let Some(signal) = signals.received() {
            return Err(Ended::Signal(signal));
        }
        if let Some(e) = stack.ended().await {
            return Err(Ended::Failed(e));
        }
        if envoy_admin.is_none() {
            envoy_admin = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(reachable);
        }
        if let Some(admin) = envoy_admin {
            if envoy_ready(&client, admin).await {
                info!(%admin, "Envoy ready");
                return Ok(Up {
                    grpc,
                    controller_admin,
                    holder_listen,
                    holder_admin,
                    envoy_admin: admin,
                    envoy_pid,
                    listeners: envoy_listeners(&client, admin).await,
                    envoy_log,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(Ended::Failed(anyhow!(
                "Envoy was not ready (listeners and clusters from the controller) within \
                 {ENVOY_READY_TIMEOUT:?}; the end of {}:\n{}",
                envoy_log.display(),
                tail(&envoy_log, 20)
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = signals.wait() => {}
        }
    }
}

/// Until a signal, or until a part stops on its own (a failure: each runs until told).
async fn supervise(stack: &mut Stack, signals: &Signals) -> Ended {
    loop {
        tokio::select! {
            signal = signals.wait() => return Ended::Signal(signal),
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
        if let Some(e) = stack.ended().await {
            return Ended::Failed(e);
        }
    }
}

impl Stack {
    fn new() -> Stack {
        Stack {
            halt: watch::channel(false).0,
            controller: None,
            holder: None,
            envoy: None,
        }
    }

    /// A part that has stopped while it should run, and why.
    async fn ended(&mut self) -> Option<anyhow::Error> {
        if self
            .controller
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            let task = self.controller.take()?;
            return Some(match finished("controller", task).await {
                Ok(()) => anyhow!("the controller stopped on its own"),
                Err(e) => e,
            });
        }
        if self.holder.as_ref().is_some_and(JoinHandle::is_finished) {
            let task = self.holder.take()?;
            return Some(match finished("holder", task).await {
                Ok(()) => anyhow!("the holder stopped on its own"),
                Err(e) => e,
            });
        }
        let envoy = self.envoy.as_mut()?;
        match envoy.child.try_wait() {
            Ok(Some(status)) => Some(anyhow!(
                "Envoy exited ({status}); the end of {}:\n{}",
                envoy.log.display(),
                tail(&envoy.log, 20)
            )),
            Ok(None) => None,
            Err(e) => Some(anyhow!("cannot tell whether Envoy runs: {e}")),
        }
    }

    /// Envoy first, then the holder and the controller together; every part is waited
    /// for.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(envoy) = self.envoy.take() {
            stop_envoy(envoy).await;
        }
        let _ = self.halt.send(true);
        let (holder, controller) = (self.holder.take(), self.controller.take());
        let holder = async {
            match holder {
                Some(task) => finished("holder", task).await,
                None => Ok(()),
            }
        };
        let controller = async {
            match controller {
                Some(task) => finished("controller", task).await,
                None => Ok(()),
            }
        };
        let (holder, controller) = tokio::join!(holder, controller);
        holder.and(controller)
    }
}

/// A task's result, its error named after `what`.
async fn finished<E>(what: &str, task: JoinHandle<Result<(), E>>) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match task.await {
        Ok(r) => r.with_context(|| format!("the {what} failed")),
        Err(e) => Err(anyhow!("the {what}'s task failed: {e}")),
    }
}

/// SIGTERM (Envoy stops at once), SIGKILL after the grace period; reaped either way.
async fn stop_envoy(mut envoy: Envoy) {
    if matches!(envoy.child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Some(pid) = envoy.child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(ENVOY_STOP_GRACE, envoy.child.wait()).await {
        Ok(_) => info!("Envoy stopped"),
        Err(_) => {
            warn!(grace = ?ENVOY_STOP_GRACE, "Envoy did not stop after SIGTERM; killing it");
            let _ = envoy.child.kill().await;
        }
    }
}

/// Resolves once `halt` is set (or its sender is gone: nothing can stop us any more, so
/// stop now rather than never).
async fn halted(mut halt: watch::Receiver<bool>) {
    let _ = halt.wait_for(|h| *h).await;
}

/// The holder as its binary runs by default (`zenvoy-holder --help`), with the
/// in-process controller as its only controller. The controller's per-service
/// `holdTimeout` and `maxPending` reach it with each service's assignment and override
/// these.
fn holder_settings(controller: SocketAddr) -> Settings {
    Settings {
        controllers: vec![format!("http://{controller}")],
        tls: None,
        node_id: HOLDER_NODE_ID.to_string(),
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        push: true,
    }
}

/// Write the bootstrap into the run directory and start Envoy with it, its output
/// appended to `<runDir>/logs/envoy.log`.
fn spawn_envoy(bin: &Path, config: &Config, controller: SocketAddr) -> anyhow::Result<Envoy> {
    let dir = &config.run_dir;
    let boot = bootstrap::build(&bootstrap::Options {
        node_id: ENVOY_NODE_ID.to_string(),
        controller,
        admin: config.envoy.admin,
        flush: FLUSH,
        push: true,
        tls: None,
    });
    let boot_file = dir.join("envoy.json");
    std::fs::write(&boot_file, serde_json::to_vec_pretty(&boot)?)
        .with_context(|| format!("writing {}", boot_file.display()))?;
    let admin_file = dir.join("envoy.admin");
    let _ = std::fs::remove_file(&admin_file);
    let log = dir.join("logs").join("envoy.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-c")
        .arg(&boot_file)
        // Envoy writes the admin address it bound here: envoy.admin may have port 0.
        .arg("--admin-address-path")
        .arg(&admin_file)
        // Hot restart keys shared memory by a base id: a second `zenvoy run` on the same
        // host would collide with the first.
        .arg("--disable-hot-restart")
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: a terminal's Ctrl-C reaches only zenvoy, which stops
        // Envoy in its turn (first), instead of Envoy vanishing under a running stack.
        .process_group(0)
        // If this process unwinds without the stop path, Envoy does not outlive it.
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting Envoy ({})", bin.display()))?;
    Ok(Envoy {
        child,
        log,
        admin_file,
    })
}

/// Envoy's `/ready` says LIVE once its listeners and clusters arrived.
async fn envoy_ready(client: &reqwest::Client, admin: SocketAddr) -> bool {
    let Ok(resp) = client.get(format!("http://{admin}/ready")).send().await else {
        return false;
    };
    resp.status().is_success() && resp.text().await.is_ok_and(|b| b.contains("LIVE"))
}

/// Envoy's listeners and the addresses they bound, by name (best effort: empty when the
/// admin does not answer).
async fn envoy_listeners(client: &reqwest::Client, admin: SocketAddr) -> Vec<(String, SocketAddr)> {
    let url = format!("http://{admin}/listeners?format=json");
    let Ok(resp) = client.get(url).send().await else {
        return Vec::new();
    };
    // reqwest is built without its `json` feature: the body as text, then serde_json.
    let Some(v) = resp
        .text()
        .await
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return Vec::new();
    };
    v["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let name = l["name"].as_str()?.to_string();
            let a = &l["local_address"]["socket_address"];
            let ip: std::net::IpAddr = a["address"].as_str()?.parse().ok()?;
            let port = u16::try_from(a["port_value"].as_u64()?).ok()?;
            Some((name, SocketAddr::new(ip, port)))
        })
        .collect()
}

/// What runs, where to reach it, where its logs are.
fn print_running(config: &Config, config_path: &Path, up: &Up) {
    let logs = config.run_dir.join("logs");
    let bound = |name: &str, configured: Option<SocketAddr>| {
        up.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .or(configured)
    };
    let http = bound(
        zenvoy_controller::xds::resources::HTTP_LISTENER,
        config.http.as_ref().map(|h| h.listen),
    );
    let mut out = String::new();
    out.push_str(&format!(
        "\nzenvoy is running {} (run dir {})\n",
        config_path.display(),
        config.run_dir.display()
    ));
    out.push_str(&format!(
        "  controller  gRPC {}, admin http://{} (/status, /metrics)\n",
        up.grpc, up.controller_admin
    ));
    out.push_str(&format!(
        "  holder      {}, admin http://{}/metrics\n",
        up.holder_listen, up.holder_admin
    ));
    out.push_str(&format!(
        "  envoy       pid {}, admin http://{}\n",
        up.envoy_pid.map_or("?".to_string(), |p| p.to_string()),
        up.envoy_admin
    ));
    for s in &config.services {
        let mut doors = Vec::new();
        if s.protocol.routed() {
            // The name and the extra domains; the namespace forms are implied.
            let own = format!("{}.", s.name);
            let hosts: Vec<&str> = s
                .domains
                .iter()
                .map(String::as_str)
                .filter(|d| !d.starts_with(&own))
                .collect();
            if let Some(listen) = http {
                doors.push(format!(
                    "{} {listen} (Host {})",
                    s.protocol.name(),
                    hosts.join(", ")
                ));
            }
        }
        if let Some(listen) = bound(&s.name, s.listen) {
            doors.push(format!("tcp {listen}"));
        }
        out.push_str(&format!(
            "  service {}: {}; parked until a client comes, then `{}` (on {}); log {}\n",
            s.name,
            doors.join(", "),
            s.command.join(" "),
            s.upstream,
            s.process.log.display()
        ));
    }
    out.push_str(&format!(
        "logs: {} (controller and holder), {}\n",
        logs.join("zenvoy.log").display(),
        up.envoy_log.display()
    ));
    out.push_str(&format!(
        "`zenvoy status --admin {}` shows the services; Ctrl-C stops everything.\n",
        up.controller_admin
    ));
    print!("{out}");
}

/// The last `n` lines of a log file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The controller's and the holder's logs, on stderr and appended to `log`.
fn init_tracing(log: &Path) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A subscriber set before (a test calling `run` twice) keeps logging where it did.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file)),
        )
        .try_init();
    Ok(())
}

/// SIGINT and SIGTERM, caught from the start: the first is a request to stop that every
/// wait sees; later ones are logged (the stop is already under way and bounded).
#[derive(Clone)]
struct Signals(watch::Receiver<Option<&'static str>>);

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let name = tokio::select! {
                    Some(()) = term.recv() => "SIGTERM",
                    Some(()) = int.recv() => "SIGINT",
                    else => return,
                };
                if first {
                    first = false;
                    let _ = tx.send(Some(name));
                } else {
                    warn!(
                        signal = name,
                        "already stopping: Envoy, the holder and the services are given \
                         their grace periods"
                    );
                }
            }
        });
        Ok(Signals(rx))
    }

    /// The signal received, if any.
    fn received(&self) -> Option<&'static str> {
        *self.0.borrow()
    }

    /// Resolves with the first signal (at once if it came already).
    async fn wait(&self) -> &'static str {
        let mut rx = self.0.clone();
        loop {
            let seen = *rx.borrow_and_update();
            if let Some(signal) = seen {
                return signal;
            }
            if rx.changed().await.is_err() {
                // The listener is gone (runtime shutting down): no signal will come.
                return std::future::pending().await;
            }
        }
    }
}
