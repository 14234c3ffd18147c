//! `make run`: the whole stack on this machine, no cluster. Starts the controller with
//! `examples/local.yaml` (fixed ports: Envoy listener 127.0.0.1:10000), the holder and
//! Envoy, prints what to try, and stops everything on Ctrl-C.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Parser;
use zenvoy_tests::envoy::{self, Envoy};
use zenvoy_tests::process::Proc;
use zenvoy_tests::{bin, workspace_root};

#[derive(Debug, Parser)]
struct Args {
    /// The controller config (its `controller.listen` and `holder.address` are used to
    /// wire up the holder and Envoy).
    #[arg(long, default_value = "examples/local.yaml")]
    config: PathBuf,
    /// Envoy admin port.
    #[arg(long, default_value_t = 9901)]
    envoy_admin: u16,
    /// Where logs and generated files go.
    #[arg(long, default_value = "run")]
    dir: PathBuf,
}

fn yaml_value(text: &str, section: &str, key: &str) -> Option<String> {
    // The launcher only needs two addresses; the controller validates the whole file.
    let mut in_section = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_section = line.trim_end() == format!("{section}:");
            continue;
        }
        if in_section {
            if let Some(v) = line.trim().strip_prefix(&format!("{key}:")) {
                return Some(v.split('#').next()?.trim().to_string());
            }
        }
    }
    None
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    let config = root.join(&args.config);
    let dir = root.join(&args.dir);
    std::fs::create_dir_all(&dir)?;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let grpc =
        yaml_value(&text, "controller", "listen").unwrap_or_else(|| "127.0.0.1:18000".into());
    let holder = yaml_value(&text, "holder", "address").unwrap_or_else(|| "127.0.0.1:15001".into());

    let mut cmd = Command::new(bin("zenvoy-controller")?);
    cmd.arg("--config").arg(&config).current_dir(&root);
    let mut controller = Proc::spawn("controller", cmd, None)?;
    let mut cmd = Command::new(bin("zenvoy-holder")?);
    cmd.args([
        "--listen",
        &holder,
        "--admin",
        "127.0.0.1:15002",
        "--node-id",
        "holder-local",
    ])
    .arg("--controller")
    .arg(format!("http://{grpc}"));
    let _holder = Proc::spawn("holder", cmd, None)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    if let Some(status) = controller.exited() {
        anyhow::bail!("controller exited at start: {status}");
    }
    let boot = envoy::bootstrap(
        "envoy-local",
        grpc.parse()?,
        args.envoy_admin,
        std::time::Duration::from_secs(1),
    );
    let envoy = Envoy::start(&dir, "envoy", &boot, Some(&dir.join("envoy.log"))).await?;
    println!();
    println!(
        "zenvoy is running (Envoy admin http://{}, log {}).",
        envoy.admin,
        dir.join("envoy.log").display()
    );
    println!("Try:  curl http://127.0.0.1:10000/     # wakes the example service");
    println!("      curl -H 'Host: echo' http://127.0.0.1:10000/");
    println!(
        "It parks again after its idleTimeout (15s in {}). Ctrl-C stops everything.",
        args.config.display()
    );
    // Ctrl-C, or SIGTERM (`timeout`, `kill`, a supervisor): either way the processes this
    // started are stopped by their guards on the way out, not orphaned.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping");
    Ok(())
}
