//! `zenvoy-holder`: parse flags, start tracing, bind, run, drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::info;
use zenvoy_holder::ingress::{check_service_ports, DestinationMap, InvalidIngress, ServiceAddr};
use zenvoy_holder::{Ingress, Limits, Settings, Timeouts};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "zenvoy holder: keeps connections for parked services, relays with splice(2)"
)]
struct Args {
    /// Where Envoy sends held connections (PROXY v2 with the service TLV 0xE0).
    #[arg(long, default_value = "127.0.0.1:15001")]
    listen: SocketAddr,
    /// A listener of its own for one service, for proxies that cannot send a PROXY v2
    /// TLV: NAME=ADDR (repeatable). Its connections carry no header.
    #[arg(long = "service-port", value_name = "NAME=ADDR")]
    service_ports: Vec<ServiceAddr>,
    /// Transparent mode: an IP_TRANSPARENT listener fed by a TPROXY rule; a connection's
    /// original destination names its service (see --transparent-service). Needs
    /// CAP_NET_ADMIN.
    #[arg(long, value_name = "ADDR")]
    transparent: Option<SocketAddr>,
    /// Original destination -> service for --transparent: NAME=IP:PORT (repeatable).
    /// Connections to other destinations are refused (reason unknown_destination).
    #[arg(long = "transparent-service", value_name = "NAME=IP:PORT")]
    transparent_services: Vec<ServiceAddr>,
    /// Admin HTTP address: /metrics, /healthz.
    #[arg(long, default_value = "127.0.0.1:15002")]
    admin: SocketAddr,
    /// Controller gRPC URL (ADS and MetricsService). Repeat it, or separate with commas,
    /// for several controller replicas: each reconnect tries the next one, and only the
    /// leader accepts.
    #[arg(long, default_value = "http://127.0.0.1:18000", value_delimiter = ',')]
    controller: Vec<String>,
    /// Node id this holder uses towards the controller.
    #[arg(long, default_value = "zenvoy-holder")]
    node_id: String,
    /// How long a connection is held before it is closed.
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    hold_timeout: Duration,
    /// A PROXY header must arrive within this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Dial timeout per upstream endpoint.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// On SIGTERM, the holder stops accepting; connections still held and relays in
    /// progress get this long to finish (held ones are relayed when their service wakes,
    /// or closed at their holdTimeout). Default: the default holdTimeout and 15 s more.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Held connections per service; more are refused at once.
    #[arg(long, default_value_t = 1000)]
    max_pending: usize,
    /// Held connections in total; more are refused at once.
    #[arg(long, default_value_t = 10000)]
    max_pending_total: usize,
    /// Distinct services tracked.
    #[arg(long, default_value_t = 10000)]
    max_services: usize,
    /// Do not push pending counts to the controller; it scrapes `/metrics` instead
    /// (slower detection: one scrape interval).
    #[arg(long)]
    no_push: bool,
    /// mTLS to the controller: the CA its certificate must chain to (PEM). With it,
    /// `--tls-cert` and `--tls-key` are required and the `--controller` URLs are https.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This holder's client certificate (PEM); it must name `--node-id`.
    #[arg(long, value_name = "PEM", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// The name the controller's certificate must carry.
    #[arg(long, default_value = "zenvoy-controller")]
    tls_server_name: String,
    /// Write the bound addresses here as JSON: {"listen": ADDR, "admin": ADDR,
    /// "service_ports": {NAME: ADDR}, "transparent": ADDR or null}.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ZENVOY_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    zenvoy_holder::raise_nofile(args.max_pending_total);
    let listeners = bind(&args)?;
    for (l, ingress) in &listeners {
        info!(address = ?l.local_addr().ok(), ingress = ingress.kind(), "listening");
    }
    let admin = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding --admin {}", args.admin))?;
    if let Some(path) = &args.address_file {
        write_addresses(path, &listeners, &admin)?;
    }
    let tls = client_tls(&args)?;
    let settings = Settings {
        controllers: args.controller,
        node_id: args.node_id,
        limits: Limits {
            max_pending_per_service: args.max_pending,
            max_pending_total: args.max_pending_total,
            max_services: args.max_services,
        },
        push: !args.no_push,
        tls,
        timeouts: Timeouts {
            header: args.header_timeout,
            hold: args.hold_timeout,
            connect: args.connect_timeout,
            drain: args.drain_timeout,
        },
    };
    zenvoy_holder::run(settings, listeners, admin, zenvoy_base::shutdown_signal()).await?;
    Ok(())
}

/// Check the ingress flags together, then bind every listener.
fn bind(args: &Args) -> anyhow::Result<Vec<(TcpListener, Ingress)>> {
    check_service_ports(&args.service_ports)?;
    let map = DestinationMap::try_new(&args.transparent_services)?;
    match (args.transparent, map.is_empty()) {
        (None, false) => return Err(InvalidIngress::MapWithoutListener.into()),
        (Some(_), true) => return Err(InvalidIngress::ListenerWithoutMap.into()),
        _ => {}
    }
    let mut listeners = Vec::new();
    let listen = zenvoy_holder::bind(args.listen, false)
        .with_context(|| format!("binding --listen {}", args.listen))?;
    listeners.push((listen, Ingress::Proxy));
    for p in &args.service_ports {
        let l = zenvoy_holder::bind(p.addr, false)
            .with_context(|| format!("binding --service-port {}={}", p.service, p.addr))?;
        listeners.push((l, Ingress::Port(p.service.as_str().into())));
    }
    if let Some(addr) = args.transparent {
        let l = zenvoy_holder::bind(addr, true)
            .with_context(|| format!("binding --transparent {addr}"))?;
        listeners.push((l, Ingress::Transparent(map.into())));
    }
    Ok(listeners)
}

fn write_addresses(
    path: &std::path::Path,
    listeners: &[(TcpListener, Ingress)],
    admin: &TcpListener,
) -> anyhow::Result<()> {
    let mut json = serde_json::json!({
        "admin": admin.local_addr()?.to_string(),
        "service_ports": {},
        "transparent": null,
    });
    for (l, ingress) in listeners {
        let addr = l.local_addr()?.to_string();
        match ingress {
            Ingress::Proxy => json["listen"] = addr.into(),
            Ingress::Port(service) => json["service_ports"][&**service] = addr.into(),
            Ingress::Transparent(_) => json["transparent"] = addr.into(),
        }
    }
    zenvoy_base::write_atomically(path, json.to_string().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The client side of mTLS from the `--tls-*` flags, every file read now (an unreadable
/// one is an error naming its flag, not a failure at the first connection).
fn client_tls(args: &Args) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |flag: &str, p: &PathBuf| {
        std::fs::read(p).with_context(|| format!("{flag} {}: cannot read it", p.display()))
    };
    Ok(Some(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                "--tls-ca", ca,
            )?))
            .identity(tonic::transport::Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            ))
            .domain_name(args.tls_server_name.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        let args = Args::parse_from(["zenvoy-holder"]);
        let limits = Limits {
            max_pending_per_service: args.max_pending,
            max_pending_total: args.max_pending_total,
            max_services: args.max_services,
        };
        let timeouts = Timeouts {
            header: args.header_timeout,
            hold: args.hold_timeout,
            connect: args.connect_timeout,
            drain: args.drain_timeout,
        };
        assert_eq!(limits, Limits::default());
        assert_eq!(timeouts, Timeouts::default());
    }
}
