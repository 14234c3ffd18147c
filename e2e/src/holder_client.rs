//! Talking to the holder directly, as Envoy would: a PROXY v2 header naming the service,
//! then the client's bytes. Plus a deterministic byte stream of any length, checked as it
//! arrives, so a relay of gigabytes is proven byte-exact without buffering it.
//!
//! ```text
//!  Writer --header, pattern(seed), FIN--> holder --splice--> echo
//!  Reader <--pattern(seed), EOF---------- holder <--splice-- echo   (checked on arrival)
//! ```

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zenvoy_holder::proxy_header::{self, TLV_SERVICE};

/// The header Envoy sends for `service`: PROXY, TCP over IPv4, TLV 0xE0 = the name. The
/// addresses are informational; the holder only routes on the TLV.
pub fn header(service: &str) -> anyhow::Result<Vec<u8>> {
    let src: SocketAddr = "127.0.0.1:40000".parse()?;
    let dst: SocketAddr = "127.0.0.1:10000".parse()?;
    Ok(proxy_header::encode(
        src,
        dst,
        &[(TLV_SERVICE, service.as_bytes())],
    )?)
}

/// Connect to the holder and send `service`'s header; the connection is then held.
pub async fn connect(holder: SocketAddr, service: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(holder).await?;
    s.set_nodelay(true)?;
    s.write_all(&header(service)?).await?;
    Ok(s)
}

/// Wait until the peer closes `stream` (EOF or reset), at most `bound`; returns how long
/// that took. Data from the peer is an error: the holder never writes to a client itself.
pub async fn closed_within(stream: &mut TcpStream, bound: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut b = [0u8; 64];
    match tokio::time::timeout(bound, stream.read(&mut b)).await {
        Err(_) => anyhow::bail!("still open after {bound:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(start.elapsed()),
        Ok(Ok(n)) => anyhow::bail!("got {n} bytes instead of a close"),
    }
}

/// Whether the peer still has `stream` open, right now: a non-blocking peek (a syscall,
/// not tokio's cached readiness) that sees neither EOF nor a reset.
pub fn is_open(stream: &TcpStream) -> bool {
    let mut b = [MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(stream).peek(&mut b) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(n) => n > 0,
    }
}

/// Length of the random block a [`Pattern`] repeats: odd, so no power-of-two shift of the
/// stream (a lost or doubled buffer) lines it up with itself again.
const BLOCK: usize = 1_048_573;
const CHUNK: usize = 256 * 1024;

/// A deterministic byte stream of any length: a random block (from `seed`) repeated, the
/// repetition's index XORed into its first 8 bytes so a lost or repeated block shows too.
/// Producing it is memcpy-cheap, even in a debug build.
#[derive(Debug, Clone)]
pub struct Pattern {
    block: Vec<u8>,
    pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        // xorshift64; `| 1` keeps the state non-zero.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut block = Vec::with_capacity(BLOCK + 8);
        while block.len() < BLOCK {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        block.truncate(BLOCK);
        Pattern { block, pos: 0 }
    }

    /// Bytes produced so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let rep = self.pos / BLOCK as u64;
            let off = (self.pos % BLOCK as u64) as usize;
            let n = (BLOCK - off).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            out.copy_from_slice(&self.block[off..off + n]);
            for (i, b) in rep.to_le_bytes().iter().enumerate().skip(off).take(n) {
                out[i - off] ^= b;
            }
            done += n;
            self.pos += n as u64;
        }
    }
}

/// The sending half of a pattern stream.
#[derive(Debug)]
pub struct Writer {
    w: OwnedWriteHalf,
    pattern: Pattern,
    buf: Vec<u8>,
}

/// The receiving half: checks every byte against the pattern as it arrives.
#[derive(Debug)]
pub struct Reader {
    r: OwnedReadHalf,
    expected: Pattern,
    buf: Vec<u8>,
    want: Vec<u8>,
}

/// Split a connection to an echo (through the holder) into a pattern writer and a reader
/// expecting the same pattern back.
pub fn pattern_stream(stream: TcpStream, seed: u64) -> (Writer, Reader) {
    let (r, w) = stream.into_split();
    let pattern = Pattern::new(seed);
    let writer = Writer {
        w,
        pattern: pattern.clone(),
        buf: vec![0; CHUNK],
    };
    let reader = Reader {
        r,
        expected: pattern,
        buf: vec![0; CHUNK],
        want: vec![0; CHUNK],
    };
    (writer, reader)
}

impl Writer {
    /// Write the next `n` bytes of the pattern.
    pub async fn write(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let k = usize::try_from(n).unwrap_or(CHUNK).min(CHUNK);
            self.pattern.fill(&mut self.buf[..k]);
            self.w.write_all(&self.buf[..k]).await?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Half-close: the peer reads EOF after the bytes written.
    pub async fn finish(&mut self) -> io::Result<()> {
        self.w.shutdown().await
    }

    pub fn written(&self) -> u64 {
        self.pattern.position()
    }
}

impl Reader {
    /// Bytes received and checked so far.
    pub fn received(&self) -> u64 {
        self.expected.position()
    }

    /// Read once; returns false at EOF. Errors name the first byte that differs.
    async fn read_some(&mut self) -> anyhow::Result<bool> {
        let n = self.r.read(&mut self.buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let at = self.expected.position();
        self.expected.fill(&mut self.want[..n]);
        let (got, want) = (&self.buf[..n], &self.want[..n]);
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            anyhow::bail!(
                "byte {} of the stream differs: got {:#04x}, expected {:#04x}",
                at + i as u64,
                got[i],
                want[i]
            );
        }
        Ok(true)
    }

    /// Read and check until at least `n` bytes in total have arrived; EOF first is an
    /// error.
    pub async fn read_at_least(&mut self, n: u64) -> anyhow::Result<()> {
        while self.received() < n {
            anyhow::ensure!(
                self.read_some().await?,
                "EOF after {} bytes, expected at least {n}",
                self.received()
            );
        }
        Ok(())
    }

    /// Read and check to EOF; returns the total received.
    pub async fn read_to_end(&mut self) -> anyhow::Result<u64> {
        while self.read_some().await? {}
        Ok(self.received())
    }
}

/// Send `len` bytes of pattern `seed` and half-close, while reading the echo back to EOF;
/// the echo must be exactly what was sent (checked on arrival) and exactly `len` long.
pub async fn echo_pattern(stream: TcpStream, seed: u64, len: u64) -> anyhow::Result<()> {
    let (mut w, mut r) = pattern_stream(stream, seed);
    let write = async {
        w.write(len).await?;
        w.finish().await?;
        anyhow::Ok(())
    };
    let (_, got) = tokio::try_join!(write, r.read_to_end())?;
    anyhow::ensure!(got == len, "echo was {got} bytes, sent {len}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_same_however_it_is_cut() {
        let mut whole = vec![0u8; 2 * BLOCK + 100];
        Pattern::new(7).fill(&mut whole);
        let mut pieces = Pattern::new(7);
        let mut cut = vec![0u8; whole.len()];
        let mut at = 0;
        for k in [1, 7, 8, 9, 4096, BLOCK - 4121, 3, BLOCK, 1000]
            .into_iter()
            .cycle()
        {
            let end = (at + k).min(cut.len());
            pieces.fill(&mut cut[at..end]);
            at = end;
            if at == cut.len() {
                break;
            }
        }
        assert!(cut == whole);
    }

    #[test]
    fn repetitions_and_seeds_differ() {
        let mut p = Pattern::new(7);
        let mut two = vec![0u8; 2 * BLOCK];
        p.fill(&mut two);
        let (a, b) = two.split_at(BLOCK);
        assert_ne!(a[..8], b[..8], "the repetition index is mixed in");
        assert_eq!(a[8..], b[8..]);
        let mut other = vec![0u8; BLOCK];
        Pattern::new(8).fill(&mut other);
        assert_ne!(a, &other[..]);
    }

    #[tokio::test]
    async fn reader_names_the_first_byte_that_differs() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut sent = vec![0u8; 3 * CHUNK];
        Pattern::new(9).fill(&mut sent);
        sent[CHUNK + 5] ^= 1;
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut server, &sent));
        let (_, mut r) = pattern_stream(client, 9);
        let err = r.read_to_end().await.expect_err("a flipped bit");
        // The rest of the bytes may find the socket closed: only the reader's verdict counts.
        drop(r);
        let _ = writer.join();
        assert!(
            err.to_string()
                .starts_with(&format!("byte {} of the stream differs", CHUNK + 5)),
            "{err}"
        );
    }
}
