//! The `zenvoy` command, as users run it: the real binary from target/, a real Envoy.
//!
//! - `zenvoy run`: two instances side by side, each waking and parking its services; a
//!   flow-style config running like its block-style twin; SIGTERM at each moment of
//!   start-up leaving no process of the stack behind.
//! - `zenvoy envoy-bootstrap`: what it prints passes `envoy --mode validate` and drives a
//!   real Envoy through a wake and a park.
//! - `zenvoy check`: the field of each invalid config, every example accepted.
//! - `zenvoy status`: a service followed from parked through waking and awake back to
//!   parked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use zenvoy_e2e::certs::Pki;
use zenvoy_e2e::echo::{echo_roundtrip, payload};
use zenvoy_e2e::envoy::{self, Envoy};
use zenvoy_e2e::stack::{self, Options, ServiceSpec, Stack};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, free_port, wait, workspace_root};

/// Waits for things that take a wake, a park or a start: generous, never hit when well.
const BOUND: Duration = Duration::from_secs(30);

/// Every address one `zenvoy run` binds (Envoy binds `envoy_admin`), each from its
/// config.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: SocketAddr,
    admin: SocketAddr,
    holder: SocketAddr,
    holder_admin: SocketAddr,
    envoy_admin: SocketAddr,
}

impl Ports {
    fn free() -> anyhow::Result<Ports> {
        Ok(Ports {
            grpc: free_port()?,
            admin: free_port()?,
            holder: free_port()?,
            holder_admin: free_port()?,
            envoy_admin: free_port()?,
        })
    }
}

/// A config for `zenvoy run`: every port fixed, echo services parked after 2 s idle.
/// `flow`: every section in YAML flow style (`controller: { listen: ..., admin: ... }`),
/// the form a line-by-line reader gets wrong.
fn config_yaml(p: &Ports, run_dir: &Path, services: &[ServiceSpec], flow: bool) -> String {
    let run_dir = format!("{:?}", run_dir.display().to_string());
    let command = |s: &ServiceSpec| {
        s.command
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listen = |s: &ServiceSpec| {
        s.listen
            .map_or("127.0.0.1:0".to_string(), |l| l.to_string())
    };
    if flow {
        let services: Vec<String> = services
            .iter()
            .map(|s| {
                format!(
                    "{{ name: {}, listen: {}, upstream: {}, command: [{}] }}",
                    s.name,
                    listen(s),
                    s.upstream,
                    command(s)
                )
            })
            .collect();
        format!(
            "controller: {{ listen: {}, admin: {} }}\n\
             holder: {{ address: {}, admin: {} }}\n\
             envoy: {{ admin: {} }}\n\
             runDir: {run_dir}\n\
             defaults: {{ idleTimeout: 2s, holdTimeout: 30s }}\n\
             services: [{}]\n",
            p.grpc,
            p.admin,
            p.holder,
            p.holder_admin,
            p.envoy_admin,
            services.join(", ")
        )
    } else {
        let mut y = format!(
            "controller:\n  listen: {}\n  admin: {}\n\
             holder:\n  address: {}\n  admin: {}\n\
             envoy:\n  admin: {}\n\
             runDir: {run_dir}\n\
             defaults:\n  idleTimeout: 2s\n  holdTimeout: 30s\n\
             services:\n",
            p.grpc, p.admin, p.holder, p.holder_admin, p.envoy_admin
        );
        for s in services {
            y.push_str(&format!(
                "  - name: {}\n    listen: {}\n    upstream: {}\n    command: [{}]\n",
                s.name,
                listen(s),
                s.upstream,
                command(s)
            ));
        }
        y
    }
}

/// One `zenvoy run` with its own directory (config, run directory, the services' pid
/// files): every process of its stack names a file in there, which is how the tests
/// find what is left. Prints its logs when the test fails (or with ZENVOY_E2E_LOGS).
struct Instance {
    home: PathBuf,
    ports: Ports,
    run_dir: PathBuf,
    config: PathBuf,
    out: PathBuf,
    services: Vec<ServiceSpec>,
    proc: Proc,
    passed: bool,
}

impl Instance {
    /// Write the config for echo services `names` and start `zenvoy run` with it.
    fn start(dir: &Path, name: &str, names: &[&str], flow: bool) -> anyhow::Result<Instance> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home)?;
        let mut services = Vec::new();
        for n in names {
            let mut spec = ServiceSpec::echo(n, &home)?;
            spec.listen = Some(free_port()?);
            services.push(spec);
        }
        let ports = Ports::free()?;
        let run_dir = home.join("run");
        let config = home.join("zenvoy.yaml");
        std::fs::write(&config, config_yaml(&ports, &run_dir, &services, flow))?;
        let out = home.join("zenvoy.out");
        let mut cmd = Command::new(bin("zenvoy")?);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--envoy")
            .arg(envoy::binary()?)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let proc = Proc::spawn(&format!("zenvoy run ({name})"), cmd, Some(&out))?;
        Ok(Instance {
            home,
            ports,
            run_dir,
            config,
            out,
            services,
            proc,
            passed: false,
        })
    }

    /// Once Envoy is ready: the addresses `zenvoy run` writes then.
    async fn ready(&mut self) -> anyhow::Result<Value> {
        let file = self.run_dir.join("addresses.json");
        let proc = &mut self.proc;
        let r = wait::until(
            "zenvoy run to be ready (its runDir/addresses.json)",
            Duration::from_secs(60),
            || {
                let exited = proc.exited();
                let file = file.clone();
                async move {
                    if let Some(status) = exited {
                        anyhow::bail!("zenvoy run exited: {status}");
                    }
                    Ok(std::fs::read_to_string(&file)
                        .ok()
                        .and_then(|s| serde_json::from_str::<Value>(&s).ok()))
                }
            },
        )
        .await;
        r.map_err(|e| anyhow!("{e}\n{}", self.logs()))
    }

    fn service(&self, name: &str) -> &ServiceSpec {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Connect through this instance's Envoy: the service wakes and echoes.
    async fn wake(&self, name: &str, seed: u64) -> anyhow::Result<i32> {
        let s = self.service(name);
        let listen = s.listen.context("a TCP service")?;
        echo_roundtrip(listen, &payload(seed, 4096))
            .await
            .map_err(|e| anyhow!("{name} through {listen}: {e}\n{}", self.logs()))?;
        s.running_pid()
            .with_context(|| format!("{name} echoed but its process is not running"))
    }

    /// Wait for the service's process to exit (its idleTimeout is 2 s).
    async fn parked(&self, name: &str) -> anyhow::Result<()> {
        let s = self.service(name);
        let what = format!("{name}'s process to exit after its idleTimeout");
        let r = wait::until(&what, BOUND, || async {
            Ok(s.running_pid().is_none().then_some(()))
        })
        .await;
        r.map_err(|e| anyhow!("{e}\n{}", self.logs()))
    }

    fn sigterm(&self) -> anyhow::Result<()> {
        let pid = i32::try_from(self.proc.pid())?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)?;
        Ok(())
    }

    /// SIGTERM, then: `zenvoy run` exits, and nothing it started is left.
    async fn stop_and_check(&mut self) -> anyhow::Result<()> {
        self.sigterm()?;
        let proc = &mut self.proc;
        let r = wait::until("zenvoy run to exit after SIGTERM", BOUND, || {
            let exited = proc.exited();
            async move { Ok(exited) }
        })
        .await;
        r.map_err(|e| anyhow!("{e}\n{}", self.logs()))?;
        nothing_left(&self.home, &self.services)
            .await
            .map_err(|e| anyhow!("{e}\n{}", self.logs()))
    }

    /// `zenvoy run`'s output (its log on stderr and what it prints), Envoy's log and the
    /// services' logs, each's end.
    fn logs(&self) -> String {
        let mut files = vec![self.out.clone(), self.run_dir.join("logs/envoy.log")];
        if let Ok(entries) = std::fs::read_dir(self.run_dir.join("logs")) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.ends_with("zenvoy.log") && !p.ends_with("envoy.log")),
            );
        }
        files
            .iter()
            .map(|f| format!("--- {} ---\n{}\n", f.display(), tail(f, 60)))
            .collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.passed || std::env::var_os("ZENVOY_E2E_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
        // Room for its own stop (Envoy, then the services) before Proc's SIGKILL.
        self.proc.stop(Duration::from_secs(20));
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Live processes (zombies are gone already) whose command line mentions `marker`.
fn processes_mentioning(marker: &str) -> Vec<(i32, String)> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmd.contains(marker) {
                return None;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit(')').next()?.split_whitespace().next()?;
            (state != "Z").then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

/// No process names a file under `dir` (zenvoy itself, its Envoy, the services), and no
/// service's upstream port accepts.
async fn nothing_left(dir: &Path, services: &[ServiceSpec]) -> anyhow::Result<()> {
    let marker = dir.display().to_string();
    wait::until(
        &format!("no process of the stack in {marker} left"),
        Duration::from_secs(10),
        || {
            let left = processes_mentioning(&marker);
            async move {
                if left.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(anyhow!("still running: {left:?}"))
                }
            }
        },
    )
    .await?;
    for s in services {
        anyhow::ensure!(
            s.running_pid().is_none(),
            "{}'s process is still running",
            s.name
        );
        anyhow::ensure!(
            tokio::net::TcpStream::connect(s.upstream).await.is_err(),
            "{}'s upstream {} still accepts",
            s.name,
            s.upstream
        );
    }
    Ok(())
}

/// Run `zenvoy ARGS` to completion.
async fn zenvoy(args: &[String]) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(bin("zenvoy")?)
        .args(args)
        .output()
        .await?)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn addr(v: &Value) -> anyhow::Result<SocketAddr> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an address: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_zenvoy_runs_side_by_side_each_wake_and_park_their_services() -> anyhow::Result<()> {
    let dir = Stack::tempdir()?;
    let mut a = Instance::start(dir.path(), "a", &["one", "two"], false)?;
    let mut b = Instance::start(dir.path(), "b", &["one", "two"], false)?;
    let (ra, rb) = tokio::join!(a.ready(), b.ready());
    for (inst, addresses) in [(&a, ra?), (&b, rb?)] {
        let p = inst.ports;
        assert_eq!(addr(&addresses["controller"]["grpc"])?, p.grpc);
        assert_eq!(addr(&addresses["controller"]["admin"])?, p.admin);
        assert_eq!(addr(&addresses["holder"]["listen"])?, p.holder);
        assert_eq!(addr(&addresses["holder"]["admin"])?, p.holder_admin);
        assert_eq!(addr(&addresses["envoy"]["admin"])?, p.envoy_admin);
    }

    // Same service names, separate stacks: each connection wakes its own instance's.
    let mut pids = Vec::new();
    for (i, inst) in [&a, &b].into_iter().enumerate() {
        for (j, name) in ["one", "two"].into_iter().enumerate() {
            pids.push(inst.wake(name, (10 * i + j) as u64).await?);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four services, four processes");

    // `zenvoy status --config` finds each instance's controller from its config.
    for inst in [&a, &b] {
        let config = inst.config.display().to_string();
        let out = zenvoy(&args(&["status", "--config", &config])).await?;
        let shown = text(&out);
        assert!(out.status.success(), "zenvoy status --config: {shown}");
        for name in ["one", "two"] {
            assert!(
                shown
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name)),
                "{name} in the status of {config}:\n{shown}"
            );
        }
    }

    for inst in [&a, &b] {
        for name in ["one", "two"] {
            inst.parked(name).await?;
        }
    }
    // And they wake again.
    assert!(a.wake("one", 99).await? > 0);

    a.stop_and_check().await?;
    b.stop_and_check().await?;
    a.passed = true;
    b.passed = true;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_style_config_runs_exactly_like_its_block_style_twin() -> anyhow::Result<()> {
    let dir = Stack::tempdir()?;
    for (name, flow) in [("block", false), ("flow", true)] {
        let mut inst = Instance::start(dir.path(), name, &["echo"], flow)?;
        let yaml = std::fs::read_to_string(&inst.config)?;
        assert_eq!(
            yaml.starts_with("controller: {"),
            flow,
            "the {name} config:\n{yaml}"
        );
        let addresses = inst.ready().await?;
        let p = inst.ports;
        for (got, want) in [
            (&addresses["controller"]["grpc"], p.grpc),
            (&addresses["controller"]["admin"], p.admin),
            (&addresses["holder"]["listen"], p.holder),
            (&addresses["holder"]["admin"], p.holder_admin),
            (&addresses["envoy"]["admin"], p.envoy_admin),
        ] {
            assert_eq!(addr(got)?, want, "{name}: every address from the config");
        }
        let listen = inst.service("echo").listen.context("listen")?;
        assert_eq!(
            addr(&addresses["envoy"]["listeners"]["echo"])?,
            listen,
            "{name}: Envoy's listener for echo"
        );
        inst.wake("echo", 1).await?;
        inst.parked("echo").await?;
        inst.wake("echo", 2).await?;
        inst.stop_and_check().await?;
        inst.passed = true;
    }
    Ok(())
}

/// The moments `zenvoy run` is stopped at.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Right after the process started (perhaps before it could catch a signal).
    Spawned,
    /// Its log is open: the config is read, the controller about to start.
    Logging,
    /// Envoy runs but the stack is not ready yet (or just became so).
    EnvoyStarting,
    /// Ready, nothing woken.
    Ready,
    /// Ready, and a service woken by a client.
    ServiceAwake,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_any_moment_of_start_up_leaves_no_process_behind() -> anyhow::Result<()> {
    for moment in [
        Moment::Spawned,
        Moment::Logging,
        Moment::EnvoyStarting,
        Moment::Ready,
        Moment::ServiceAwake,
    ] {
        // A fresh directory each time: what is left is found by its name.
        let dir = Stack::tempdir()?;
        let mut inst = Instance::start(dir.path(), "stack", &["echo"], false)?;
        let reached = match moment {
            Moment::Spawned => Ok(()),
            Moment::Logging => {
                let log = inst.run_dir.join("logs/zenvoy.log");
                wait::until("zenvoy.log to exist", BOUND, || {
                    let there = log.exists();
                    async move { Ok(there.then_some(())) }
                })
                .await
            }
            Moment::EnvoyStarting => {
                let bootstrap = inst.run_dir.join("envoy.json").display().to_string();
                wait::until("an Envoy process with the stack's bootstrap", BOUND, || {
                    let running = !processes_mentioning(&bootstrap).is_empty();
                    async move { Ok(running.then_some(())) }
                })
                .await
            }
            Moment::Ready => inst.ready().await.map(|_| ()),
            Moment::ServiceAwake => match inst.ready().await {
                Ok(_) => inst.wake("echo", 7).await.map(|_| ()),
                Err(e) => Err(e),
            },
        };
        reached.with_context(|| format!("reaching {moment:?}"))?;
        inst.stop_and_check()
            .await
            .with_context(|| format!("SIGTERM at {moment:?}"))?;
        inst.passed = true;
    }
    Ok(())
}

/// `envoy --mode validate` on a bootstrap written to `file`.
fn envoy_validates(file: &Path) -> anyhow::Result<()> {
    let out = Command::new(envoy::binary()?)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "envoy --mode validate -c {}: {}",
        file.display(),
        text(&out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_bootstrap_is_valid_and_drives_envoy_through_a_wake_and_a_park(
) -> anyhow::Result<()> {
    let dir = Stack::tempdir()?;
    let d = dir.path();
    let spec = ServiceSpec::echo("echo", d)?;
    let holder_listen = free_port()?;
    let opts = Options {
        services: vec![spec.clone()],
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 30s".into()],
        ..Options::default()
    };
    let config = d.join("zenvoy.yaml");
    std::fs::write(&config, stack::config_yaml(&opts, holder_listen, None))?;
    let (controller, grpc, _) =
        stack::spawn_controller(Command::new(bin("zenvoy-controller")?), &config, d).await?;
    let mut cmd = Command::new(bin("zenvoy-holder")?);
    cmd.arg("--listen")
        .arg(holder_listen.to_string())
        .args(["--admin", "127.0.0.1:0", "--node-id", "holder-1"])
        .arg("--controller")
        .arg(format!("http://{grpc}"))
        .arg("--address-file")
        .arg(d.join("holder.json"));
    let mut holder = Proc::spawn("holder", cmd, Some(&d.join("holder.log")))?;
    stack::address_file("holder address file", &d.join("holder.json"), &mut holder).await?;

    let base = args(&[
        "envoy-bootstrap",
        "--node-id",
        "envoy-1",
        "--controller",
        &grpc.to_string(),
        "--admin",
        "127.0.0.1:0",
        "--flush",
        "500ms",
    ]);
    let printed = |out: Output| -> anyhow::Result<String> {
        anyhow::ensure!(
            out.status.success(),
            "zenvoy envoy-bootstrap: {}",
            text(&out)
        );
        Ok(String::from_utf8(out.stdout)?)
    };

    // JSON (the default) and YAML, each as Envoy reads it.
    let json = printed(zenvoy(&base).await?)?;
    let boot: Value = serde_json::from_str(&json)?;
    let controller_addr = &boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
        [0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(controller_addr["port_value"], grpc.port(), "{json}");
    assert_eq!(boot["node"]["id"], "envoy-1");
    assert_eq!(
        boot["stats_sinks"][0]["name"], "envoy.stat_sinks.metrics_service",
        "{json}"
    );
    std::fs::write(d.join("printed.json"), &json)?;
    envoy_validates(&d.join("printed.json"))?;
    let mut yaml_args = base.clone();
    yaml_args.extend(args(&["--format", "yaml"]));
    std::fs::write(d.join("printed.yaml"), printed(zenvoy(&yaml_args).await?)?)?;
    envoy_validates(&d.join("printed.yaml"))?;

    // With mTLS files: Envoy loads them in validate mode too.
    let pki = Pki::new(d, "zenvoy")?;
    let leaf = pki.issue("envoy-1")?;
    let mut tls_args = base.clone();
    for (flag, path) in [
        ("--tls-ca", &pki.ca),
        ("--tls-cert", &leaf.cert),
        ("--tls-key", &leaf.key),
    ] {
        tls_args.extend([flag.to_string(), path.display().to_string()]);
    }
    let tls = printed(zenvoy(&tls_args).await?)?;
    assert!(tls.contains("envoy.transport_sockets.tls"), "{tls}");
    std::fs::write(d.join("printed-tls.json"), &tls)?;
    envoy_validates(&d.join("printed-tls.json"))?;
    // --tls-ca alone is refused, naming what is missing.
    let mut half = base.clone();
    half.extend(["--tls-ca".to_string(), pki.ca.display().to_string()]);
    let out = zenvoy(&half).await?;
    assert!(
        !out.status.success(),
        "--tls-ca without --tls-cert/--tls-key"
    );

    // The printed bootstrap runs a real Envoy through a wake and a park.
    let envoy = Envoy::start(d, "envoy", &boot, Some(&d.join("envoy.log"))).await?;
    let logs = || {
        format!(
            "{}{}{}",
            controller.log_tail(40),
            holder.log_tail(20),
            envoy.proc.log_tail(20)
        )
    };
    let listen = envoy.listener("echo").await?;
    assert!(spec.running_pid().is_none(), "parked before any client");
    echo_roundtrip(listen, &payload(3, 8192))
        .await
        .map_err(|e| anyhow!("{e}\n{}", logs()))?;
    assert!(spec.running_pid().is_some(), "woken by the connection");
    wait::until(
        "the echo service to stop after its 2 s idleTimeout",
        BOUND,
        || async { Ok(spec.running_pid().is_none().then_some(())) },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", logs()))?;
    echo_roundtrip(listen, &payload(4, 8192))
        .await
        .map_err(|e| anyhow!("woken again: {e}\n{}", logs()))?;
    Ok(())
}

const SERVICE: &str = "services:\n  - name: a\n    listen: 127.0.0.1:10000\n    upstream: 127.0.0.1:18080\n    command: [x]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_field_of_each_invalid_config_and_accepts_every_example(
) -> anyhow::Result<()> {
    let dir = Stack::tempdir()?;
    let d = dir.path();
    // (file, text, what the message must name)
    let invalid = [
        ("typo", format!("{SERVICE}    idleTimout: 5s\n"), "idleTimout"),
        (
            "zero-hold",
            format!("{SERVICE}    holdTimeout: 0s\n"),
            "services[0].holdTimeout",
        ),
        (
            "same-listen",
            format!(
                "{SERVICE}  - name: b\n    listen: 127.0.0.1:10000\n    upstream: 127.0.0.1:18081\n    command: [x]\n"
            ),
            "services[1].listen",
        ),
        (
            "flow-host-name",
            format!("controller: {{ listen: localhost:18000, admin: 127.0.0.1:18001 }}\n{SERVICE}"),
            "controller.listen",
        ),
        (
            "http-without-listener",
            "services:\n  - name: web\n    protocol: http\n    upstream: 127.0.0.1:18080\n    command: [x]\n"
                .to_string(),
            "services[0].protocol",
        ),
        ("no-services", "services: []\n".to_string(), "services"),
        (
            "stop-signal",
            format!("{SERVICE}    stopSignal: SIGNOPE\n"),
            "stopSignal",
        ),
    ];
    let mut files = Vec::new();
    for (name, yaml, field) in &invalid {
        let file = d.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml)?;
        let shown = file.display().to_string();
        let out = zenvoy(&args(&["check", &shown])).await?;
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: exit 1\n{said}");
        assert!(
            said.contains(field) && said.contains(&shown),
            "{name}: the message names {field:?} and the file:\n{said}"
        );
        files.push(shown);
    }
    // All at once: one error per file, exit 1.
    let mut all = args(&["check"]);
    all.extend(files.iter().cloned());
    let out = zenvoy(&all).await?;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(
        said.lines().filter(|l| l.contains(": error: ")).count(),
        invalid.len(),
        "{said}"
    );

    // Every config in examples/ (not prometheus.yml, not the systemd unit).
    let examples: Vec<String> = std::fs::read_dir(workspace_root().join("examples"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    for expected in [
        "zenvoy.yaml",
        "local.yaml",
        "demo.yaml",
        "postgres.yaml",
        "redis.yaml",
        "http.yaml",
        "grpc.yaml",
    ] {
        assert!(
            examples
                .iter()
                .any(|e| e.ends_with(&format!("/{expected}"))),
            "examples/{expected} is checked: {examples:?}"
        );
    }
    let mut check = args(&["check"]);
    check.extend(examples.iter().cloned());
    let out = zenvoy(&check).await?;
    let said = text(&out);
    assert!(out.status.success(), "every example is valid:\n{said}");
    assert_eq!(
        said.lines().filter(|l| l.contains(": ok (")).count(),
        examples.len(),
        "{said}"
    );

    // Valid with a warning: printed, exit 0.
    let warned = d.join("warned.yaml");
    std::fs::write(
        &warned,
        format!("{SERVICE}    holdTimeout: 5s\n    wakeTimeout: 10s\n"),
    )?;
    let out = zenvoy(&args(&["check", &warned.display().to_string()])).await?;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning") && said.contains("services[0].holdTimeout"),
        "{said}"
    );

    // Kubernetes mode: services entries only override policy.
    let kube = d.join("kube.yaml");
    std::fs::write(
        &kube,
        "services:\n  - name: pg.databases\n    idleTimeout: 30m\n",
    )?;
    let kube = kube.display().to_string();
    let out = zenvoy(&args(&["check", "--kubernetes", &kube])).await?;
    assert!(out.status.success(), "{}", text(&out));
    let out = zenvoy(&args(&["check", &kube])).await?;
    assert_eq!(out.status.code(), Some(1), "process mode: {}", text(&out));
    Ok(())
}

/// A service's row in `zenvoy status`: its state and pending count.
async fn status_row(admin: &str, service: &str) -> anyhow::Result<Option<(String, u64)>> {
    let out = zenvoy(&args(&["status", "--admin", admin])).await?;
    anyhow::ensure!(out.status.success(), "zenvoy status: {}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    Ok(table.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.first() != Some(&service) {
            return None;
        }
        Some((cols.get(1)?.to_string(), cols.get(3)?.parse().ok()?))
    }))
}

/// Poll `zenvoy status` until `service` is in `state` (and, if given, has `pending`
/// connections held).
async fn wait_state(
    st: &Stack,
    service: &str,
    state: &str,
    pending: Option<u64>,
) -> anyhow::Result<()> {
    let admin = st.controller_admin.to_string();
    let what = match pending {
        Some(p) => format!("zenvoy status to show {service} {state} with {p} pending"),
        None => format!("zenvoy status to show {service} {state}"),
    };
    let r = wait::until(&what, BOUND, || {
        let admin = admin.clone();
        async move {
            let row = status_row(&admin, service).await?;
            Ok(row
                .filter(|(s, p)| s == state && pending.is_none_or(|want| *p == want))
                .map(|_| ()))
        }
    })
    .await;
    r.map_err(|e| anyhow!("{e}\n{}", st.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_a_service_from_parked_through_waking_and_awake_back_to_parked(
) -> anyhow::Result<()> {
    let dir = Stack::tempdir()?;
    let (spec, gate) = ServiceSpec::gated_echo("slow", dir.path())?;
    let st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 30s".into()],
            ..Options::default()
        },
    )
    .await?;
    wait_state(&st, "slow", "parked", Some(0)).await?;

    // A client: held while the service's command waits at its gate.
    let listen = st.listener("slow").await?;
    let client = tokio::spawn(async move { echo_roundtrip(listen, &payload(5, 2048)).await });
    wait_state(&st, "slow", "waking", Some(1)).await?;
    gate.open()?;
    wait_state(&st, "slow", "awake", None).await?;
    client
        .await?
        .map_err(|e| anyhow!("the held client: {e}\n{}", st.logs()))?;
    wait_state(&st, "slow", "parked", None).await?;

    // --watch redraws until SIGINT, then exits 0.
    let out = st.dir.path().join("watch.out");
    let mut cmd = Command::new(bin("zenvoy")?);
    cmd.args(["status", "--watch", "--interval", "200ms", "--admin"])
        .arg(st.controller_admin.to_string());
    let mut watch = Proc::spawn("zenvoy status --watch", cmd, Some(&out))?;
    wait::until("two frames of zenvoy status --watch", BOUND, || {
        let frames = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().next() == Some("slow"))
            .count();
        async move { Ok((frames >= 2).then_some(())) }
    })
    .await?;
    kill(Pid::from_raw(i32::try_from(watch.pid())?), Signal::SIGINT)?;
    let status = wait::until("zenvoy status --watch to exit on SIGINT", BOUND, || {
        let exited = watch.exited();
        async move { Ok(exited) }
    })
    .await?;
    assert_eq!(status, "exit status: 0", "{}", watch.log_tail(10));

    // No controller there: exit 1, naming the address.
    let nobody = free_port()?.to_string();
    let out = zenvoy(&args(&["status", "--admin", &nobody])).await?;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&nobody), "{said}");
    Ok(())
}
