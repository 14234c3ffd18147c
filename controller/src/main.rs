//! `zenvoy-controller --config zenvoy.yaml`: parse config, start tracing, bind, run, drain.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use zenvoy_controller::config::Config;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "zenvoy controller: xDS + activity windows + scale to zero"
)]
struct Args {
    /// The YAML config file.
    #[arg(long, short, env = "ZENVOY_CONFIG")]
    config: PathBuf,
    /// Write the bound addresses here as JSON ({"grpc": "...", "admin": "..."}) once
    /// listening; useful with port 0.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// How often the config file is read again; a change to services' timeouts and
    /// limits applies without a restart (anything else is rejected and logged).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    reload_interval: std::time::Duration,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ZENVOY_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let config = Config::load(&args.config).with_context(|| "invalid configuration")?;
    let grpc = TcpListener::bind(config.controller.listen)
        .await
        .with_context(|| format!("binding controller.listen {}", config.controller.listen))?;
    let admin = TcpListener::bind(config.controller.admin)
        .await
        .with_context(|| format!("binding controller.admin {}", config.controller.admin))?;
    if let Some(path) = &args.address_file {
        let json = serde_json::json!({
            "grpc": grpc.local_addr()?.to_string(),
            "admin": admin.local_addr()?.to_string(),
        });
        write_atomically(path, &json.to_string())?;
    }
    let reload = zenvoy_controller::reload::Reload {
        path: args.config.clone(),
        interval: args.reload_interval,
    };
    zenvoy_controller::run(config, Some(reload), grpc, admin, shutdown_signal()).await?;
    Ok(())
}

fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
