//! The `postgres` checks: Postgres' answer to a StartupMessage, or with `dataDir` the
//! status line of its `postmaster.pid`. The I/O is here; the reading of what the server
//! said is `zenvoy_core::ready` ([`pgwire`], [`postmaster`]).

use std::net::SocketAddr;

use zenvoy_core::ready::pgwire::{self, Answer};
use zenvoy_core::ready::postmaster;

use super::CheckError;

/// One `postgres` check: a StartupMessage, and the server's first answer read as
/// `PQping` reads it ([`pgwire::answer`]). The connection is dropped before any session.
/// Public for the wake benchmark, whose in-process Postgres client asks the same.
pub async fn postgres_ready(
    upstream: SocketAddr,
    user: &str,
    database: &str,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to {upstream}: {e}"))?;
    s.write_all(&pgwire::startup_message(user, database))
        .await
        .map_err(|e| format!("writing to {upstream}: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    loop {
        match pgwire::answer(&buf) {
            Answer::Ready => return Ok(()),
            Answer::NotReady(said) => return Err(format!("Postgres at {upstream}: {said}")),
            Answer::Garbage(what) => return Err(format!("{upstream} answered {what}")),
            Answer::Incomplete if buf.len() >= pgwire::MAX_ANSWER => {
                return Err(format!("{upstream} sent no whole answer"));
            }
            Answer::Incomplete => {}
        }
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading from {upstream}: {e}"))?;
        if n == 0 {
            return Err(format!("{upstream} closed the connection before answering"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One `postgres` check with `dataDir`: the status line of its `postmaster.pid`
/// ([`postmaster`]); no connection. Run only once the port accepts, so the file is the
/// running postmaster's, not one a crash left. A file the controller may not read, or a
/// `dataDir` that does not exist, fails the wake at once: no later try would pass.
pub(super) async fn postmaster_ready(
    dir: &std::path::Path,
    spawned: Option<i64>,
) -> Result<(), CheckError> {
    use std::io::ErrorKind;
    use tokio::io::AsyncReadExt;
    let path = dir.join("postmaster.pid");
    let shown = path.display();
    let unreadable = |e: std::io::Error| {
        let fatal = e.kind() == ErrorKind::PermissionDenied
            || (e.kind() == ErrorKind::NotFound && !dir.is_dir());
        let hint = match e.kind() {
            ErrorKind::PermissionDenied => {
                ": run the controller as the server's user, or give its group read access \
                 (initdb --allow-group-access), or use the connecting check ({postgres: {user}})"
            }
            ErrorKind::NotFound if fatal => ": dataDir is not a directory",
            _ => "",
        };
        CheckError {
            said: format!("cannot read {shown}: {e}{hint}"),
            fatal,
        }
    };
    let file = tokio::fs::File::open(&path).await.map_err(unreadable)?;
    // Bytes, not a String: its directory lines need not be UTF-8.
    let mut bytes = Vec::new();
    file.take(postmaster::MAX_LEN as u64)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    let pid_file =
        postmaster::parse(&String::from_utf8_lossy(&bytes)).map_err(|e| format!("{shown}: {e}"))?;
    Ok(postmaster::ready(&pid_file, spawned).map_err(|e| format!("{shown}: {e}"))?)
}
