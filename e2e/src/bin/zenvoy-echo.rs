//! A small upstream for tests and benchmarks. TCP echo by default (every byte back, in
//! order; the client's EOF becomes ours); with `--http`, a minimal HTTP/1.1 responder.
//! Writes its pid to `--pid-file` so tests can see it start and stop.
//!
//! `--starting-for D` makes it a server that accepts before it serves, as Postgres and
//! Redis do: for D after it listens, each connection is refused in the protocol (a
//! `FATAL: the database system is starting up` line, or `503` with `--http`) and closed.
//! `--check ADDR` is its readiness probe (as `pg_isready` is Postgres's): exit 0 when
//! the echo at ADDR echoes a line back within a second, 1 otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, required_unless_present = "check")]
    listen: Option<SocketAddr>,
    /// Probe the echo at this address and exit: 0 if it echoes, 1 if not.
    #[arg(long, value_name = "ADDR")]
    check: Option<SocketAddr>,
    /// Accept but refuse to serve for this long after listening.
    #[arg(long, value_parser = humantime::parse_duration)]
    starting_for: Option<std::time::Duration>,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Append CLOCK_MONOTONIC nanoseconds, taken right after listen(2), to this file (the
    /// moment the port accepts; used by wake-bench).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Answer HTTP requests with 200 and a short body instead of echoing.
    #[arg(long)]
    http: bool,
    /// Body text for --http.
    #[arg(long, default_value = "hello from zenvoy-echo")]
    body: String,
    /// After the first connection (the controller's readiness probe), stop listening for
    /// this long, then listen again: an upstream that flaps right after it looked ready.
    #[arg(long, value_parser = humantime::parse_duration)]
    pause_after_first: Option<std::time::Duration>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.check {
        let ok = check(addr).await;
        eprintln!(
            "zenvoy-echo --check {addr}: {}",
            if ok { "serving" } else { "not serving" }
        );
        std::process::exit(if ok { 0 } else { 1 });
    }
    let Some(listen) = args.listen else {
        anyhow::bail!("--listen is required");
    };
    let listener = TcpListener::bind(listen).await?;
    let serving_at = args.starting_for.map(|d| tokio::time::Instant::now() + d);
    if let Some(p) = &args.ready_file {
        use std::io::Write;
        let now = zenvoy_test_support::monotonic_ns();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?;
        writeln!(f, "{now}")?;
    }
    if let Some(p) = &args.pid_file {
        std::fs::write(p, std::process::id().to_string())?;
    }
    eprintln!(
        "zenvoy-echo listening on {listen} (pid {})",
        std::process::id()
    );
    let body: &'static str = Box::leak(args.body.into_boxed_str());
    // A pod of the fake kubelet with further container ports: echo on those too.
    if let Ok(extra) = std::env::var(zenvoy_fake_kube::EXTRA_ADDRS_ENV) {
        for addr in extra.split(',').filter(|a| !a.is_empty()) {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| anyhow::anyhow!("extra address {addr:?}: {e}"))?;
            let extra = TcpListener::bind(addr).await?;
            eprintln!("zenvoy-echo also listening on {addr}");
            let is_http = args.http;
            tokio::spawn(async move {
                while let Ok((s, _)) = extra.accept().await {
                    if is_http {
                        tokio::spawn(self::http(s, body));
                    } else {
                        tokio::spawn(echo(s));
                    }
                }
            });
        }
    }
    let mut accepts = 0u32;
    let mut listener = listener;
    if let Some(pause) = args.pause_after_first {
        let (first, _) = listener.accept().await?;
        drop(first);
        drop(listener);
        eprintln!("zenvoy-echo: not listening for {pause:?}");
        tokio::time::sleep(pause).await;
        listener = TcpListener::bind(listen).await?;
        eprintln!("zenvoy-echo: listening again");
    }
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        // wake-bench splits the wake into segments: the first two accepts are the
        // controller's readiness probe and the holder's own probe.
        if let (Some(p), true) = (&args.ready_file, accepts < 2) {
            use std::io::Write;
            accepts += 1;
            let now = zenvoy_test_support::monotonic_ns();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(f, "accept {now}")?;
        }
        if serving_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            tokio::spawn(refuse(s, args.http));
        } else if args.http {
            tokio::spawn(http(s, body));
        } else {
            tokio::spawn(echo(s));
        }
    }
}

/// Refuse a connection in the protocol, as a server that is still starting does.
async fn refuse(mut s: TcpStream, http: bool) -> std::io::Result<()> {
    let msg: &[u8] = if http {
        let mut chunk = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), s.read(&mut chunk)).await;
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12\r\nconnection: close\r\n\r\nstarting up\n"
    } else {
        b"FATAL: the database system is starting up\n"
    };
    s.write_all(msg).await?;
    s.shutdown().await
}

/// Whether the echo at `addr` echoes a line within a second.
async fn check(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping\n").await?;
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await?;
        Ok::<bool, std::io::Error>(&got == b"ping\n")
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}

async fn echo(mut s: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = s.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

async fn http(mut s: TcpStream, body: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}\n",
                body.len() + 1
            );
            s.write_all(resp.as_bytes()).await?;
        }
        if buf.len() > 64 * 1024 {
            return Ok(()); // not HTTP; drop it
        }
    }
}
