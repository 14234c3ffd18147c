//! Wake benchmark (BENCHMARKS.md): for N wakes of a local upstream that is ready the
//! moment its port accepts, the time from the upstream's listen(2) to the first relayed
//! byte reaching the client, through a real Envoy, controller and holder.
//!
//! Each round: wait until the service is parked, connect through Envoy, send one byte at
//! once (it waits in the kernel while the service wakes), and time its echo. The upstream
//! (`zenvoy-echo --ready-file`) writes CLOCK_MONOTONIC right after listen(2); the client
//! reads the same clock when the byte arrives.
//!
//! With `--real postgres,http` it also measures real servers against their own start
//! (off by default; `--wakes 0` skips the echo wakes):
//!
//! ```text
//!  own start:      spawn server ; client tries every --real-poll until the first answer
//!  through zenvoy: server parked ; client -> Envoy -> holder (held) ... woken ... answer
//!  overhead:       through zenvoy - own start, per pair; pairs alternate which runs first
//! ```
//!
//! Postgres is Debian's (`initdb` once, trust auth), run as the `postgres` user when this
//! is root, asked `select 1` by a real `psql`; the HTTP server is `python3 -m http.server`,
//! asked `GET /` over HTTP/1.1. Both series run the same command line, the one zenvoy's
//! config holds, with the same client: only zenvoy differs. A server whose programs are
//! missing is skipped with the reason.
//!
//! `make bench` or `cargo build --release --workspace --bins && target/release/wake-bench`;
//! `target/release/wake-bench --wakes 0 --real postgres,http --real-runs 30`.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zenvoy_e2e::echo::http_get_host;
use zenvoy_e2e::postgres::Postgres;
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::process::{file_tail, group_alive, output_of, sh_words};
use zenvoy_test_support::{monotonic_ns, wait};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Real {
    /// Debian's Postgres, asked `select 1` by `psql`.
    Postgres,
    /// The same Postgres, asked by an in-process client for the first answer to a
    /// session's StartupMessage (the `postgres` check's question): each try costs a
    /// connection, not a `psql` process (~26 ms here), so both series time the server.
    PostgresWire,
    /// `python3 -m http.server`, asked `GET /` over HTTP/1.1.
    Http,
}

#[derive(Debug, Parser)]
struct Args {
    /// Number of wakes of the echo upstream (0: none).
    #[arg(long, default_value_t = 100)]
    wakes: usize,
    /// Real servers to measure against their own start, comma-separated (none by
    /// default).
    #[arg(long, value_enum, value_delimiter = ',')]
    real: Vec<Real>,
    /// Timed pairs per real server: one start without zenvoy, one wake through it.
    #[arg(long, default_value_t = 30)]
    real_runs: usize,
    /// Untimed pairs before them (the first start after initdb, Envoy's first
    /// connections).
    #[arg(long, default_value_t = 1)]
    real_warmup: usize,
    /// Pause between the own-start client's tries.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    real_poll: Duration,
    /// `ready.interval` of the real services in zenvoy's config.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    real_ready_interval: Duration,
    /// Postgres' ready check in zenvoy's config: the `postgres` check reading the data
    /// directory's `postmaster.pid` (`data-dir`), the `postgres` check connecting
    /// (`postgres`), or the `pg_isready` program as a `command` check.
    #[arg(long, value_enum, default_value = "data-dir")]
    pg_check: PgCheck,
    /// The Python that runs `-m http.server` (resolved to its executable, past a pyenv
    /// shim).
    #[arg(long, default_value = "python3")]
    python: String,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ascending(v: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.wakes > 0 {
        echo_wakes(args.wakes).await?;
    }
    if !args.real.is_empty() {
        real_servers(&args).await?;
    }
    Ok(())
}

/// The echo upstream: listen(2) -> first relayed byte at the client, and its segments.
async fn echo_wakes(wakes: usize) -> anyhow::Result<()> {
    let dir = Stack::tempdir()?;
    let ready_file = dir.path().join("ready.ns");
    let mut spec = ServiceSpec::echo("bench", dir.path())?.with("idleTimeout: 100ms");
    spec.command.push("--ready-file".into());
    spec.command.push(ready_file.display().to_string());
    let opts = Options {
        services: vec![spec],
        defaults: vec!["holdTimeout: 30s".into()],
        flush: Duration::from_millis(100),
        ..Options::default()
    };
    let st = Stack::start(dir, opts).await?;
    let addr = st.listener("bench").await?;
    let mut samples = Vec::with_capacity(wakes);
    let mut segments: Vec<[f64; 3]> = Vec::with_capacity(wakes);
    for round in 0..wakes {
        let spec = st.service("bench");
        wait::until("the service to park", Duration::from_secs(30), || async {
            Ok(spec.running_pid().is_none().then_some(()))
        })
        .await?;
        st.wait_hosts("bench", &[st.holder_listen], Duration::from_secs(30))
            .await?;
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut b)).await??;
        let got = monotonic_ns();
        drop(s);
        // Written by the upstream: its listen(2), then its first two accepts: the
        // controller's readiness probe and the holder's own probe (either first); the
        // holder's dial comes after them.
        let text = std::fs::read_to_string(&ready_file)?;
        let _ = std::fs::remove_file(&ready_file);
        let stamps: Vec<u128> = text
            .lines()
            .filter_map(|l| l.trim_start_matches("accept ").parse().ok())
            .collect();
        let [ready, probe, dial] = stamps[..] else {
            anyhow::bail!(
                "round {round}: expected listen + 2 accepts in {}, got {text:?}",
                ready_file.display()
            );
        };
        let ms = |a: u128, b: u128| b.saturating_sub(a) as f64 / 1e6;
        samples.push(ms(ready, got));
        segments.push([ms(ready, probe), ms(probe, dial), ms(dial, got)]);
    }
    let sorted = ascending(samples);
    println!(
        "wakes={} port-accepting -> first relayed byte at client: p50={:.3} ms p90={:.3} ms p99={:.3} ms min={:.3} ms max={:.3} ms",
        sorted.len(),
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    for (i, name) in [
        "listen -> first probe accepted (the controller's or the holder's)",
        "first -> second probe accepted",
        "second probe accepted -> byte at client (holder dial, relay, upstream echo, Envoy)",
    ]
    .iter()
    .enumerate()
    {
        let seg = ascending(segments.iter().map(|s| s[i]));
        println!(
            "  {name}: p50={:.3} ms p99={:.3} ms",
            percentile(&seg, 50.0),
            percentile(&seg, 99.0)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Real servers: zenvoy's wake against the server's own start

/// Waits the bench does not time: a park, a stop, one client.
const BOUND: Duration = Duration::from_secs(30);
/// A server started without zenvoy has this long to answer its client.
const START_BOUND: Duration = Duration::from_secs(60);
/// A server stopped by the bench (its `stopSignal`) has this long to exit; then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Idle this long after the client's answer, a real service parks for the next run.
const IDLE: &str = "500ms";
/// What psql asks, and the one row it must print.
const PG_QUERY: &str = "select 1";
const PG_ROW: &str = "1";
/// The HTTP service's name (its `Host`), and the file `GET /` serves.
const WEB: &str = "web";
const WEB_BODY: &str = "hello\n";

/// The client of one real server, the same in both series.
enum Client {
    Psql(Postgres),
    PgWire,
    Http,
}

impl Client {
    /// One try: Ok once the server answered what it should.
    async fn ask(&self, addr: SocketAddr) -> Result<(), String> {
        match self {
            Client::Psql(pg) => {
                let row = pg.psql(addr, PG_QUERY).await?;
                if row == PG_ROW {
                    Ok(())
                } else {
                    Err(format!("psql printed {row:?}, not {PG_ROW:?}"))
                }
            }
            Client::PgWire => {
                zenvoy_controller::backend::process::postgres_ready(addr, "postgres", "postgres")
                    .await
            }
            Client::Http => {
                let (status, body) = http_get_host(addr, WEB, false)
                    .await
                    .map_err(|e| format!("GET /: {e:#}"))?;
                if status.contains(" 200 ") && body == WEB_BODY {
                    Ok(())
                } else {
                    Err(format!("GET / answered {status:?} with {body:?}"))
                }
            }
        }
    }
}

/// A real server as both series run it: the command line in zenvoy's config (`sh -c`
/// writing the pid file, then exec), its working directory, its stop signal.
struct Server {
    /// The table's row name.
    label: String,
    service: &'static str,
    /// The Envoy listener its client uses through zenvoy.
    listener: &'static str,
    command: Vec<String>,
    cwd: Option<PathBuf>,
    stop: Signal,
    upstream: SocketAddr,
    /// Where the starts without zenvoy write (the wakes write to the service's `log`).
    own_log: PathBuf,
    zenvoy_log: PathBuf,
    client: Client,
}

/// One pair's measurements, in milliseconds.
struct Pair {
    own: f64,
    zenvoy: f64,
    /// Tries of the own-start client, the answered one included.
    tries: usize,
}

/// The shell line zenvoy runs: the shell's pid is the server's (exec keeps it, through
/// setpriv's exec too), written where the harness looks for it.
fn pid_file_wrapper(spec: &ServiceSpec, server: &[String]) -> Vec<String> {
    let script = format!(
        "echo $$ > '{}' && exec {}",
        spec.pid_file.display(),
        sh_words(server)
    );
    vec!["sh".into(), "-c".into(), script]
}

fn stack_options(spec: ServiceSpec, http: bool) -> Options {
    Options {
        services: vec![spec],
        defaults: vec!["holdTimeout: 60s".into(), "wakeTimeout: 30s".into()],
        flush: Duration::from_millis(100),
        http,
        ..Options::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PgCheck {
    DataDir,
    Postgres,
    PgIsready,
}

/// Postgres on a new cluster, parked behind zenvoy: `--pg-check` as its ready check,
/// SIGINT (fast shutdown) to park it.
async fn postgres_server(pg: Postgres, args: &Args, wire: bool) -> anyhow::Result<(Stack, Server)> {
    let dir = Stack::tempdir()?;
    let mut spec = ServiceSpec::echo("pg", dir.path())?;
    let (home, data) = pg.init_cluster(dir.path()).await?;
    let port = spec.upstream.port();
    spec.command = pid_file_wrapper(&spec, &pg.postgres_argv(&data, port));
    let zenvoy_log = dir.path().join("pg.log");
    let spec = spec
        .with(&match args.pg_check {
            PgCheck::DataDir => format!(
                "ready: {{postgres: {{dataDir: {:?}}}, interval: {}}}",
                data.display().to_string(),
                humantime::format_duration(args.real_ready_interval)
            ),
            PgCheck::Postgres => format!(
                "ready: {{postgres: {{}}, interval: {}}}",
                humantime::format_duration(args.real_ready_interval)
            ),
            PgCheck::PgIsready => format!(
                "ready: {{command: [{:?}, -q, -h, 127.0.0.1, -p, \"{port}\"], interval: {}}}",
                pg.program("pg_isready"),
                humantime::format_duration(args.real_ready_interval)
            ),
        })
        .with(&format!("cwd: {:?}", home.display().to_string()))
        .with(&format!("log: {:?}", zenvoy_log.display().to_string()))
        .with("stopSignal: SIGINT")
        .with("stopGrace: 10s")
        .with(&format!("idleTimeout: {IDLE}"));
    let server = Server {
        label: format!(
            "Postgres {} ({}; {})",
            pg.version,
            if wire { "wire client" } else { "psql" },
            match args.pg_check {
                PgCheck::DataDir => "postgres check, dataDir",
                PgCheck::Postgres => "postgres check",
                PgCheck::PgIsready => "pg_isready",
            }
        ),
        service: "pg",
        listener: "pg",
        command: spec.command.clone(),
        cwd: Some(home),
        stop: Signal::SIGINT,
        upstream: spec.upstream,
        own_log: dir.path().join("pg-own.log"),
        zenvoy_log,
        client: if wire {
            Client::PgWire
        } else {
            Client::Psql(pg)
        },
    };
    let st = Stack::start(dir, stack_options(spec, false)).await?;
    Ok((st, server))
}

/// The Python executable `python` names (a pyenv shim is a shell script: running the
/// interpreter itself keeps the shim's start out of both series), with `http.server`.
fn python_executable(python: &str) -> Result<String, String> {
    let out = output_of(&[
        python.to_string(),
        "-c".to_string(),
        "import http.server, sys; print(sys.executable)".to_string(),
    ])
    .map_err(|e| format!("no Python with http.server: {e}"))?;
    let exe = out.trim();
    if exe.is_empty() {
        return Err(format!("`{python}` does not say where its executable is"));
    }
    Ok(exe.to_string())
}

/// `python -m http.server` serving a one-file directory, parked behind zenvoy as an HTTP
/// service (`Host: web` on the shared listener) with an `http` ready check.
async fn http_server(python: String, args: &Args) -> anyhow::Result<(Stack, Server)> {
    let dir = Stack::tempdir()?;
    let mut spec = ServiceSpec::echo(WEB, dir.path())?;
    let www = dir.path().join("www");
    std::fs::create_dir(&www).context("creating the HTTP server's directory")?;
    std::fs::write(www.join("index.html"), WEB_BODY).context("writing index.html")?;
    let server_argv = vec![
        python,
        "-m".into(),
        "http.server".into(),
        spec.upstream.port().to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--directory".into(),
        www.display().to_string(),
    ];
    spec.command = pid_file_wrapper(&spec, &server_argv);
    let zenvoy_log = dir.path().join("web.log");
    let spec = spec
        .with("protocol: http")
        .with(&format!(
            "ready: {{http: {{path: /}}, interval: {}}}",
            humantime::format_duration(args.real_ready_interval)
        ))
        .with(&format!("log: {:?}", zenvoy_log.display().to_string()))
        .with(&format!("idleTimeout: {IDLE}"));
    let server = Server {
        label: "HTTP (python3 -m http.server, GET /)".to_string(),
        service: WEB,
        listener: "zenvoy_http",
        command: spec.command.clone(),
        cwd: None,
        stop: Signal::SIGTERM,
        upstream: spec.upstream,
        own_log: dir.path().join("web-own.log"),
        zenvoy_log,
        client: Client::Http,
    };
    let st = Stack::start(dir, stack_options(spec, true)).await?;
    Ok((st, server))
}

/// Stop a process group the bench started: `signal`, up to `STOP_GRACE`, then SIGKILL;
/// returns once every process of the group has exited.
async fn stop_group(
    child: &mut tokio::process::Child,
    pgid: i32,
    signal: Signal,
) -> anyhow::Result<()> {
    let group = Pid::from_raw(pgid);
    if child.try_wait()?.is_none() {
        // ESRCH: it exited meanwhile; the wait below tells.
        let _ = killpg(group, signal);
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(group, Signal::SIGKILL);
            tokio::time::timeout(BOUND, child.wait())
                .await
                .map_err(|_| anyhow::anyhow!("process group {pgid} survived SIGKILL"))??;
        }
    }
    // Its other processes too (Postgres's): the next start needs the port and the data
    // directory free.
    wait::until(
        &format!("every process of group {pgid} to exit"),
        BOUND,
        || async { Ok((!group_alive(pgid)?).then_some(())) },
    )
    .await
}

/// Without zenvoy: spawn the server's command, its client trying every `poll` until the
/// first answer. Milliseconds from spawn to that answer, and the tries. The server is
/// stopped again before this returns.
async fn own_start(server: &Server, poll: Duration) -> anyhow::Result<(f64, usize)> {
    let (program, rest) = server
        .command
        .split_first()
        .context("the server has no command")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&server.own_log)
        .with_context(|| format!("opening {}", server.own_log.display()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(cwd) = &server.cwd {
        cmd.current_dir(cwd);
    }
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", server.label))?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .context("the server just started has no pid")?;
    let mut tries = 0;
    let answered = loop {
        tries += 1;
        let tried = server.client.ask(server.upstream).await;
        let elapsed = t0.elapsed();
        match tried {
            Ok(()) => break Ok(elapsed),
            Err(e) => {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        break Err(anyhow::anyhow!(
                            "{} exited ({status}) before it answered; last try: {e}",
                            server.label
                        ))
                    }
                    Ok(None) => {}
                    Err(waiting) => {
                        break Err(anyhow::anyhow!("waiting for {}: {waiting}", server.label))
                    }
                }
                if elapsed >= START_BOUND {
                    break Err(anyhow::anyhow!(
                        "{} did not answer within {START_BOUND:?} of its start; last try: {e}",
                        server.label
                    ));
                }
                tokio::time::sleep(poll).await;
            }
        }
    };
    let stopped = stop_group(&mut child, pgid, server.stop).await;
    let elapsed =
        answered.map_err(|e| anyhow::anyhow!("{e}\n{}", file_tail(&server.own_log, 20)))?;
    stopped.with_context(|| format!("stopping {}", server.label))?;
    Ok((elapsed.as_secs_f64() * 1e3, tries))
}

/// Through zenvoy: the service parked, its client through Envoy's listener `addr`.
/// Milliseconds from the client's start to its answer.
async fn through_zenvoy(st: &Stack, server: &Server, addr: SocketAddr) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    server.client.ask(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "{} through zenvoy: {e}\n{}{}",
            server.label,
            file_tail(&server.zenvoy_log, 20),
            st.logs()
        )
    })?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// Warm-up pairs, then `runs` timed pairs; each run starts with the service parked
/// (process gone, Envoy's cluster at the holder), even pairs without zenvoy first.
async fn measure(st: &Stack, server: &Server, args: &Args) -> anyhow::Result<Vec<Pair>> {
    let addr = st.listener(server.listener).await?;
    let total = args.real_warmup + args.real_runs;
    let mut pairs = Vec::with_capacity(args.real_runs);
    for i in 0..total {
        let mut own = None;
        let mut zenvoy = None;
        for own_now in [i % 2 == 0, i % 2 != 0] {
            st.wait_parked(server.service, BOUND).await?;
            if own_now {
                own = Some(own_start(server, args.real_poll).await?);
            } else {
                zenvoy = Some(through_zenvoy(st, server, addr).await?);
            }
        }
        let (Some((own, tries)), Some(zenvoy)) = (own, zenvoy) else {
            anyhow::bail!("pair {i}: a run is missing");
        };
        if i >= args.real_warmup {
            pairs.push(Pair { own, zenvoy, tries });
            let done = pairs.len();
            if done % 10 == 0 || done == args.real_runs {
                eprintln!(
                    "{}: {done}/{} pairs (last: own start {own:.1} ms, through zenvoy {zenvoy:.1} ms)",
                    server.label, args.real_runs
                );
            }
        }
    }
    Ok(pairs)
}

/// One table row: p50 and p99 of both series and of the per-pair differences.
struct Row {
    label: String,
    pairs: usize,
    own: [f64; 2],
    zenvoy: [f64; 2],
    overhead: [f64; 2],
    overhead_min_max: [f64; 2],
    tries_p50: f64,
}

fn row(label: &str, pairs: &[Pair]) -> Row {
    let p50_p99 = |v: &[f64]| [percentile(v, 50.0), percentile(v, 99.0)];
    let overhead = ascending(pairs.iter().map(|p| p.zenvoy - p.own));
    Row {
        label: label.to_string(),
        pairs: pairs.len(),
        own: p50_p99(&ascending(pairs.iter().map(|p| p.own))),
        zenvoy: p50_p99(&ascending(pairs.iter().map(|p| p.zenvoy))),
        overhead: p50_p99(&overhead),
        overhead_min_max: [
            overhead.first().copied().unwrap_or(f64::NAN),
            overhead.last().copied().unwrap_or(f64::NAN),
        ],
        tries_p50: percentile(&ascending(pairs.iter().map(|p| p.tries as f64)), 50.0),
    }
}

/// Issue 15's target: zenvoy's wake adds at most this much to the server's own start, p50.
const TARGET_P50_MS: f64 = 5.0;

async fn real_servers(args: &Args) -> anyhow::Result<()> {
    let mut wanted: Vec<Real> = Vec::new();
    for real in &args.real {
        if !wanted.contains(real) {
            wanted.push(*real);
        }
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for real in wanted {
        let built = match real {
            Real::Postgres | Real::PostgresWire => match Postgres::find() {
                Ok(pg) => postgres_server(pg, args, real == Real::PostgresWire).await,
                Err(reason) => {
                    println!("SKIPPED Postgres: {reason}");
                    continue;
                }
            },
            Real::Http => match python_executable(&args.python) {
                Ok(python) => http_server(python, args).await,
                Err(reason) => {
                    println!("SKIPPED HTTP server: {reason}");
                    continue;
                }
            },
        };
        let outcome = match built {
            Ok((st, server)) => measure(&st, &server, args)
                .await
                .map(|pairs| row(&server.label, &pairs)),
            Err(e) => Err(e.context("setting up")),
        };
        match outcome {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("{real:?}: {e:#}");
                failed.push(format!("{real:?}"));
            }
        }
    }
    if !rows.is_empty() {
        println!();
        println!(
            "| server | pairs | own start p50 / p99 | through zenvoy p50 / p99 | overhead p50 / p99 | overhead min / max | p50 <= {TARGET_P50_MS} ms |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} |",
                r.label,
                r.pairs,
                r.own[0],
                r.own[1],
                r.zenvoy[0],
                r.zenvoy[1],
                r.overhead[0],
                r.overhead[1],
                r.overhead_min_max[0],
                r.overhead_min_max[1],
                if r.overhead[0] <= TARGET_P50_MS {
                    "met"
                } else {
                    "missed"
                },
            );
        }
        println!();
        println!(
            "own start: spawn -> first answer, the client retrying every {} (tries p50: {}); \
             through zenvoy: client start -> answer, the service parked, ready.interval {}; \
             overhead: through zenvoy - own start within each pair (pairs alternate which \
             runs first); p99 of 50 pairs or fewer is their maximum.",
            humantime::format_duration(args.real_poll),
            rows.iter()
                .map(|r| format!("{} {}", r.label, r.tries_p50))
                .collect::<Vec<_>>()
                .join(", "),
            humantime::format_duration(args.real_ready_interval),
        );
    }
    anyhow::ensure!(
        failed.is_empty(),
        "real-server runs failed: {}",
        failed.join(", ")
    );
    Ok(())
}
