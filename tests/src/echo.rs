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
