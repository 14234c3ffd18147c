//! Network namespaces for tests that need their own addresses, routes and firewall rules
//! (transparent mode behind a TPROXY rule). Made with `ip netns`, removed when dropped.
//!
//! ```text
//!   client namespace                            server namespace
//!   test thread --setns--> socket               controller, holder, upstream
//!   zv0 10.77.0.2/24  <--------- veth -------->  zv0 10.77.0.1/24, nft rules, routes
//! ```
//!
//! Processes run inside with [`Netns::command`]. The test process itself stays in its own
//! namespace: a socket belongs for good to the namespace its creating thread was in, so
//! [`Netns::run`] makes sockets on a fresh thread that has entered the namespace and hands
//! them back ([`Netns::connect`] returns a tokio `TcpStream` usable anywhere).
//!
//! A test that plays a whole Kubernetes node instead runs its body with
//! [`Netns::block_on`]: the calling thread and every thread of a tokio runtime are inside,
//! so every socket the harness makes (the fake API server's, the kubelet's probes, the
//! test's own connections) and every process it starts (the controller, the holder, Envoy,
//! the pods) is in the namespace, with no `ip netns exec` and no change to the harness.
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2's `ip` and `nft`. A test calls
//! [`available`] first: it skips, saying why, where they are missing, and fails instead
//! under `ZENVOY_REQUIRE_PRIVILEGED=1`.

use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use tokio::net::TcpStream;

/// Set to `1` where the privileged tests must run: a missing privilege or tool then fails
/// them instead of skipping them.
pub const REQUIRE_ENV: &str = "ZENVOY_REQUIRE_PRIVILEGED";

/// The interface name of both ends of a [`link`]. Each end is made inside its namespace
/// and never exists in the host's, so the name cannot collide with anything.
pub const IFACE: &str = "zv0";

/// Where `ip netns add` mounts a namespace (iproute2's NETNS_RUN_DIR).
const RUN_DIR: &str = "/var/run/netns";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Run a tool to completion, `stdin` fed to it; the error names the command and carries
/// its stderr.
pub fn run_tool(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<()> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Dropping the pipe after the write is the tool's EOF.
        pipe.write_all(text.as_bytes())
            .map_err(|e| anyhow::anyhow!("{cmd:?}: writing its stdin: {e}"))?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Move the calling thread into the network namespace mounted at `path`. Only this
/// thread: a namespace is a per-thread attribute.
fn enter(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET)
        .map_err(|e| anyhow::anyhow!("setns({}, CLONE_NEWNET): {e}", path.display()))
}

/// A network namespace, `zt-<pid>-<n>-<tag>`, deleted when dropped. It starts with `lo`
/// up and nothing else. Deleting it also deletes its end of a veth pair, and with it the
/// pair; processes still inside keep it alive until they exit, so drop them first.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("zt-{}-{n}-{tag}", std::process::id());
        run_tool(Command::new("ip").args(["netns", "add", &name]), None)?;
        let ns = Netns { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file `setns(2)` opens.
    pub fn path(&self) -> PathBuf {
        Path::new(RUN_DIR).join(&self.name)
    }

    /// `ip -n NAME ARGS`: addresses, links, routes, rules. `args` is split on whitespace,
    /// so it reads as the command line would (`"route add default via 10.77.0.1"`).
    pub fn ip(&self, args: &str) -> anyhow::Result<()> {
        run_tool(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
            None,
        )
    }

    /// Load `ruleset` (what `nft -f` reads) into this namespace's nftables.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        run_tool(self.command("nft").args(["-f", "-"]), Some(ruleset))
    }

    /// A command running `program` inside this namespace: `ip netns exec NAME program`.
    /// ip execs the program, so the child's pid is the program's and signals reach it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Run `f` on a fresh thread that has entered this namespace (never a pooled thread:
    /// the namespace would stick to it). Sockets `f` makes stay in this namespace.
    pub async fn run<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let path = self.path();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("netns {}", self.name))
            .spawn(move || {
                let _ = tx.send(enter(&path).and_then(|()| f()));
            })?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the thread in netns {} panicked", self.name))?
    }

    /// Move the calling thread into this namespace until the guard is dropped, when it
    /// goes back to the namespace it was in. Threads it spawns meanwhile, and processes
    /// it starts, are inside too (they inherit the calling thread's namespace).
    pub fn enter_thread(&self) -> anyhow::Result<InNetns> {
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| anyhow::anyhow!("opening /proc/thread-self/ns/net: {e}"))?;
        enter(&self.path())?;
        Ok(InNetns {
            home,
            netns: self.name.clone(),
            _this_thread: PhantomData,
        })
    }

    /// Run `future` to completion on a multi-thread tokio runtime (`workers` worker
    /// threads) whose every thread, blocking pool included, is inside this namespace, as
    /// is the calling thread (which polls `future`) until it returns. The runtime is shut
    /// down before this returns: tasks still running are dropped, blocking ones are given
    /// 10 s. For a test that plays a node: `#[test]`, not `#[tokio::test]`.
    pub fn block_on<F: Future>(&self, workers: usize, future: F) -> anyhow::Result<F::Output> {
        let path = self.path();
        let ns = Arc::new(
            File::open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?,
        );
        let name = self.name.clone();
        let _inside = self.enter_thread()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .enable_all()
            .on_thread_start(move || {
                // Threads spawned from an entered thread inherit its namespace already;
                // this also covers any the runtime starts from elsewhere. setns(2) with an
                // open namespace file fails only without CAP_SYS_ADMIN, which `available`
                // has checked.
                if let Err(e) = setns(&*ns, CloneFlags::CLONE_NEWNET) {
                    panic!("a runtime thread cannot enter network namespace {name}: {e}");
                }
            })
            .build()
            .map_err(|e| anyhow::anyhow!("building a tokio runtime in netns {}: {e}", self.name))?;
        let out = runtime.block_on(future);
        runtime.shutdown_timeout(Duration::from_secs(10));
        Ok(out)
    }

    /// Open a TCP connection to `addr` from inside this namespace, within `timeout`.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
        let std = self
            .run(move || {
                let s = std::net::TcpStream::connect_timeout(&addr, timeout)
                    .map_err(|e| anyhow::anyhow!("connect to {addr}: {e}"))?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
        Ok(TcpStream::from_std(std)?)
    }

    /// `GET http://addr{path}` (HTTP/1.0: the server closes after the body) from inside
    /// this namespace, all of it within `timeout`; returns the body of a 200.
    pub async fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let url = format!("http://{addr}{path}");
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let get = self.run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.write_all(request.as_bytes())?;
            let mut response = Vec::new();
            s.read_to_end(&mut response)?;
            Ok(String::from_utf8(response)?)
        });
        let response = tokio::time::timeout(timeout, get)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "GET {url} in netns {}: no answer within {timeout:?}",
                    self.name
                )
            })?
            .map_err(|e| anyhow::anyhow!("GET {url} in netns {}: {e:#}", self.name))?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("GET {url}: no end of headers in {response:?}"))?;
        let status = head.lines().next().unwrap_or_default();
        anyhow::ensure!(
            status.split_whitespace().nth(1) == Some("200"),
            "GET {url}: {status}: {body}"
        );
        Ok(body.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_tool(Command::new("ip").args(["netns", "del", &self.name]), None) {
            eprintln!("leaving network namespace {} behind: {e:#}", self.name);
        }
    }
}

/// The calling thread's stay in a [`Netns`], from [`Netns::enter_thread`]: dropping it
/// moves the thread back. Not `Send`: it must be dropped on the thread that entered.
#[derive(Debug)]
pub struct InNetns {
    home: File,
    netns: String,
    _this_thread: PhantomData<*const ()>,
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home, CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "a thread is left in network namespace {}: going back failed: {e}",
                self.netns
            );
        }
    }
}

/// Join `a` and `b` with a veth pair, [`IFACE`] at both ends, with addresses `a_cidr` and
/// `b_cidr` (e.g. `10.77.0.1/24`), both up. The pair is made straight inside the two
/// namespaces.
pub fn link(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> anyhow::Result<()> {
    run_tool(
        Command::new("ip").args([
            "link", "add", IFACE, "netns", &a.name, "type", "veth", "peer", "name", IFACE, "netns",
            &b.name,
        ]),
        None,
    )?;
    for (ns, cidr) in [(a, a_cidr), (b, b_cidr)] {
        ns.ip(&format!("addr add {cidr} dev {IFACE}"))?;
        ns.ip(&format!("link set {IFACE} up"))?;
    }
    Ok(())
}

/// A rule that needs what transparent-mode tests need: nftables with the kernel's TPROXY
/// support. Loaded into a throwaway namespace only.
const PROBE_RULES: &str = "table ip zenvoy_probe {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    ip daddr 192.0.2.1 tcp dport 9 tproxy to :9 meta mark set 1 accept
  }
}
";

/// Why namespace tests cannot run here, if they cannot: it makes a namespace, enters it
/// from a thread and loads a TPROXY rule into it, then deletes it.
pub fn probe() -> Result<(), String> {
    let ns = Netns::new("probe").map_err(|e| {
        format!("cannot create a network namespace (needs root and iproute2's `ip`): {e:#}")
    })?;
    let path = ns.path();
    std::thread::spawn(move || enter(&path))
        .join()
        .map_err(|_| "the setns probe thread panicked".to_string())?
        .map_err(|e| format!("cannot enter a network namespace: {e:#}"))?;
    ns.nft(PROBE_RULES).map_err(|e| {
        format!("cannot load an nft TPROXY rule (needs `nft` and the kernel's nft_tproxy): {e:#}")
    })?;
    Ok(())
}

/// For a test that needs network namespaces: true when it can run. Otherwise it prints why
/// and returns false (the test returns early: skipped), or, with `ZENVOY_REQUIRE_PRIVILEGED=1`,
/// panics with the reason.
pub fn available(test: &str) -> bool {
    let Err(reason) = probe() else {
        return true;
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason} ({REQUIRE_ENV}=1, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {reason} (set {REQUIRE_ENV}=1 to make this a failure)");
    false
}
