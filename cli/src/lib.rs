//! zenvoy: the command people run. Built on the controller's and the holder's libraries
//! and the core's config types (one YAML reader for everything).
//!
//! ```text
//!  zenvoy run --config FILE ----> run: controller + holder (this process), Envoy (child)
//!                                   |  Envoy's bootstrap from `bootstrap`, Envoy from `envoy`
//!  zenvoy envoy-bootstrap ------> bootstrap (pure: options -> JSON)
//!  zenvoy check FILE... --------> check: zenvoy_core::config, errors name field and value
//!  zenvoy status ---------------> status: GET <controller.admin>/status -> table
//! ```
//!
//! [`bootstrap`] is also what the end-to-end harness (`zenvoy-e2e`) starts its Envoys
//! with, so the tests run the bootstrap users get. [`run`] is the command's wiring (its
//! errors are `anyhow`, for people); the other modules are small and typed.

pub mod bootstrap;
pub mod check;
pub mod envoy;
pub mod run;
pub mod status;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address to connect to for one that was bound: an unspecified IP (`0.0.0.0`, `::`)
/// listens on every interface, and loopback is one of them.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
