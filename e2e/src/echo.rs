//! Echo round trips, shared by the end-to-end tests: deterministic payloads and a client
//! that checks the echo is byte-exact.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one round trip may take.
pub const BOUND: Duration = Duration::from_secs(30);

/// Deterministic, position-dependent bytes (a shifted byte would not compare equal).
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Connect, write everything at once, half-close, read to EOF: the echo must be exact.
pub async fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut got = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut got);
    let (wr, rd) = tokio::time::timeout(BOUND, async { tokio::join!(write, read) })
        .await
        .map_err(|_| anyhow::anyhow!("no full echo within {BOUND:?}"))?;
    wr?;
    rd?;
    anyhow::ensure!(
        got == data,
        "echo differs: sent {} bytes, got {} (first difference at {:?})",
        data.len(),
        got.len(),
        got.iter().zip(data).position(|(a, b)| a != b)
    );
    Ok(())
}

/// A plain HTTP/1.1 GET with a chosen Host header over a fresh connection; returns
/// (status line, body). Written by hand so the test controls keep-alive and Host exactly.
pub async fn http_get_host(
    addr: SocketAddr,
    host: &str,
    keep_alive: bool,
) -> anyhow::Result<(String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let conn = if keep_alive { "keep-alive" } else { "close" };
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = tokio::time::timeout(BOUND, async {
        loop {
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return Ok((head.to_string(), body.to_string()));
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no HTTP response within {BOUND:?}"))??;
    Ok((head.lines().next().unwrap_or_default().to_string(), body))
}
