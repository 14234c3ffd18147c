//! What the controller and the holder agree on, in one place. Both crates build on these
//! names; the round trip (the controller's holder endpoint, read by the holder, gives the
//! policy back) is tested in `e2e/tests/contract.rs`, where both crates meet.
//!
//! ```text
//!  Envoy --PROXY v2, TLV 0xE0 = service name--------------------------> holder
//!  controller --EDS: holder endpoint, metadata----------------------> Envoy, holder
//!      envoy.transport_socket_match: {zenvoy_holder: true}   Envoy: add the PROXY header
//!      zenvoy: {holdTimeoutMs, maxPending, dial?}            holder: this service's policy
//!  holder --MetricsService push: zenvoy_holder_pending{service}-----> controller
//! ```
//!
//! Plain data and constants only: no dependency, so the controller's pure core can use it.
//! The Envoy protobuf types that carry these values are built and read by each side's
//! xDS adapter.

use std::net::SocketAddr;
use std::time::Duration;

/// PROXY v2 custom TLV type (PP2_TYPE_MIN_CUSTOM) whose value is the service name: Envoy
/// adds it on connections to the holder endpoint; the holder reads it to know the service.
pub const TLV_SERVICE: u8 = 0xE0;

/// Longest service name: a DNS subdomain (RFC 1123), also the TLV's bound.
pub const MAX_SERVICE_NAME_LEN: usize = 253;

/// Endpoint metadata namespace Envoy reads for a cluster's `transport_socket_matches`.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Key in [`TRANSPORT_SOCKET_MATCH`] marking the holder endpoint (value `true`): Envoy
/// gives that endpoint the PROXY v2 transport socket, and the holder skips it when it
/// reads the real upstreams out of an assignment.
pub const HOLDER_MARK: &str = "zenvoy_holder";

/// Endpoint metadata namespace of the holder endpoint that carries [`HoldPolicy`].
pub const HOLD_POLICY: &str = "zenvoy";

/// Key in [`HOLD_POLICY`]: how long a held connection waits, in milliseconds (a number).
pub const HOLD_TIMEOUT_MS: &str = "holdTimeoutMs";

/// Key in [`HOLD_POLICY`]: connections held at once for the service (a number).
pub const MAX_PENDING: &str = "maxPending";

/// Key in [`HOLD_POLICY`], optional: the upstream the holder may dial on its own once it
/// starts accepting (a string `ip:port`). The controller sets it only for a service
/// whose whole readiness is its port accepting (a `tcp` check, a fixed address), so the
/// holder need not wait for the controller's probe and an xDS round trip to relay.
pub const DIAL: &str = "dial";

/// Gauge the holder pushes (and serves on `/metrics`) per service: connections held
/// now. Label [`PENDING_LABEL`] names the service.
pub const HOLDER_PENDING: &str = "zenvoy_holder_pending";

/// The label of [`HOLDER_PENDING`] that names the service.
pub const PENDING_LABEL: &str = "service";

/// The xDS type both sides speak for a service's endpoints.
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// How the holder treats one service's connections. The controller puts it on the
/// holder endpoint of the service's assignment, so each service's values reach every
/// holder with the assignment itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    pub hold_timeout: Duration,
    pub max_pending: u32,
    /// [`DIAL`]: the upstream the holder may dial itself (see there).
    pub dial: Option<SocketAddr>,
}

/// A metadata field's value, as a protobuf `Struct` holds it: a number (a double) or a
/// string.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Number(f64),
    Text(String),
}

impl HoldPolicy {
    /// The metadata fields: the numbers, and [`DIAL`] when there is one.
    /// Milliseconds of any timeout below 2^53 ms (285,000 years) are exact as f64.
    #[allow(clippy::cast_precision_loss)]
    pub fn fields(&self) -> Vec<(&'static str, Field)> {
        let mut fields = vec![
            (
                HOLD_TIMEOUT_MS,
                Field::Number(self.hold_timeout.as_millis() as f64),
            ),
            (MAX_PENDING, Field::Number(f64::from(self.max_pending))),
        ];
        if let Some(dial) = self.dial {
            fields.push((DIAL, Field::Text(dial.to_string())));
        }
        fields
    }

    /// Read the policy back from the metadata fields; `None` when a number is missing or
    /// not a finite, non-negative number. Values past the types' range saturate. A
    /// [`DIAL`] that is missing or not an `ip:port` is none.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn from_fields(field: impl Fn(&str) -> Option<Field>) -> Option<Self> {
        let get = |key: &str| match field(key)? {
            Field::Number(n) if n.is_finite() && n >= 0.0 => Some(n),
            _ => None,
        };
        Some(HoldPolicy {
            // `as` saturates: a hostile 1e300 becomes u64::MAX ms, not a panic.
            hold_timeout: Duration::from_millis(get(HOLD_TIMEOUT_MS)? as u64),
            max_pending: get(MAX_PENDING)? as u32,
            dial: match field(DIAL) {
                Some(Field::Text(t)) => t.parse().ok(),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(fields: &'a [(&'static str, Field)]) -> impl Fn(&str) -> Option<Field> + 'a {
        move |k| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn numbers(fields: &[(&'static str, f64)]) -> Vec<(&'static str, Field)> {
        fields
            .iter()
            .map(|(k, n)| (*k, Field::Number(*n)))
            .collect()
    }

    #[test]
    fn fields_read_back_as_the_policy() {
        let p = HoldPolicy {
            hold_timeout: Duration::from_millis(2500),
            max_pending: 7,
            dial: None,
        };
        assert_eq!(HoldPolicy::from_fields(lookup(&p.fields())), Some(p));
    }

    #[test]
    fn the_dial_field_reads_back_and_garbage_is_none() {
        let p = HoldPolicy {
            hold_timeout: Duration::from_millis(1),
            max_pending: 1,
            dial: Some("127.0.0.1:5432".parse().expect("addr")),
        };
        let fields = p.fields();
        assert!(fields.contains(&(DIAL, Field::Text("127.0.0.1:5432".into()))));
        let back = HoldPolicy::from_fields(lookup(&fields));
        assert_eq!(back, Some(p));
        let mut garbage = numbers(&[(HOLD_TIMEOUT_MS, 1.0), (MAX_PENDING, 1.0)]);
        garbage.push((DIAL, Field::Text("not an address".into())));
        let none = HoldPolicy::from_fields(lookup(&garbage)).expect("the numbers are fine");
        assert_eq!(none.dial, None);
        garbage.pop();
        assert_eq!(
            HoldPolicy::from_fields(lookup(&garbage)).map(|p| p.dial),
            Some(None)
        );
    }

    #[test]
    fn missing_negative_or_non_finite_fields_give_no_policy() {
        for bad in [
            vec![(HOLD_TIMEOUT_MS, 1.0)],
            vec![(HOLD_TIMEOUT_MS, -1.0), (MAX_PENDING, 1.0)],
            vec![(HOLD_TIMEOUT_MS, 1.0), (MAX_PENDING, f64::NAN)],
            vec![(HOLD_TIMEOUT_MS, f64::INFINITY), (MAX_PENDING, 1.0)],
        ] {
            assert_eq!(
                HoldPolicy::from_fields(lookup(&numbers(&bad))),
                None,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn huge_values_saturate() {
        let p = HoldPolicy::from_fields(lookup(&numbers(&[
            (HOLD_TIMEOUT_MS, 1e300),
            (MAX_PENDING, 1e12),
        ])))
        .expect("finite, non-negative");
        assert_eq!(p.hold_timeout, Duration::from_millis(u64::MAX));
        assert_eq!(p.max_pending, u32::MAX);
    }
}
