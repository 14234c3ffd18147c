//! `zenvoy`: parse the command line, run the subcommand, exit 0 or 1.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use zenvoy::bootstrap::{self, DEFAULT_TLS_SERVER_NAME};
use zenvoy::{check, run, status};
use zenvoy_core::config::{Config, Mode, DEFAULT_CONTROLLER_ADMIN};

#[derive(Debug, Parser)]
#[command(
    name = "zenvoy",
    version,
    about = "zenvoy: services behind Envoy that scale to zero when idle and wake on the first connection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller and the holder (in this process) and Envoy (a child process) for
    /// one config on this host, until Ctrl-C or SIGTERM; then stop Envoy, the holder, the
    /// controller and every service it started.
    Run(RunArgs),
    /// Print an Envoy bootstrap that takes its listeners and clusters from a zenvoy
    /// controller over ADS and pushes its stats to it.
    EnvoyBootstrap(BootstrapArgs),
    /// Validate config files as the controller reads them: errors name the field and the
    /// value, warnings are printed too; exit 1 if any file is invalid.
    Check(CheckArgs),
    /// Each service's state, from a running controller's admin port (`GET /status`).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The config file (reference: docs/config.md). Every address comes from it:
    /// controller.listen and .admin, holder.address and .admin, envoy.admin, the services'
    /// listeners; logs go to `<runDir>/logs/`.
    #[arg(long, short, env = "ZENVOY_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// The Envoy binary. Default: `envoy` on PATH, else the one `make setup` installs in
    /// the zenvoy repository's .venv (looked for from the current directory and from this
    /// binary's location).
    #[arg(long, env = "ZENVOY_ENVOY", value_name = "PATH")]
    envoy: Option<PathBuf>,
    /// Use this directory instead of the config's runDir (logs, Envoy's bootstrap, the
    /// state file, addresses.json).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BootstrapArgs {
    /// The node id the controller knows this Envoy by (with mTLS, its certificate must
    /// name it).
    #[arg(long, value_name = "ID")]
    node_id: String,
    /// The controller's gRPC address (controller.listen), an IP and a port.
    #[arg(long, value_name = "IP:PORT")]
    controller: SocketAddr,
    /// Envoy's admin address (port 0: the OS picks; see Envoy's --admin-address-path).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// How often Envoy pushes its stats to the controller.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    flush: Duration,
    /// No metrics_service stats sink: the controller scrapes Envoy's /stats/prometheus
    /// instead (scrape.targets).
    #[arg(long)]
    no_push: bool,
    /// mTLS to the controller: the CA its certificate must chain to (PEM). With it,
    /// --tls-cert and --tls-key are required.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Envoy's client certificate (PEM); it must name --node-id.
    #[arg(long, value_name = "PEM", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// With --tls-ca: the name the controller's certificate must carry.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TLS_SERVER_NAME)]
    tls_server_name: String,
    /// Output format (Envoy reads either, by the file's extension).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Config files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Check them as Kubernetes-mode configs (the ConfigMap's zenvoy.yaml: services
    /// entries only override timeouts and limits).
    #[arg(long)]
    kubernetes: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The controller's admin address (controller.admin). Default: from --config, else
    /// 127.0.0.1:18001.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    admin: Option<String>,
    /// Read controller.admin from this config file (from `zenvoy run`'s addresses.json
    /// in its runDir when the port is 0).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Redraw until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// With --watch: how often.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check_files(&a),
        Command::EnvoyBootstrap(a) => envoy_bootstrap(a),
        Command::Run(a) => runtime().and_then(|rt| {
            let r = rt.block_on(run::run(run::Options {
                config: a.config,
                envoy: a.envoy,
                dir: a.dir,
            }));
            // Everything was stopped and waited for; what is left (a readiness probe's
            // blocking thread) must not hold the exit.
            rt.shutdown_timeout(Duration::from_secs(1));
            r.map(|()| ExitCode::SUCCESS)
        }),
        Command::Status(a) => runtime().and_then(|rt| rt.block_on(show_status(a))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zenvoy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn check_files(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mode = if a.kubernetes {
        Mode::Kubernetes
    } else {
        Mode::Process
    };
    let summary = check::check(
        a.files.as_slice(),
        mode,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )?;
    Ok(if summary.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn envoy_bootstrap(a: BootstrapArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (bootstrap::MIN_FLUSH..bootstrap::MAX_FLUSH).contains(&a.flush),
        "--flush {}: Envoy takes 1ms up to (not including) 300s",
        humantime::format_duration(a.flush)
    );
    // Envoy reads certificate files relative to its own working directory: absolute
    // paths make the bootstrap mean the same wherever Envoy starts.
    let absolute = |p: PathBuf| {
        std::path::absolute(&p).with_context(|| format!("{}: cannot make it absolute", p.display()))
    };
    let tls = match (a.tls_ca, a.tls_cert, a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(bootstrap::Tls {
            ca: absolute(ca)?,
            cert: absolute(cert)?,
            key: absolute(key)?,
            server_name: a.tls_server_name,
        }),
        _ => None,
    };
    let b = bootstrap::build(&bootstrap::Options {
        node_id: a.node_id,
        controller: a.controller,
        admin: a.admin,
        flush: a.flush,
        push: !a.no_push,
        tls,
    });
    let mut text = match a.format {
        Format::Json => serde_json::to_string_pretty(&b)?,
        Format::Yaml => serde_norway::to_string(&b)?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The admin address `status` asks: --admin, else --config's controller.admin (or the
/// bound one `zenvoy run` wrote, when that has port 0), else the default.
fn admin_address(a: &StatusArgs) -> anyhow::Result<String> {
    if let Some(admin) = &a.admin {
        return Ok(admin.clone());
    }
    let Some(path) = &a.config else {
        return Ok(DEFAULT_CONTROLLER_ADMIN.to_string());
    };
    let config =
        Config::load(path).with_context(|| format!("{}: invalid configuration", path.display()))?;
    let admin = zenvoy::reachable(config.controller.admin);
    if admin.port() != 0 {
        return Ok(admin.to_string());
    }
    let file = config.run_dir.join(run::ADDRESSES_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "{}: controller.admin has port 0 and {} (written by a running `zenvoy run`) \
             cannot be read; pass --admin",
            path.display(),
            file.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    v["controller"]["admin"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{}: no controller.admin", file.display()))
}

async fn show_status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let admin = admin_address(&a)?;
    let client = status::client(Duration::from_secs(5))?;
    if !a.watch {
        let s = status::fetch(&client, &admin).await?;
        print!("{}", status::render(&s));
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        a.interval >= Duration::from_millis(10),
        "--interval {}: at least 10ms",
        humantime::format_duration(a.interval)
    );
    // Listened for from the start, so a Ctrl-C during a fetch is not lost.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let tty = std::io::stdout().is_terminal();
    loop {
        let fetched = tokio::select! {
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            r = status::fetch(&client, &admin) => r,
        };
        let body = match fetched {
            Ok(s) => status::render(&s),
            Err(e) => format!("{e}\n"),
        };
        let mut frame = String::new();
        // A terminal is redrawn in place; a pipe gets frames one after the other.
        frame.push_str(if tty { "\x1b[H\x1b[2J" } else { "\n" });
        frame.push_str(&format!(
            "zenvoy status {admin}, every {}, {} (Ctrl-C to stop)\n\n{body}",
            humantime::format_duration(a.interval),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        ));
        let mut out = std::io::stdout().lock();
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(a.interval) => {}
        }
    }
}
