//! Transparent mode with the real binaries, in network namespaces. A client in its own
//! namespace connects to a service's virtual address; in the server's namespace an nft
//! TPROXY rule diverts the connection to the holder's IP_TRANSPARENT listener, which names
//! the service from the original destination, holds the connection while the controller
//! wakes the upstream, and relays it byte-exact. A destination no `--transparent-service`
//! names is refused at once.
//!
//! ```text
//!  client ns                  server ns
//!  test --> 10.96.0.10:5432 --veth--> nft tproxy --> holder :T (transparent) --splice--> echo
//!                                                      | pushes pending, ADS         (woken)
//!                                                      +------- controller ----------+
//! ```
//!
//! Needs root, `ip` and `nft`: skipped with the reason otherwise, and a failure instead
//! under `ZENVOY_REQUIRE_PRIVILEGED=1`.

use std::net::SocketAddr;
use std::time::Duration;

use zenvoy_e2e::holder_client::{closed_within, echo_pattern};
use zenvoy_e2e::stack::{
    addr, address_file, config_yaml, spawn_controller, Gate, Options, ServiceSpec,
};
use zenvoy_test_support::netns::{self, Netns};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, metric_value, wait};

const BOUND: Duration = Duration::from_secs(10);
/// "At once": far below the 30 s holdTimeout, far above a round trip over a veth.
const AT_ONCE: Duration = Duration::from_secs(2);

const SERVER_CIDR: &str = "10.77.0.1/24";
const CLIENT_CIDR: &str = "10.77.0.2/24";
const GATEWAY: &str = "10.77.0.1";
/// The service's address as its clients know it (a ClusterIP, say). Nothing listens there:
/// the TPROXY rule diverts it to the holder.
const SERVICE: &str = "10.96.0.10:5432";
/// Diverted by the same rule but named by no `--transparent-service`: the mapped address on
/// another port, the mapped port on another address.
const UNMAPPED: [&str; 2] = ["10.96.0.10:5433", "10.96.0.11:5432"];

/// Both virtual addresses on both ports go to the holder's transparent listener; the mark
/// routes the packets to the local stack (policy route below).
fn tproxy_rules(port: u16) -> String {
    format!(
        "table ip zenvoy {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    ip daddr {{ 10.96.0.10, 10.96.0.11 }} tcp dport {{ 5432, 5433 }} tproxy to :{port} meta mark set 1 accept
  }}
}}
"
    )
}

fn pending(service: &str) -> String {
    format!("zenvoy_holder_pending{{service=\"{service}\"}}")
}

fn relayed(service: &str) -> String {
    format!("zenvoy_holder_relayed_total{{service=\"{service}\"}}")
}

fn refused(reason: &str) -> String {
    format!("zenvoy_holder_refused_total{{reason=\"{reason}\"}}")
}

fn parse(addr: &str) -> SocketAddr {
    addr.parse().expect("a socket address constant")
}

/// Controller and holder in the server namespace, a client namespace routed through it.
/// Drop order is field order: the holder, the controller (which stops the echo it
/// started), the gate, then the namespaces, empty by then, and the directory.
struct World {
    holder: Proc,
    controller: Proc,
    holder_admin: SocketAddr,
    /// Until the test opens it, the echo service cannot come up.
    gate: Gate,
    server: Netns,
    client: Netns,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> anyhow::Result<World> {
        let dir = tempfile::Builder::new()
            .prefix("zenvoy-transparent-")
            .tempdir()?;
        let d = dir.path();
        let server = Netns::new("srv")?;
        let client = Netns::new("cli")?;
        netns::link(&server, SERVER_CIDR, &client, CLIENT_CIDR)?;
        client.ip(&format!("route add default via {GATEWAY}"))?;

        // The echo waits at a gate (not listening, whatever the controller does) until
        // the test opens it. Inside a fresh namespace every port is free, so the port
        // `gated_echo` picked in the test's namespace is free there too.
        let (echo, gate) = ServiceSpec::gated_echo("echo", d)?;
        // Relayed connections bypass Envoy (there is none here), so the controller sees no
        // activity: a short idleTimeout would park the service mid-relay.
        let echo = echo.with("idleTimeout: 10m");
        let opts = Options {
            services: vec![echo],
            ..Options::default()
        };
        // The holder address is the parked endpoint the controller gives Envoy; no Envoy
        // here, and the holder tells its own endpoint by metadata, not by address.
        let config = d.join("zenvoy.yaml");
        std::fs::write(&config, config_yaml(&opts, parse("127.0.0.1:15001"), None))?;
        let log_level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let (controller, grpc, _) =
            spawn_controller(server.command(bin("zenvoy-controller")?), &config, d).await?;

        let mut cmd = server.command(bin("zenvoy-holder")?);
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--node-id", "holder-1"])
            .arg("--controller")
            .arg(format!("http://{grpc}"))
            .args(["--transparent", "0.0.0.0:0"])
            .arg("--transparent-service")
            .arg(format!("echo={SERVICE}"))
            .arg("--address-file")
            .arg(d.join("holder.json"))
            .env("RUST_LOG", &log_level);
        let mut holder = Proc::spawn("holder", cmd, Some(&d.join("holder.log")))?;
        let h = address_file("holder address file", &d.join("holder.json"), &mut holder).await?;
        let holder_admin = addr(&h, "admin")?;
        let transparent = addr(&h, "transparent")?;

        // What makes the diverted packets local: marked by the rule, routed by table 100.
        server.nft(&tproxy_rules(transparent.port()))?;
        server.ip("rule add fwmark 1 lookup 100")?;
        server.ip("route add local 0.0.0.0/0 dev lo table 100")?;

        Ok(World {
            holder,
            controller,
            holder_admin,
            gate,
            server,
            client,
            _dir: dir,
        })
    }

    /// Let the echo service start.
    fn open_gate(&self) -> std::io::Result<()> {
        self.gate.open()
    }

    /// One series from the holder's `/metrics`, read inside the server namespace; absent
    /// reads as 0.
    async fn metric(&self, series: &str) -> f64 {
        self.server
            .http_get(self.holder_admin, "/metrics", BOUND)
            .await
            .map(|page| metric_value(&page, series).unwrap_or(0.0))
            .unwrap_or_else(|e| panic!("{series}: {e:#}\n{}", self.logs()))
    }

    async fn wait_metric(&self, series: &str, want: f64) {
        let what = format!("{series} to be {want}");
        wait::until(&what, BOUND, || async {
            let page = self
                .server
                .http_get(self.holder_admin, "/metrics", BOUND)
                .await?;
            let v = metric_value(&page, series).unwrap_or(0.0);
            anyhow::ensure!(v == want, "it is {v}");
            Ok(Some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    async fn connect(&self, dest: &str) -> tokio::net::TcpStream {
        self.client
            .connect(parse(dest), BOUND)
            .await
            .unwrap_or_else(|e| panic!("connect to {dest} from the client namespace: {e:#}"))
    }

    fn logs(&self) -> String {
        format!(
            "{}{}",
            self.controller.log_tail(40),
            self.holder.log_tail(40)
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // ZENVOY_E2E_LOGS=1 prints them for a passing test too.
        if std::thread::panicking() || std::env::var_os("ZENVOY_E2E_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_mode_holds_by_original_destination_and_relays_byte_exact() {
    if !netns::available("transparent mode") {
        return;
    }
    let w = World::start()
        .await
        .expect("namespaces, controller and holder");

    // Diverted to the holder like the service, but no service is there: closed at once,
    // counted (before the close, so visible now), nothing held.
    for (i, dest) in UNMAPPED.iter().enumerate() {
        let mut c = w.connect(dest).await;
        closed_within(&mut c, AT_ONCE)
            .await
            .unwrap_or_else(|e| panic!("connection to {dest}: {e}\n{}", w.logs()));
        assert_eq!(
            w.metric(&refused("unknown_destination")).await,
            (i + 1) as f64,
            "{dest} counted as unknown_destination"
        );
    }
    assert_eq!(w.metric(&pending("echo")).await, 0.0, "nothing held");

    // The service's address: 1 MiB and a FIN sent at once, while the service cannot be up
    // (its gate is shut). The holder holds it under the name its destination maps to.
    const LEN: u64 = 1 << 20;
    let c = w.connect(SERVICE).await;
    let echo = tokio::spawn(echo_pattern(c, 11, LEN));
    w.wait_metric(&pending("echo"), 1.0).await;
    assert!(!echo.is_finished(), "no echo before the service is up");

    w.open_gate()
        .unwrap_or_else(|e| panic!("writing the gate: {e}"));
    tokio::time::timeout(BOUND, echo)
        .await
        .unwrap_or_else(|_| panic!("no full echo within {BOUND:?}\n{}", w.logs()))
        .expect("echo task")
        .unwrap_or_else(|e| panic!("echo: {e:#}\n{}", w.logs()));
    w.wait_metric(&relayed("echo"), 1.0).await;
    assert_eq!(w.metric(&pending("echo")).await, 0.0);
    assert_eq!(
        w.metric(&refused("unknown_destination")).await,
        UNMAPPED.len() as f64,
        "the service's connection was not refused"
    );
}
