//! A small upstream for tests and benchmarks. TCP echo by default (every byte back, in
//! order; the client's EOF becomes ours); with `--http`, a minimal HTTP/1.1 responder.
//! Writes its pid to `--pid-file` so tests can see it start and stop.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
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
    let listener = TcpListener::bind(args.listen).await?;
    if let Some(p) = &args.ready_file {
        use std::io::Write;
        let now = zenvoy_tests::monotonic_ns();
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
        "zenvoy-echo listening on {} (pid {})",
        args.listen,
        std::process::id()
    );
    let body: &'static str = Box::leak(args.body.into_boxed_str());
    let mut accepts = 0u32;
    let mut listener = listener;
    if let Some(pause) = args.pause_after_first {
        let (first, _) = listener.accept().await?;
        drop(first);
        drop(listener);
        eprintln!("zenvoy-echo: not listening for {pause:?}");
        tokio::time::sleep(pause).await;
        listener = TcpListener::bind(args.listen).await?;
        eprintln!("zenvoy-echo: listening again");
    }
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        // wake-bench splits the wake into segments: the first two accepts are the
        // controller's readiness probe and the holder's dial.
        if let (Some(p), true) = (&args.ready_file, accepts < 2) {
            use std::io::Write;
            accepts += 1;
            let now = zenvoy_tests::monotonic_ns();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(f, "accept {now}")?;
        }
        if args.http {
            tokio::spawn(http(s, body));
        } else {
            tokio::spawn(echo(s));
        }
    }
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
