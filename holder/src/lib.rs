//! zenvoy-holder: keeps connections for parked services and relays them, zero-copy, once
//! the service is awake; then it is out of the data path.
//!
//! ```text
//!  Envoy --PROXY v2 (TLV 0xE0 = service)--> server --admit--> hold (per-service queue)
//!  proxy --per-service port---------------->   |                 |
//!  TPROXY --original destination----------->   |                 |  pending changed
//!                                              |                 v
//!                                              |               push --MetricsService--> controller
//!                                              |                 ^ endpoints
//!   upstream <--splice(2) relay-- relay <------+-- xds (ADS client, EDS) <-- controller
//! ```
//!
//! Pure cores: [`proxy_header`] (PROXY v2 parser), [`ingress`] (which service a connection
//! is for) and [`hold`]'s admission policy. The rest are adapters: sockets, the tonic
//! clients (both kept open by [`controllers`]), the admin HTTP server.
//!
//! Modules import one way, each only from those after it here (`lib.rs` itself wires
//! them together):
//!
//! ```text
//!  server -> hold, ingress, relay, telemetry
//!  xds    -> hold, controllers
//!  push   -> hold, controllers, telemetry
//!  hold   -> probe, queue        (the registry of every service's hold queue)
//!  probe  -> queue               (watches one queue's dial address)
//!  ingress -> proxy_header
//!  relay  -> sys
//!  admin, controllers, telemetry, queue, proxy_header, sys: nothing of the crate
//! ```

pub mod admin;
pub mod controllers;
pub mod hold;
pub mod ingress;
pub mod probe;
pub mod proxy_header;
pub mod push;
mod queue;
pub mod relay;
pub mod server;
pub mod sys;
pub mod telemetry;
pub mod xds;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use controllers::Controllers;
pub use hold::Limits;
pub use ingress::Ingress;
pub use server::Timeouts;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Controller gRPC URLs, e.g. `http://127.0.0.1:18000`: several replicas are tried
    /// in turn on each reconnect (only the leader serves).
    pub controllers: Vec<String>,
    /// mTLS towards the controllers (URLs then `https://`).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub node_id: String,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Push pending counts to the controller (the fast path). Off: the controller must
    /// scrape `/metrics` instead.
    pub push: bool,
}

/// Run the holder on bound listeners (each with the way its connections name their
/// service) until `shutdown`, then drain.
pub async fn run(
    settings: Settings,
    listeners: Vec<(TcpListener, Ingress)>,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(telemetry::Metrics::register(&mut registry));
    let hold = hold::Hold::new(settings.limits);
    hold.register(&mut registry);
    let registry = Arc::new(registry);
    let node = Node {
        id: settings.node_id.clone(),
        cluster: "zenvoy-holder".to_string(),
        ..Default::default()
    };
    let controllers = Arc::new(Controllers {
        urls: settings.controllers.clone(),
        tls: settings.tls.clone(),
    });
    let xds = tokio::spawn(xds::run(controllers.clone(), node.clone(), hold.clone()));
    let push = settings
        .push
        .then(|| tokio::spawn(push::run(controllers, node, hold.clone(), metrics.clone())));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = server::Server::new(hold, metrics, settings.timeouts);
    let serving = server.run(listeners, stopped());
    let admin_task = tokio::spawn(admin::serve(admin, registry, stopped()));
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::join!(serving, stopper);
    xds.abort();
    if let Some(p) = push {
        p.abort();
    }
    match admin_task.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Pending connections the kernel queues per listener before the holder accepts them.
/// tokio's `TcpListener::bind` asks for 128, which a burst of clients arriving at a
/// parked service overflows (each overflow costs a client a SYN retry, a second or more);
/// Linux caps this at `net.core.somaxconn` (4096 by default).
pub const BACKLOG: i32 = 4096;

/// Bind a listener with [`BACKLOG`]. `transparent`: set `IP_TRANSPARENT` first, so it
/// accepts connections a TPROXY rule diverts to it, whatever address they were for (that
/// address is the accepted socket's local address); needs CAP_NET_ADMIN. socket2 provides
/// the socket options, so the holder has no unsafe code of its own.
pub fn bind(addr: SocketAddr, transparent: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if transparent {
        let set = match addr {
            SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
            SocketAddr::V6(_) => socket.set_ip_transparent_v6(true),
        };
        set.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("setting IP_TRANSPARENT (needs CAP_NET_ADMIN): {e}"),
            )
        })?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Each held connection is one descriptor and each relay five more (the upstream socket
/// and two pipes): raise the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does
/// for every program, so the holder is not stopped at the common soft default of 1024.
pub fn raise_nofile(max_pending_total: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                info!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(e) => {
                warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => {
            info!(limit = soft, "open-file limit");
            soft
        }
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit");
            return;
        }
    };
    // Held connections take one descriptor each; relays need five more each while
    // they run. Below this the hold queue itself cannot fill (new clients wait in the
    // kernel's accept queue); above it, relays of a full queue may wait their turn for
    // descriptors, which loses nothing (README: file descriptors).
    let want = (max_pending_total as u64).saturating_add(256);
    if limit < want {
        warn!(
            limit,
            max_pending_total,
            wanted = want,
            "open-file limit below --max-pending-total + 256: the hold queue cannot fill"
        );
    }
}
