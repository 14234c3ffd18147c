//! One knock on a TCP port.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What one connection attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knock {
    /// The port accepted (the connection is closed again at once).
    Accepted,
    /// Nothing listens there: the connection was refused.
    Refused,
    /// Neither within the connect timeout (filtered, unreachable, a full backlog).
    NoAnswer,
}

/// Knocks on one TCP port. The process backend waits with it for a started service's port;
/// the holder watches with it for a port that starts accepting. The loops around it are
/// theirs (each has its own idea of when to stop); the knock and its reading are this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortProbe {
    pub addr: SocketAddr,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

impl PortProbe {
    pub const fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        PortProbe {
            addr,
            connect_timeout,
        }
    }

    /// One blocking connection attempt. Run it on a thread that may block.
    pub fn knock(&self) -> Knock {
        match TcpStream::connect_timeout(&self.addr, self.connect_timeout) {
            Ok(_) => Knock::Accepted,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Knock::Refused,
            Err(_) => Knock::NoAnswer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_accepts_and_a_closed_one_refuses() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let probe = PortProbe::new(addr, Duration::from_secs(1));
        assert_eq!(probe.knock(), Knock::Accepted);
        drop(listener);
        assert_eq!(probe.knock(), Knock::Refused);
        Ok(())
    }
}
