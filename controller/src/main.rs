//! `zenvoy-controller --config zenvoy.yaml`: parse config, start tracing, bind, run, drain.
//! With `--kubernetes`, the same around the Kubernetes mode, whose wiring is here: its
//! parts are adapters under `backend::kubernetes`, below the `Controller` that serves them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zenvoy_base::shutdown_signal;
use zenvoy_controller::backend::kubernetes::{
    backend, configmap, discovery, endpoints, events, leader, port_store, ports, slices,
};
use zenvoy_controller::{Controller, RunError};
use zenvoy_core::config::Config;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "zenvoy controller: xDS + activity windows + scale to zero"
)]
struct Args {
    /// The YAML config file (process backend: local commands).
    #[arg(
        long,
        short,
        env = "ZENVOY_CONFIG",
        required_unless_present = "kubernetes"
    )]
    config: Option<PathBuf>,
    /// Kubernetes mode: the ConfigMap (`namespace/name`, key `zenvoy.yaml`) holding the
    /// config. The API is reached in-cluster or through KUBECONFIG.
    #[arg(
        long,
        env = "ZENVOY_CONFIGMAP",
        conflicts_with = "config",
        value_name = "NAMESPACE/NAME"
    )]
    kubernetes: Option<String>,
    /// Kubernetes mode: a namespace whose Services may opt in (repeat, or separate with
    /// commas); all namespaces when none is given.
    #[arg(long = "namespace", env = "ZENVOY_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Kubernetes mode: the Lease (`namespace/name`) for leader election; default
    /// `zenvoy-controller` in the ConfigMap's namespace.
    #[arg(long, env = "ZENVOY_LEASE", value_name = "NAMESPACE/NAME")]
    lease: Option<String>,
    /// Kubernetes mode: how long a Lease holds without renewal; a new leader takes over
    /// within this after the old one dies (at once after a clean stop).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: std::time::Duration,
    /// Kubernetes mode: this replica's identity in the Lease and its Events; default the
    /// host name (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Write the bound addresses here as JSON ({"grpc": "...", "admin": "..."}) once
    /// listening; useful with port 0.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// How often the config file is read again; a change to services' timeouts and
    /// limits applies without a restart (anything else is rejected and logged).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    reload_interval: std::time::Duration,
    /// Listen here for gRPC (ADS, MetricsService) instead of `controller.listen`, e.g.
    /// when several replicas share one config on one host.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// Serve /metrics, /healthz, /readyz, /status here instead of `controller.admin`.
    #[arg(long, value_name = "IP:PORT")]
    admin: Option<std::net::SocketAddr>,
    /// Where the process backend keeps what runs (pid and start time per service), so a
    /// controller restarted after a crash adopts the processes it left running instead
    /// of starting second ones. Default: `state.json` in the config's `runDir`.
    #[arg(long, env = "ZENVOY_STATE_FILE", value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ZENVOY_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    if let Some(cm) = &args.kubernetes {
        return kubernetes(&args, cm).await;
    }
    let Some(path) = &args.config else {
        anyhow::bail!("one of --config or --kubernetes is required");
    };
    let config = Config::load(path).with_context(|| "invalid configuration")?;
    let (grpc, admin) = bind(&config, &args).await?;
    let reload = zenvoy_controller::reload::Reload {
        path: path.clone(),
        interval: args.reload_interval,
    };
    for w in config.warnings() {
        tracing::warn!(warning = %w, "config");
    }
    let state = match args.state_file.clone() {
        Some(p) => p,
        None => default_state_file(&config, path),
    };
    zenvoy_controller::run(
        config,
        Some(reload),
        Some(state),
        grpc,
        admin,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// `<runDir>/state.json`; a state file where releases before `runDir` kept it
/// (`<config>.state`) is moved there first, so an upgrade still adopts what runs.
fn default_state_file(config: &Config, config_path: &std::path::Path) -> PathBuf {
    let state = config.state_file();
    let mut legacy = config_path.to_path_buf().into_os_string();
    legacy.push(".state");
    let legacy = PathBuf::from(legacy);
    if !state.exists() && legacy.exists() {
        let moved = state
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::rename(&legacy, &state));
        match moved {
            Ok(()) => {
                tracing::info!(from = %legacy.display(), to = %state.display(), "moved the state file")
            }
            Err(e) => {
                tracing::warn!(path = %legacy.display(), error = %e, "cannot move the old state file; reading it where it is");
                return legacy;
            }
        }
    }
    state
}

/// `namespace/name`, both non-empty.
fn object_ref(flag: &str, v: &str) -> anyhow::Result<(String, String)> {
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => anyhow::bail!("{flag} {v:?}: expected namespace/name"),
    }
}

async fn kubernetes(args: &Args, cm: &str) -> anyhow::Result<()> {
    let (namespace, name) = object_ref("--kubernetes", cm)?;
    let (lease_ns, lease_name) = match &args.lease {
        Some(l) => object_ref("--lease", l)?,
        None => (namespace.clone(), "zenvoy-controller".to_string()),
    };
    let identity = match &args.identity {
        Some(i) => i.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .map_or_else(
                || format!("zenvoy-{}", std::process::id()),
                |h| format!("{h}-{}", std::process::id()),
            ),
    };
    if args.lease_duration < std::time::Duration::from_secs(2) {
        anyhow::bail!(
            "--lease-duration {:?}: must be at least 2s",
            args.lease_duration
        );
    }
    let client = kube::Client::try_default()
        .await
        .with_context(|| "cannot build a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let source = configmap::Source { namespace, name };
    let (text, config) = configmap::load(&client, &source, std::time::Duration::from_secs(60))
        .await
        .with_context(|| "invalid configuration")?;
    let (grpc, admin) = bind(&config, args).await?;
    let options = Options {
        config_map: source,
        namespaces: args.namespaces.clone(),
        lease: leader::LeaseConfig {
            namespace: lease_ns,
            name: lease_name,
            identity,
            duration: args.lease_duration,
        },
    };
    run_kubernetes(
        client,
        options,
        text,
        config,
        grpc,
        admin,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// What `--kubernetes` and the flags beside it say.
#[derive(Debug, Clone)]
struct Options {
    config_map: configmap::Source,
    /// Namespaces whose Services may opt in; all when empty.
    namespaces: Vec<String>,
    lease: leader::LeaseConfig,
}

/// Run the controller in Kubernetes mode with the config `text` read from the ConfigMap
/// (see [`configmap::load`]) until `shutdown`. The wiring of the mode is the binary's: the
/// parts it starts are backend adapters, below the [`Controller`] it builds.
async fn run_kubernetes(
    client: Client,
    options: Options,
    text: String,
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (leader_tx, leader_rx) = watch::channel(false);
    // Only the leader serves streams: its state is the one driven by the stats, so
    // every Envoy and holder must push to it (followers refuse; clients retry). The
    // gate opens once a new leader's runtime knows what runs (discovery opens it).
    let (serving_tx, serving_rx) = watch::channel(false);
    let controller = Controller::new().with_gate(serving_rx.clone());
    let targets = endpoints::Targets::default();
    let (events, events_task) =
        events::Events::start(client.clone(), &options.lease.identity, leader_rx.clone());
    let (endpoints, mut tasks) = endpoints::start(
        &client,
        &options.namespaces,
        targets.clone(),
        controller.events.clone(),
        || controller.stopped(),
    );
    tasks.push(tokio::spawn(leader::run(
        client.clone(),
        options.lease.clone(),
        leader_tx,
        controller.metrics.clone(),
        controller.stopped(),
    )));
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    tasks.push(tokio::spawn(configmap::watch(
        client.clone(),
        options.config_map.clone(),
        text,
        config_tx,
        events.clone(),
        controller.metrics.clone(),
        controller.stopped(),
    )));
    // inCluster: every Service port keeps the proxy port it had (read back from the
    // zenvoy-ports ConfigMap, or from the slices an older controller kept) before any is
    // allocated; the ConfigMap and the slices are written by the leader.
    let in_cluster = match &config.in_cluster {
        Some(ic) => {
            let mut ports = ports::Ports::new(ic.ports);
            let stored = port_store::load(&client, &options.config_map.namespace).await;
            let known: std::collections::HashSet<String> =
                stored.iter().map(|(s, _)| s.clone()).collect();
            let mut loaded = stored;
            let older = slices::load(&client, &options.namespaces).await;
            loaded.extend(older.into_iter().filter(|(s, _)| !known.contains(s)));
            for service in ports.load(loaded) {
                tracing::warn!(%service, "inCluster: its stored port is outside inCluster.ports or taken; it gets a new one");
            }
            let (store, store_task) = port_store::PortStore::start(
                client.clone(),
                options.config_map.namespace.clone(),
                ports.all(),
                serving_rx.clone(),
                controller.stopped(),
            );
            tasks.push(store_task);
            let (slices, slice_tasks) = slices::Slices::start(
                client.clone(),
                (ic.proxy_namespace.clone(), ic.proxy_service.clone()),
                targets.clone(),
                controller.events.clone(),
                serving_rx.clone(),
                || controller.stopped(),
            );
            tasks.extend(slice_tasks);
            Some((ports, store, slices))
        }
        None => None,
    };
    let (ports, port_store, slices) = match in_cluster {
        Some((p, st, s)) => (Some(p), Some(st), Some(s)),
        None => (None, None, None),
    };
    let discovery = discovery::Discovery {
        client: client.clone(),
        namespaces: options.namespaces.clone(),
        targets: targets.clone(),
        runtime: controller.events.clone(),
        events: events.clone(),
        config: config_rx,
        leader: leader_rx.clone(),
        serving: serving_tx,
        ports,
        port_store,
    };
    tasks.push(tokio::spawn(discovery.run(controller.stopped())));
    tasks.push(events_task);
    // The backend scales only while serving, not merely leading: a replica just promoted
    // must first learn what runs (a park its follower runtime decided must not go out).
    let mut backend = backend::KubeBackend::new(
        client,
        targets,
        endpoints,
        serving_rx,
        events,
        controller.metrics.clone(),
    );
    if let Some(slices) = slices {
        backend = backend.with_slices(slices);
    }
    let backend = Arc::new(backend);
    controller
        .serve(config, backend, grpc, admin, shutdown, tasks)
        .await
}

async fn bind(config: &Config, args: &Args) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listen = args.listen.unwrap_or(config.controller.listen);
    let admin = args.admin.unwrap_or(config.controller.admin);
    let grpc = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gRPC address {listen}"))?;
    let admin = TcpListener::bind(admin)
        .await
        .with_context(|| format!("binding the admin address {admin}"))?;
    if let Some(path) = &args.address_file {
        let json = serde_json::json!({
            "grpc": grpc.local_addr()?.to_string(),
            "admin": admin.local_addr()?.to_string(),
        });
        zenvoy_base::write_atomically(path, json.to_string().as_bytes())
            .with_context(|| format!("writing the address file {}", path.display()))?;
    }
    Ok((grpc, admin))
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
