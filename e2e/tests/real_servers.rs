//! Real servers behind zenvoy, woken by their real clients: Postgres and `psql`, Redis and
//! `redis-cli` (process backend, real Envoy, holder and splice).
//!
//! Both accept connections before they can serve them. A Postgres that crashed replays its
//! WAL first, answering `FATAL: the database system is starting up` (or `... is not yet
//! accepting connections`) meanwhile; a Redis loads its append-only file first, answering
//! `LOADING` meanwhile. Each test makes that window real, a Postgres killed (SIGKILL) right
//! after writing a million rows and a Redis with half a million keys to load, a few hundred
//! milliseconds each, before 20 clients arrive together at the parked service. The
//! controls, with only a `tcp` check, show the held clients relayed into the refusals; with
//! a `command` check (`pg_isready`; `redis-cli ping` piped to `grep -qx PONG`, since
//! `redis-cli` exits 0 on an error reply such as `LOADING`) every one of them is served. Idle
//! for its `idleTimeout`, the service parks, and the next single client wakes it and is
//! served.
//!
//! ```text
//!  psql x20 --> Envoy listener --(parked)--> holder --splice--> postgres (woken, replaying WAL)
//!                                              | relayed once the ready check passes
//!                                              +--- controller: sh -c 'exec postgres', pg_isready
//! ```
//!
//! Needs Debian's `postgresql` (its programs in /usr/lib/postgresql/<version>/bin) and
//! `redis-server` (`redis-server`, `redis-cli` on PATH), which `make setup` installs when run
//! as root: a test whose server is missing is skipped with the reason, and fails instead
//! under `ZENVOY_REQUIRE_PRIVILEGED=1`. Postgres refuses to run as root: as root, `initdb`
//! and `postgres` run as the `postgres` user the package creates (util-linux `setpriv`), in
//! a directory of the test's own given to that user.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use zenvoy_e2e::postgres::Postgres;
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::netns::REQUIRE_ENV;
use zenvoy_test_support::process::{file_tail as tail, group_alive, output_of, sh_words};
use zenvoy_test_support::{free_port, wait};

const BOUND: Duration = Duration::from_secs(30);
/// Clients that arrive together while the service is parked.
const CLIENTS: usize = 20;
/// One client process from start to exit: held through the wake, then served or refused.
const CLIENT_BOUND: Duration = Duration::from_secs(25);
/// One try of a probe the test itself runs (`redis-cli ping`; `pg_isready`'s is
/// `zenvoy_e2e::postgres`'s).
const PROBE_BOUND: Duration = Duration::from_secs(5);

/// What a test needs, or `None` when it cannot run here: then it prints why (the test
/// returns early: skipped), or, with `ZENVOY_REQUIRE_PRIVILEGED=1`, panics with the reason.
fn available<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(t) => Some(t),
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{test}: {reason} ({REQUIRE_ENV}=1, so this is a failure, not a skip)");
            }
            eprintln!("SKIPPED {test}: {reason} (set {REQUIRE_ENV}=1 to make this a failure)");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Postgres

/// Rows written right before the crash: about 90 MB of WAL, which the next start replays
/// (some hundreds of milliseconds) while it answers "the database system is starting up".
const PG_ROWS: u32 = 1_000_000;
/// What every client asks; the row was written before the crash.
const PG_QUERY: &str = "select word from greeting";

/// A new cluster in `<dir>/pg/data` that crashed: a Postgres of the test's own writes
/// `greeting` and `PG_ROWS` rows and is killed (SIGKILL to its whole process group, as
/// `kill -9` or a lost machine would leave it), so the next start replays the WAL before it
/// serves. Returns its home (`<dir>/pg`) and data directory.
async fn crashed_cluster(pg: &Postgres, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (home, data) = pg.init_cluster(dir).await?;
    let data_arg = data.display().to_string();

    let port = free_port()?.port();
    let log = dir.join("pg-before-crash.log");
    let out = File::create(&log)?;
    let mut cmd = pg.server_command(
        "postgres",
        &[
            "-D",
            &data_arg,
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-k",
            "",
        ],
        &home,
    );
    cmd.process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut server = cmd.spawn().context("starting Postgres to fill it")?;
    let pgid = server
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .context("the Postgres just started has no pid")?;
    wait::until(
        "Postgres (before its crash) to accept sessions",
        BOUND,
        || {
            let exited = server.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    anyhow::bail!("it exited: {status}");
                }
                Ok(pg.is_ready(port).await.then_some(()))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&log, 20)))?;
    let fill = format!(
        "create table greeting (word text); insert into greeting values ('hello'); \
         create table bulk as select g, md5(g::text) as h from generate_series(1, {PG_ROWS}) g"
    );
    pg.psql(SocketAddr::from(([127, 0, 0, 1], port)), &fill)
        .await
        .map_err(|e| anyhow::anyhow!("filling Postgres: {e}\n{}", tail(&log, 20)))?;

    killpg(Pid::from_raw(pgid), Signal::SIGKILL).context("killing Postgres")?;
    let _killed = tokio::time::timeout(BOUND, server.wait())
        .await
        .map_err(|_| anyhow::anyhow!("the killed Postgres was not reaped within {BOUND:?}"))??;
    // Its other processes too: one still attached to the old shared memory would make the
    // next start refuse ("pre-existing shared memory block is still in use").
    wait::until(
        "every process of the killed Postgres to exit",
        BOUND,
        || async { Ok((!group_alive(pgid)?).then_some(())) },
    )
    .await?;
    Ok((home, data))
}

/// One service, `pg`: Postgres on a crashed cluster (`server_args` added to its command
/// line), parked, with `ready` (`PORT` in it is its upstream port, `DATA` its data
/// directory) and SIGINT (fast shutdown) to park it.
async fn pg_stack(pg: &Postgres, ready: &str, server_args: &[&str]) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let mut spec = ServiceSpec::echo("pg", dir.path()).expect("spec");
    let (home, data) = crashed_cluster(pg, dir.path())
        .await
        .expect("a crashed Postgres cluster");
    let port = spec.upstream.port().to_string();
    let mut server = pg.postgres_argv(&data, spec.upstream.port());
    server.extend(server_args.iter().map(|a| a.to_string()));
    // The shell's pid is Postgres's: exec keeps it, through setpriv's exec too.
    let script = format!(
        "echo $$ > '{}' && exec {}",
        spec.pid_file.display(),
        sh_words(&server)
    );
    spec.command = vec!["sh".into(), "-c".into(), script];
    let spec = spec
        .with(
            &ready
                .replace("PORT", &port)
                .replace("DATA", &format!("{:?}", data.display().to_string())),
        )
        .with(&format!("cwd: {}", home.display()))
        .with(&format!("log: {}", dir.path().join("pg.log").display()))
        .with("stopSignal: SIGINT")
        .with("stopGrace: 10s")
        .with("idleTimeout: 1s");
    Stack::start(
        dir,
        Options {
            services: vec![spec],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

/// `CLIENTS` psql sessions at once through the service's listener; each one's outcome.
async fn psql_burst(pg: &Postgres, st: &Stack) -> Vec<Result<String, String>> {
    let addr = st.listener("pg").await.expect("listener");
    futures::future::join_all((0..CLIENTS).map(|_| pg.psql(addr, PG_QUERY))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_only_a_tcp_check_refuses_the_held_clients_while_it_recovers() {
    // The control: Postgres accepts while it replays its WAL, so a wake that waits only
    // for the port relays the held clients into "the database system is starting up".
    const TEST: &str = "postgres_with_only_a_tcp_check_refuses_the_held_clients_while_it_recovers";
    let Some(pg) = available(TEST, Postgres::find()) else {
        return;
    };
    let st = pg_stack(&pg, "ready: {tcp: {}}", &[]).await;
    let outcomes = psql_burst(&pg, &st).await;
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(e) if e.contains("the database system is")))
        .count();
    eprintln!("control: {refused} of {CLIENTS} psql clients refused: {outcomes:?}");
    assert!(
        refused > 0,
        "a port that accepts is not a database that serves: {outcomes:?}\n{}{}",
        tail(&st.dir.path().join("pg.log"), 30),
        st.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_pg_isready_serves_every_held_client_and_wakes_again() {
    const TEST: &str = "postgres_with_pg_isready_serves_every_held_client_and_wakes_again";
    let Some(pg) = available(TEST, Postgres::find()) else {
        return;
    };
    let ready = format!(
        "ready: {{command: [{}, -q, -h, 127.0.0.1, -p, \"PORT\"], interval: 20ms}}",
        pg.program("pg_isready")
    );
    serves_every_held_client_and_wakes_again(&pg, &ready, &[]).await;
}

/// The same with zenvoy's own `postgres` check: no process per try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_the_postgres_check_serves_every_held_client_and_wakes_again() {
    const TEST: &str = "postgres_with_the_postgres_check_serves_every_held_client_and_wakes_again";
    let Some(pg) = available(TEST, Postgres::find()) else {
        return;
    };
    serves_every_held_client_and_wakes_again(&pg, "ready: {postgres: {}, interval: 5ms}", &[])
        .await;
}

/// The same with the `postgres` check reading the data directory's `postmaster.pid`, no
/// connection. The crash left that file saying `ready` (the server was killed while it
/// served): the wake must wait out the recovery all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_the_data_dir_check_serves_every_held_client_and_wakes_again() {
    const TEST: &str = "postgres_with_the_data_dir_check_serves_every_held_client_and_wakes_again";
    let Some(pg) = available(TEST, Postgres::find()) else {
        return;
    };
    serves_every_held_client_and_wakes_again(
        &pg,
        "ready: {postgres: {dataDir: DATA}, interval: 5ms}",
        &[],
    )
    .await;
}

/// The same with `hot_standby` off: Postgres (15 and later) then says `standby` in its
/// postmaster.pid for the whole of the crash's redo, while it still refuses sessions.
/// `pg_ctl start --wait` stops waiting there; the check must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_the_data_dir_check_waits_out_a_standby_status() {
    const TEST: &str = "postgres_with_the_data_dir_check_waits_out_a_standby_status";
    let Some(pg) = available(TEST, Postgres::find()) else {
        return;
    };
    serves_every_held_client_and_wakes_again(
        &pg,
        "ready: {postgres: {dataDir: DATA}, interval: 5ms}",
        &["-c", "hot_standby=off"],
    )
    .await;
}

/// A crashed cluster parked behind zenvoy with `ready`: `CLIENTS` psql sessions at once
/// all served while it recovers; parked when idle, and the next client wakes it.
async fn serves_every_held_client_and_wakes_again(
    pg: &Postgres,
    ready: &str,
    server_args: &[&str],
) {
    let st = pg_stack(pg, ready, server_args).await;
    let pg_log = st.dir.path().join("pg.log");
    assert!(st.service("pg").running_pid().is_none(), "starts parked");
    // The crash left its postmaster.pid behind, saying it serves (the `dataDir` check
    // must not believe it).
    let stale =
        std::fs::read_to_string(st.dir.path().join("pg/data/postmaster.pid")).unwrap_or_default();
    assert!(
        stale.lines().nth(7).is_some_and(|l| l.trim() == "ready"),
        "the crash left a postmaster.pid saying ready: {stale:?}"
    );
    let outcomes = psql_burst(pg, &st).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(row) if row == "hello")),
        "every one of {CLIENTS} held psql clients served: {outcomes:?}\n{}{}",
        tail(&pg_log, 30),
        st.logs()
    );
    // The window the check waited out was real: this wake replayed the WAL.
    let log = std::fs::read_to_string(&pg_log).unwrap_or_default();
    assert!(
        log.contains("automatic recovery in progress"),
        "the first wake recovered from the crash:\n{}",
        tail(&pg_log, 30)
    );

    // Parked again after its idle timeout (SIGINT: a clean shutdown), the next single
    // client is the one that wakes it, and is served.
    st.wait_parked("pg", BOUND).await.expect("parks when idle");
    let addr = st.listener("pg").await.expect("listener");
    let row = pg
        .psql(addr, PG_QUERY)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}{}", tail(&pg_log, 30), st.logs()));
    assert_eq!(row, "hello", "the first session after a wake");
}

// ---------------------------------------------------------------------------------------
// Redis

/// Keys in the dataset besides `greeting`: a few hundred milliseconds of loading
/// (`LOADING` meanwhile).
const REDIS_KEYS: u32 = 500_000;

struct Redis {
    /// Redis 7 runs DEBUG (DEBUG POPULATE fills the dataset) only where it is enabled.
    enable_debug: bool,
}

impl Redis {
    fn find() -> Result<Redis, String> {
        let missing = |e: String| {
            format!("{e}; `make setup` installs Debian's redis-server when run as root")
        };
        let version =
            output_of(&["redis-server".to_string(), "--version".to_string()]).map_err(missing)?;
        output_of(&["redis-cli".to_string(), "--version".to_string()]).map_err(missing)?;
        // `Redis server v=7.0.15 sha=...`
        let major: u32 = version
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .and_then(|v| v.split('.').next()?.parse().ok())
            .ok_or_else(|| format!("no version in `redis-server --version`: {version}"))?;
        Ok(Redis {
            enable_debug: major >= 7,
        })
    }

    /// The server's arguments: on `port`, its files in `data`, an append-only file, no
    /// snapshots, in the foreground.
    fn server_args(port: u16, data: &Path) -> Vec<String> {
        vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            data.display().to_string(),
            "--appendonly".into(),
            "yes".into(),
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
        ]
    }
}

/// `redis-cli` against `addr`: its output when it exits 0 (an error reply such as
/// `LOADING ...` too: redis-cli exits 0 on those), or how it failed.
async fn redis_cli(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_BOUND, cmd.output())
        .await
        .map_err(|_| format!("redis-cli did not exit within {CLIENT_BOUND:?}"))?
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli {}: {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A field of an `INFO` reply (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// How many times Redis has rewritten its append-only file, from `INFO persistence`.
fn aof_rewrites(info: &str) -> Option<u64> {
    info_field(info, "aof_rewrites")?.parse().ok()
}

/// `<dir>/redis` holding `REDIS_KEYS` keys and `greeting` = `hello` in an append-only file
/// whose base is a snapshot, made by a Redis of the test's own and shut down cleanly: a
/// server started on it loads them all before it serves.
async fn loaded_dataset(redis: &Redis, dir: &Path) -> anyhow::Result<PathBuf> {
    let data = dir.join("redis");
    std::fs::create_dir(&data).context("creating the Redis directory")?;
    let addr = free_port()?;
    let log = dir.join("redis-fill.log");
    let out = File::create(&log)?;
    let mut cmd = Command::new("redis-server");
    cmd.args(Redis::server_args(addr.port(), &data));
    if redis.enable_debug {
        cmd.args(["--enable-debug-command", "local"]);
    }
    cmd.kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut server = cmd.spawn().context("starting Redis to fill it")?;
    let failed = |e: String| anyhow::anyhow!("filling Redis: {e}\n{}", tail(&log, 20));
    wait::until("Redis (being filled) to answer PONG", BOUND, || {
        let exited = server.try_wait().ok().flatten();
        async move {
            if let Some(status) = exited {
                anyhow::bail!("it exited: {status}");
            }
            let ping = tokio::time::timeout(PROBE_BOUND, redis_cli(addr, &["ping"])).await;
            Ok(matches!(ping, Ok(Ok(pong)) if pong == "PONG").then_some(()))
        }
    })
    .await
    .map_err(|e| failed(e.to_string()))?;
    let keys = REDIS_KEYS.to_string();
    for args in [
        &["debug", "populate", keys.as_str(), "key", "100"][..],
        &["set", "greeting", "hello"][..],
    ] {
        let reply = redis_cli(addr, args).await.map_err(failed)?;
        anyhow::ensure!(reply == "OK", "redis-cli {args:?}: {reply}");
    }
    // DEBUG POPULATE bypasses the append-only file: a rewrite puts every key in it (as a
    // snapshot, its base), and it is done when the count of rewrites has gone up.
    let before = aof_rewrites(
        &redis_cli(addr, &["info", "persistence"])
            .await
            .map_err(failed)?,
    )
    .context("INFO persistence has no aof_rewrites")?;
    redis_cli(addr, &["bgrewriteaof"]).await.map_err(failed)?;
    let status = wait::until(
        "Redis's append-only file rewrite to finish",
        BOUND,
        || async {
            let info = redis_cli(addr, &["info", "persistence"])
                .await
                .map_err(anyhow::Error::msg)?;
            let done = aof_rewrites(&info).is_some_and(|n| n > before)
                && info_field(&info, "aof_rewrite_in_progress") == Some("0")
                && info_field(&info, "aof_rewrite_scheduled") == Some("0");
            Ok(done.then(|| info_field(&info, "aof_last_bgrewrite_status").map(String::from)))
        },
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    anyhow::ensure!(
        status.as_deref() == Some("ok"),
        "the append-only file rewrite: {status:?}\n{}",
        tail(&log, 20)
    );
    // SHUTDOWN: the append-only file flushed, then exit (redis-cli may see the connection
    // close rather than a reply; the exit is what counts).
    let _ = redis_cli(addr, &["shutdown"]).await;
    let exit = tokio::time::timeout(BOUND, server.wait())
        .await
        .map_err(|_| failed(format!("Redis did not exit within {BOUND:?} of SHUTDOWN")))??;
    anyhow::ensure!(
        exit.success(),
        "Redis after SHUTDOWN: {exit}\n{}",
        tail(&log, 20)
    );
    Ok(data)
}

/// One service, `redis`: Redis on the loaded dataset, parked, with `ready` (`PORT` in it
/// is its upstream port) and SIGTERM (flush, exit) to park it.
async fn redis_stack(redis: &Redis, ready: &str) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let mut spec = ServiceSpec::echo("redis", dir.path()).expect("spec");
    let data = loaded_dataset(redis, dir.path())
        .await
        .expect("a Redis dataset");
    let port = spec.upstream.port();
    spec.command = std::iter::once("redis-server".to_string())
        .chain(Redis::server_args(port, &data))
        .chain(["--pidfile".to_string(), spec.pid_file.display().to_string()])
        .collect();
    let spec = spec
        .with(&ready.replace("PORT", &port.to_string()))
        .with(&format!("log: {}", dir.path().join("redis.log").display()))
        .with("stopGrace: 10s")
        .with("idleTimeout: 1s");
    Stack::start(
        dir,
        Options {
            services: vec![spec],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

/// `CLIENTS` `redis-cli get greeting` at once through the service's listener; each one's
/// outcome.
async fn redis_burst(st: &Stack) -> Vec<Result<String, String>> {
    let addr = st.listener("redis").await.expect("listener");
    futures::future::join_all((0..CLIENTS).map(|_| redis_cli(addr, &["get", "greeting"]))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_only_a_tcp_check_answers_the_held_clients_loading() {
    // The control: Redis accepts while it loads its dataset, so a wake that waits only for
    // the port relays the held clients into `LOADING`.
    const TEST: &str = "redis_with_only_a_tcp_check_answers_the_held_clients_loading";
    let Some(redis) = available(TEST, Redis::find()) else {
        return;
    };
    let st = redis_stack(&redis, "ready: {tcp: {}}").await;
    let outcomes = redis_burst(&st).await;
    let loading = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(reply) if reply.starts_with("LOADING")))
        .count();
    eprintln!("control: {loading} of {CLIENTS} redis-cli clients answered LOADING: {outcomes:?}");
    assert!(
        loading > 0,
        "a port that accepts is not a Redis that serves: {outcomes:?}\n{}{}",
        tail(&st.dir.path().join("redis.log"), 30),
        st.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_ping_check_serves_every_held_client_and_wakes_again() {
    const TEST: &str = "redis_with_a_ping_check_serves_every_held_client_and_wakes_again";
    let Some(redis) = available(TEST, Redis::find()) else {
        return;
    };
    // Not `redis-cli ping` alone: it prints `LOADING ...` and exits 0 while Redis loads.
    let st = redis_stack(
        &redis,
        "ready: {command: [sh, -c, \"redis-cli -h 127.0.0.1 -p PORT ping | grep -qx PONG\"], \
         interval: 20ms}",
    )
    .await;
    let redis_log = st.dir.path().join("redis.log");
    assert!(st.service("redis").running_pid().is_none(), "starts parked");
    let outcomes = redis_burst(&st).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(reply) if reply == "hello")),
        "every one of {CLIENTS} held redis-cli clients served: {outcomes:?}\n{}{}",
        tail(&redis_log, 30),
        st.logs()
    );
    // The window the check waited out was real: this wake loaded the whole dataset.
    let addr = st.listener("redis").await.expect("listener");
    let size = redis_cli(addr, &["dbsize"]).await;
    assert_eq!(
        size,
        Ok((REDIS_KEYS + 1).to_string()),
        "every key loaded\n{}",
        tail(&redis_log, 30)
    );

    // Parked again after its idle timeout (SIGTERM: flush and exit), the next single
    // client wakes it, waits through the loading again, and is served.
    st.wait_parked("redis", BOUND)
        .await
        .expect("parks when idle");
    let reply = redis_cli(addr, &["get", "greeting"])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}{}", tail(&redis_log, 30), st.logs()));
    assert_eq!(reply, "hello", "the first command after a wake");
}
