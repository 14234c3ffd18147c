//! A whole zenvoy stack on one machine: controller, holder and one or more Envoys, each a
//! real process, ports chosen by the OS where the design allows it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, free_port, http_get, metric_value, wait};

use crate::certs::Pki;
use crate::envoy::{self, Envoy};

/// A service for the test config, woken as `zenvoy-echo` on a free port.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub upstream: SocketAddr,
    pub command: Vec<String>,
    /// Extra YAML keys for the service entry, e.g. `idleTimeout: 2s`.
    pub extra: Vec<String>,
    pub pid_file: PathBuf,
    /// The Envoy listener address for a TCP service (default `127.0.0.1:0`).
    pub listen: Option<SocketAddr>,
}

impl ServiceSpec {
    /// An echo service whose process writes its pid to `<dir>/<name>.pid`.
    pub fn echo(name: &str, dir: &Path) -> anyhow::Result<Self> {
        let upstream = free_port()?;
        let pid_file = dir.join(format!("{name}.pid"));
        let command = vec![
            bin("zenvoy-echo")?.display().to_string(),
            "--listen".into(),
            upstream.to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
        ];
        Ok(ServiceSpec {
            name: name.to_string(),
            upstream,
            command,
            extra: Vec::new(),
            pid_file,
            listen: None,
        })
    }

    /// An HTTP service (`protocol: http`) answering 200 with `body`.
    pub fn http(name: &str, dir: &Path, body: &str) -> anyhow::Result<Self> {
        let mut spec = Self::echo(name, dir)?;
        spec.command
            .extend(["--http".to_string(), "--body".to_string(), body.to_string()]);
        Ok(spec.with("protocol: http"))
    }

    /// An echo service whose command waits at a gate: it starts listening only once the
    /// test opens the [`Gate`], whatever the controller does. Connections made before
    /// that are held, deterministically.
    pub fn gated_echo(name: &str, dir: &Path) -> anyhow::Result<(Self, Gate)> {
        let mut spec = Self::echo(name, dir)?;
        let fifo = dir.join(format!("{name}.gate"));
        let status = Command::new("mkfifo").arg(&fifo).status()?;
        anyhow::ensure!(status.success(), "mkfifo {}: {status}", fifo.display());
        // Read and write: opening a FIFO so never blocks, and the line written later
        // waits in it even if the reader opens it after that.
        let gate = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&fifo)?;
        let quoted: Vec<String> = spec.command.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "read go < '{}' && exec {}",
            fifo.display(),
            quoted.join(" ")
        );
        spec.command = vec!["sh".into(), "-c".into(), script];
        Ok((spec, Gate(gate)))
    }

    pub fn with(mut self, yaml: &str) -> Self {
        self.extra.push(yaml.to_string());
        self
    }

    /// The pid of the running upstream process, if it is running.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The controller reaps what it stops, so a gone process has no /proc entry.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A zombie ("Z") has exited.
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state != "Z").then_some(pid)
    }
}

/// The write end of the FIFO a gated service's command reads one line from before it
/// starts (see [`ServiceSpec::gated_echo`]).
#[derive(Debug)]
pub struct Gate(std::fs::File);

impl Gate {
    pub fn open(&self) -> std::io::Result<()> {
        use std::io::Write;
        (&self.0).write_all(b"go\n")
    }
}

/// How the stack is put together.
#[derive(Debug, Clone)]
pub struct Options {
    pub services: Vec<ServiceSpec>,
    /// YAML lines under `defaults:`.
    pub defaults: Vec<String>,
    /// Envoy stats flush interval.
    pub flush: Duration,
    pub holder_args: Vec<String>,
    /// Run the holder with this open-file limit (soft and hard, via util-linux `prlimit`).
    pub holder_nofile: Option<u64>,
    /// Add the shared Host-routed HTTP listener (`http.listen`, port chosen by the OS).
    pub http: bool,
    /// Scrape mode alone: no Envoy stats sink, holder `--no-push`; the controller scrapes
    /// Envoy's `/stats/prometheus` and the holder's `/metrics` at this interval.
    pub scrape: Option<Duration>,
    /// YAML lines added at the top level of the controller's config, after `services:`
    /// (e.g. a `scrape:` section next to pushes; not together with `scrape` above).
    pub extra_config: Vec<String>,
    /// YAML lines under `controller:` (e.g. `peerTimeout: 6s`).
    pub controller: Vec<String>,
    /// mTLS on every gRPC stream: a test CA signs the controller's, the holder's
    /// (`holder-1`) and each Envoy's (its node id) certificates.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            services: Vec::new(),
            defaults: vec!["idleTimeout: 3s".into(), "holdTimeout: 30s".into()],
            flush: Duration::from_millis(500),
            holder_args: Vec::new(),
            holder_nofile: None,
            http: false,
            scrape: None,
            extra_config: Vec::new(),
            controller: Vec::new(),
            tls: false,
        }
    }
}

/// The config the controller gets: controller ports 0 (the OS picks; read back from its
/// address file), the holder on a free port, each service listening on port 0.
/// Fixed admin ports for scrape mode: the controller's config names the pages to scrape
/// before Envoy and the holder start.
#[derive(Debug, Clone, Copy)]
pub struct ScrapePorts {
    pub envoy_admin: SocketAddr,
    pub holder_admin: SocketAddr,
}

pub fn config_yaml(opts: &Options, holder: SocketAddr, scrape: Option<ScrapePorts>) -> String {
    let mut y = "controller:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n".to_string();
    for c in &opts.controller {
        y.push_str(&format!("  {c}\n"));
    }
    y.push_str(&format!("holder:\n  address: {holder}\n"));
    if opts.http {
        y.push_str("http:\n  listen: 127.0.0.1:0\n");
    }
    if let (Some(interval), Some(p)) = (opts.scrape, scrape) {
        y.push_str(&format!(
            "scrape:\n  interval: {}ms\n  targets:\n    - name: envoy-1\n      url: http://{}/stats/prometheus\n    - name: holder-1\n      url: http://{}/metrics\n",
            interval.as_millis(),
            p.envoy_admin,
            p.holder_admin
        ));
    }
    y.push_str("defaults:\n");
    for d in &opts.defaults {
        y.push_str(&format!("  {d}\n"));
    }
    y.push_str("services:\n");
    for s in &opts.services {
        let cmd: Vec<String> = s.command.iter().map(|c| format!("{c:?}")).collect();
        y.push_str(&format!("  - name: {}\n", s.name));
        if !s.extra.iter().any(|e| e == "protocol: http") {
            let listen = s
                .listen
                .map_or("127.0.0.1:0".to_string(), |l| l.to_string());
            y.push_str(&format!("    listen: {listen}\n"));
        }
        y.push_str(&format!(
            "    upstream: {}\n    command: [{}]\n",
            s.upstream,
            cmd.join(", ")
        ));
        for e in &s.extra {
            y.push_str(&format!("    {e}\n"));
        }
    }
    for line in &opts.extra_config {
        y.push_str(line);
        y.push('\n');
    }
    y
}

/// Drop order is field order: Envoy first, then holder, then the controller (which stops
/// the upstream processes it started), the directory last.
#[derive(Debug)]
pub struct Stack {
    pub envoy: Envoy,
    pub holder: Proc,
    pub controller: Proc,
    pub grpc: SocketAddr,
    pub controller_admin: SocketAddr,
    pub holder_listen: SocketAddr,
    pub holder_admin: SocketAddr,
    /// The holder's address file: every listener it bound (see `zenvoy-holder --help`).
    pub holder_addresses: Value,
    pub services: Vec<ServiceSpec>,
    pub flush: Duration,
    /// The test CA, with mTLS.
    pub pki: Option<Pki>,
    pub dir: tempfile::TempDir,
}

/// Wait for the JSON address file a process writes once bound; fails early if it exits.
pub async fn address_file(what: &str, path: &Path, proc: &mut Proc) -> anyhow::Result<Value> {
    let r = wait::until(what, Duration::from_secs(30), || {
        let exited = proc.exited();
        async move {
            if let Some(status) = exited {
                anyhow::bail!("process exited: {status}");
            }
            Ok(std::fs::read_to_string(path)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok()))
        }
    })
    .await;
    r.map_err(|e| anyhow::anyhow!("{e}\n{}", proc.log_tail(30)))
}

/// Start the controller `cmd` runs (the binary itself, or wrapped, e.g. in a network
/// namespace) with `config`, its log and address file in `dir`; returns it with its gRPC
/// and admin addresses once it is listening.
pub async fn spawn_controller(
    mut cmd: Command,
    config: &Path,
    dir: &Path,
) -> anyhow::Result<(Proc, SocketAddr, SocketAddr)> {
    cmd.arg("--config")
        .arg(config)
        .arg("--address-file")
        .arg(dir.join("controller.json"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let mut controller = Proc::spawn("controller", cmd, Some(&dir.join("controller.log")))?;
    let c = address_file(
        "controller address file",
        &dir.join("controller.json"),
        &mut controller,
    )
    .await?;
    let (grpc, admin) = (addr(&c, "grpc")?, addr(&c, "admin")?);
    Ok((controller, grpc, admin))
}

/// An address from an address file.
pub fn addr(v: &Value, key: &str) -> anyhow::Result<SocketAddr> {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("address file has no {key:?}: {v}"))
}

impl Stack {
    /// A fresh temporary directory for a stack's files (configs, logs, pid files).
    pub fn tempdir() -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new().prefix("zenvoy-e2e-").tempdir()?)
    }

    /// Start controller, holder and Envoy and wait until Envoy is ready.
    pub async fn start(dir: tempfile::TempDir, opts: Options) -> anyhow::Result<Stack> {
        let d = dir.path().to_path_buf();
        let holder_listen = free_port()?;
        let scrape = match opts.scrape {
            Some(_) => Some(ScrapePorts {
                envoy_admin: free_port()?,
                holder_admin: free_port()?,
            }),
            None => None,
        };
        let pki = opts.tls.then(|| Pki::new(&d, "zenvoy")).transpose()?;
        let mut opts = opts;
        if let Some(pki) = &pki {
            let server = pki.issue("zenvoy-controller")?;
            opts.controller.extend([
                "tls:".to_string(),
                format!("  cert: {}", server.cert.display()),
                format!("  key: {}", server.key.display()),
                format!("  clientCa: {}", pki.ca.display()),
            ]);
        }
        let config = d.join("zenvoy.yaml");
        std::fs::write(&config, config_yaml(&opts, holder_listen, scrape))?;

        let (controller, grpc, controller_admin) =
            spawn_controller(Command::new(bin("zenvoy-controller")?), &config, &d).await?;

        let mut cmd = match opts.holder_nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("zenvoy-holder")?);
                c
            }
            None => Command::new(bin("zenvoy-holder")?),
        };
        cmd.arg("--listen")
            .arg(holder_listen.to_string())
            .arg("--admin")
            .arg(scrape.map_or("127.0.0.1:0".to_string(), |p| p.holder_admin.to_string()))
            .args(["--node-id", "holder-1"])
            .arg("--controller")
            .arg(match &pki {
                Some(_) => format!("https://{grpc}"),
                None => format!("http://{grpc}"),
            })
            .arg("--address-file")
            .arg(d.join("holder.json"))
            .args(&opts.holder_args)
            .args(scrape.map(|_| "--no-push"));
        if let Some(pki) = &pki {
            let leaf = pki.issue("holder-1")?;
            cmd.arg("--tls-ca")
                .arg(&pki.ca)
                .arg("--tls-cert")
                .arg(&leaf.cert)
                .arg("--tls-key")
                .arg(&leaf.key);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut holder = Proc::spawn("holder", cmd, Some(&d.join("holder.log")))?;
        let h = address_file("holder address file", &d.join("holder.json"), &mut holder).await?;
        let holder_admin = addr(&h, "admin")?;

        let boot = match scrape {
            Some(p) => {
                envoy::bootstrap_without_push("envoy-1", grpc, p.envoy_admin.port(), opts.flush)
            }
            None => envoy::bootstrap("envoy-1", grpc, 0, opts.flush),
        };
        let boot = match &pki {
            Some(pki) => {
                let leaf = pki.issue("envoy-1")?;
                envoy::with_tls(boot, &pki.ca, &leaf.cert, &leaf.key)
            }
            None => boot,
        };
        let envoy = match Envoy::start(&d, "envoy", &boot, Some(&d.join("envoy.log"))).await {
            Ok(e) => e,
            Err(e) => anyhow::bail!("{e}\n{}{}", controller.log_tail(30), holder.log_tail(30)),
        };
        Ok(Stack {
            envoy,
            holder,
            controller,
            grpc,
            controller_admin,
            holder_listen,
            holder_admin,
            holder_addresses: h,
            services: opts.services,
            flush: opts.flush,
            pki,
            dir,
        })
    }

    /// `boot` with mTLS and a certificate for `node` when the stack has a CA.
    fn tls(&self, boot: Value, node: &str) -> anyhow::Result<Value> {
        Ok(match &self.pki {
            Some(pki) => {
                let leaf = pki.issue(node)?;
                envoy::with_tls(boot, &pki.ca, &leaf.cert, &leaf.key)
            }
            None => boot,
        })
    }

    /// Kill the controller with SIGKILL (no chance to stop anything) and start it again
    /// with the same config on the same addresses; returns once it listens.
    pub async fn restart_controller(&mut self) -> anyhow::Result<()> {
        self.controller.kill();
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("controller.json"));
        let mut cmd = Command::new(bin("zenvoy-controller")?);
        cmd.arg("--listen")
            .arg(self.grpc.to_string())
            .arg("--admin")
            .arg(self.controller_admin.to_string());
        let (controller, _, _) = spawn_controller(cmd, &d.join("zenvoy.yaml"), d).await?;
        self.controller = controller;
        Ok(())
    }

    /// Start another Envoy with node id `node` on the same controller; it is ready (has
    /// its listeners) when this returns. The caller owns it.
    pub async fn start_envoy(&self, node: &str) -> anyhow::Result<Envoy> {
        let boot = self.tls(envoy::bootstrap(node, self.grpc, 0, self.flush), node)?;
        let log = self.dir.path().join(format!("{node}.log"));
        Envoy::start(self.dir.path(), node, &boot, Some(&log)).await
    }

    /// Start another Envoy speaking delta (incremental) ADS.
    pub async fn start_delta_envoy(&self, node: &str) -> anyhow::Result<Envoy> {
        let mut boot = envoy::bootstrap(node, self.grpc, 0, self.flush);
        boot["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC".into();
        let log = self.dir.path().join(format!("{node}.log"));
        Envoy::start(self.dir.path(), node, &boot, Some(&log)).await
    }

    /// Kill the stack's Envoy (SIGKILL: no goodbye to the controller) and start a new one
    /// with the same node id. Its listeners get new ports.
    pub async fn restart_envoy(&mut self) -> anyhow::Result<()> {
        self.envoy.proc.kill();
        self.envoy = self.start_envoy("envoy-1").await?;
        Ok(())
    }

    /// The holder's own listener for service `name` (`--service-port name=...`).
    pub fn holder_service_port(&self, name: &str) -> anyhow::Result<SocketAddr> {
        addr(&self.holder_addresses["service_ports"], name)
    }

    pub fn service(&self, name: &str) -> &ServiceSpec {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in this stack"))
    }

    /// Where clients connect for service `name`.
    pub async fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.envoy.listener(name).await
    }

    pub async fn holder_metric(&self, series: &str) -> anyhow::Result<f64> {
        let page = http_get(&format!("http://{}/metrics", self.holder_admin)).await?;
        Ok(metric_value(&page, series).unwrap_or(0.0))
    }

    pub async fn controller_metric(&self, series: &str) -> anyhow::Result<f64> {
        let page = http_get(&format!("http://{}/metrics", self.controller_admin)).await?;
        Ok(metric_value(&page, series).unwrap_or(0.0))
    }

    /// Wait until service `name`'s process has exited and Envoy sends it to the holder
    /// again.
    pub async fn wait_parked(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let spec = self.service(name);
        wait::until(&format!("{name}'s process to exit"), timeout, || async {
            Ok(spec.running_pid().is_none().then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))?;
        self.wait_hosts(name, &[self.holder_listen], timeout).await
    }

    /// Wait until Envoy's cluster `name` has exactly `hosts`.
    pub async fn wait_hosts(
        &self,
        name: &str,
        hosts: &[SocketAddr],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("Envoy cluster {name} to have hosts {hosts:?}");
        let r = wait::until(&what, timeout, || async {
            let now = self.envoy.cluster_hosts(name).await?;
            Ok((now == hosts).then_some(()))
        })
        .await;
        r.map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Tails of every log, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}{}{}",
            self.controller.log_tail(40),
            self.holder.log_tail(40),
            self.envoy.proc.log_tail(20)
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // ZENVOY_E2E_LOGS=1 prints them for passing tests too.
        if std::thread::panicking() || std::env::var_os("ZENVOY_E2E_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }
}
