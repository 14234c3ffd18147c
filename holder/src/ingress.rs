//! How a held connection names its service. Three ways in, one queue per service:
//!
//! ```text
//!  PROXY v2 listener     --TLV 0xE0 in the header--------------\
//!  per-service port      --the port's own service---------------+--> hold (queue per service)
//!  transparent listener  --original destination, via the map--/
//!  (IP_TRANSPARENT, fed by a TPROXY rule)
//! ```
//!
//! Pure: the flag syntax (`NAME=ADDR`), its validation, and the destination -> service
//! map. Binding the sockets is the server's business.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::proxy_header::check_service_name;

/// `NAME=ADDR`, as `--service-port` and `--transparent-service` take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddr {
    pub service: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIngress {
    #[error("{0:?}: expected NAME=ADDRESS, e.g. db=127.0.0.1:15432")]
    NoEquals(String),
    #[error("{value:?}: service name {name:?} {problem}")]
    BadName {
        value: String,
        name: String,
        problem: &'static str,
    },
    #[error("{value:?}: {addr:?} is not an IP:PORT address")]
    BadAddr { value: String, addr: String },
    #[error("--service-port: service {0:?} is given twice")]
    DuplicateService(String),
    #[error("--transparent-service: destination {addr} is given twice ({first:?} and {second:?})")]
    DuplicateDestination {
        addr: SocketAddr,
        first: String,
        second: String,
    },
    #[error(
        "--transparent-service: destination {0} has port 0; a client never connects to port 0"
    )]
    PortZero(SocketAddr),
    #[error("--transparent-service needs --transparent (the listener the TPROXY rule feeds)")]
    MapWithoutListener,
    #[error("--transparent needs at least one --transparent-service NAME=IP:PORT")]
    ListenerWithoutMap,
}

impl FromStr for ServiceAddr {
    type Err = InvalidIngress;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (name, addr) = value
            .split_once('=')
            .ok_or_else(|| InvalidIngress::NoEquals(value.to_string()))?;
        check_service_name(name).map_err(|problem| InvalidIngress::BadName {
            value: value.to_string(),
            name: name.to_string(),
            problem,
        })?;
        let addr = addr.parse().map_err(|_| InvalidIngress::BadAddr {
            value: value.to_string(),
            addr: addr.to_string(),
        })?;
        Ok(ServiceAddr {
            service: name.to_string(),
            addr,
        })
    }
}

/// Per-service ports name each service once.
pub fn check_service_ports(ports: &[ServiceAddr]) -> Result<(), InvalidIngress> {
    let mut seen = std::collections::HashSet::new();
    for p in ports {
        if !seen.insert(p.service.as_str()) {
            return Err(InvalidIngress::DuplicateService(p.service.clone()));
        }
    }
    Ok(())
}

/// Original destination -> service, for the transparent listener. Several destinations
/// may name one service (a ClusterIP and a node port, say); one destination names one
/// service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationMap(HashMap<SocketAddr, String>);

impl DestinationMap {
    pub fn try_new(entries: &[ServiceAddr]) -> Result<Self, InvalidIngress> {
        let mut map: HashMap<SocketAddr, String> = HashMap::with_capacity(entries.len());
        for e in entries {
            let addr = canonical(e.addr);
            if addr.port() == 0 {
                return Err(InvalidIngress::PortZero(e.addr));
            }
            if let Some(first) = map.get(&addr) {
                return Err(InvalidIngress::DuplicateDestination {
                    addr,
                    first: first.clone(),
                    second: e.service.clone(),
                });
            }
            map.insert(addr, e.service.clone());
        }
        Ok(DestinationMap(map))
    }

    /// The service a connection to `dst` (its socket's local address) is for.
    pub fn service(&self, dst: SocketAddr) -> Option<&str> {
        self.0.get(&canonical(dst)).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IPv4 client on a dual-stack IPv6 socket shows as `[::ffff:a.b.c.d]`; the map is
/// written with plain IPv4 addresses.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What a listener's connections are for.
#[derive(Debug, Clone)]
pub enum Ingress {
    /// Each connection starts with a PROXY v2 header whose TLV 0xE0 names the service.
    Proxy,
    /// Every connection is for this service; the first byte is the client's.
    Port(Arc<str>),
    /// The connection's original destination names the service.
    Transparent(Arc<DestinationMap>),
}

impl Ingress {
    /// A short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Ingress::Proxy => "proxy",
            Ingress::Port(_) => "port",
            Ingress::Transparent(_) => "transparent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> ServiceAddr {
        s.parse().expect("valid NAME=ADDR")
    }

    #[test]
    fn flags_parse_name_and_address() {
        let p = sa("db=127.0.0.1:15432");
        assert_eq!(p.service, "db");
        assert_eq!(p.addr, "127.0.0.1:15432".parse().expect("addr"));
        assert_eq!(sa("v6.svc=[::1]:80").addr.port(), 80);
    }

    #[test]
    fn bad_flags_name_the_value_and_the_problem() {
        let e = "db".parse::<ServiceAddr>().expect_err("no =");
        assert_eq!(
            e.to_string(),
            r#""db": expected NAME=ADDRESS, e.g. db=127.0.0.1:15432"#
        );
        let e = "d b=127.0.0.1:1".parse::<ServiceAddr>().expect_err("space");
        assert_eq!(
            e.to_string(),
            r#""d b=127.0.0.1:1": service name "d b" has characters outside [A-Za-z0-9._-]"#
        );
        let e = "=127.0.0.1:1".parse::<ServiceAddr>().expect_err("empty");
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = "db=localhost:5432"
            .parse::<ServiceAddr>()
            .expect_err("name");
        assert_eq!(
            e.to_string(),
            r#""db=localhost:5432": "localhost:5432" is not an IP:PORT address"#
        );
    }

    #[test]
    fn a_service_port_is_given_once() {
        let ports = [
            sa("a=127.0.0.1:1"),
            sa("b=127.0.0.1:2"),
            sa("a=127.0.0.1:3"),
        ];
        assert_eq!(
            check_service_ports(&ports),
            Err(InvalidIngress::DuplicateService("a".into()))
        );
        assert_eq!(check_service_ports(&ports[..2]), Ok(()));
    }

    #[test]
    fn destinations_map_to_services() {
        let m = DestinationMap::try_new(&[
            sa("db=10.96.0.10:5432"),
            sa("db=10.0.0.5:30432"),
            sa("cache=10.96.0.11:6379"),
        ])
        .expect("valid map");
        assert_eq!(m.service("10.96.0.10:5432".parse().expect("a")), Some("db"));
        assert_eq!(m.service("10.0.0.5:30432".parse().expect("a")), Some("db"));
        assert_eq!(
            m.service("10.96.0.11:6379".parse().expect("a")),
            Some("cache")
        );
        // Same address, other port: not mapped.
        assert_eq!(m.service("10.96.0.10:5433".parse().expect("a")), None);
        // An IPv4 destination seen on a dual-stack socket.
        assert_eq!(
            m.service("[::ffff:10.96.0.10]:5432".parse().expect("a")),
            Some("db")
        );
    }

    #[test]
    fn a_destination_names_one_service_and_a_real_port() {
        let e = DestinationMap::try_new(&[sa("a=10.0.0.1:80"), sa("b=10.0.0.1:80")])
            .expect_err("twice");
        assert_eq!(
            e.to_string(),
            r#"--transparent-service: destination 10.0.0.1:80 is given twice ("a" and "b")"#
        );
        let e = DestinationMap::try_new(&[sa("a=10.0.0.1:0")]).expect_err("port 0");
        assert_eq!(
            e,
            InvalidIngress::PortZero("10.0.0.1:0".parse().expect("a"))
        );
    }
}
