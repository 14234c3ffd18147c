//! A Service's policy annotations: `zenvoy.io/<configField>` over the config's policy
//! for it, each value checked as the config's own are, errors naming the annotation.

use zenvoy_core::config::{apply_overrides, raw, ConfigError, Policy};

/// Prefix of the annotations that override a service's policy; the keys after it are
/// the config's field names (`zenvoy.io/idleTimeout: 10m`).
pub const PREFIX: &str = "zenvoy.io/";

/// `policy` with the policy annotations present in `annotations` applied
/// (`zenvoy.io/idleTimeout`, `holdTimeout`, `minWarm`, `wakeTimeout`, `parkAckTimeout`,
/// `maxPending`, `tcpIdleTimeout`, `maxConnections`). Other keys are ignored.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the annotation key and value.
pub fn policy<'a>(
    policy: Policy,
    annotations: impl Fn(&str) -> Option<&'a str>,
) -> Result<Policy, ConfigError> {
    let get = |name: &str| annotations(&format!("{PREFIX}{name}")).map(str::to_owned);
    let whole = |name: &str| match get(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                field: format!("{PREFIX}{name}"),
                value: v.clone(),
                reason: format!("not a whole number from 1 to {}", u32::MAX),
            }),
    };
    let max_pending = whole("maxPending")?;
    let max_connections = whole("maxConnections")?;
    apply_overrides(
        policy,
        PREFIX,
        raw::Policy {
            idle_timeout: get("idleTimeout"),
            hold_timeout: get("holdTimeout"),
            min_warm: get("minWarm"),
            wake_timeout: get("wakeTimeout"),
            park_ack_timeout: get("parkAckTimeout"),
            max_pending,
            tcp_idle_timeout: get("tcpIdleTimeout"),
            max_connections,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Policy, ConfigError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        policy(Policy::default(), |k| map.get(k).map(String::as_str))
    }

    #[test]
    fn annotations_override_and_others_are_ignored() {
        let p = with(&[
            ("zenvoy.io/idleTimeout", "10m"),
            ("zenvoy.io/maxPending", " 9 "),
            ("zenvoy.io/enabled", "true"),
            ("other.io/idleTimeout", "1s"),
        ])
        .expect("valid");
        assert_eq!(p.idle_timeout, Duration::from_secs(600));
        assert_eq!(p.max_pending, 9);
        assert_eq!(p.hold_timeout, Policy::default().hold_timeout);
    }

    #[test]
    fn errors_name_the_annotation_and_value() {
        for (k, v) in [
            ("zenvoy.io/maxPending", "-1"),
            ("zenvoy.io/maxPending", "0"),
            ("zenvoy.io/holdTimeout", "0s"),
            ("zenvoy.io/wakeTimeout", "soon"),
            // The overflow that stopped every wake: bounded at parse time now.
            ("zenvoy.io/wakeTimeout", "18446744073709551615s"),
            ("zenvoy.io/idleTimeout", "400d"),
            ("zenvoy.io/maxConnections", "99999999999"),
            ("zenvoy.io/maxPending", "2000000"),
        ] {
            let e = with(&[(k, v)]).expect_err(k).to_string();
            assert!(
                e.contains(k) && e.contains(v.trim()),
                "{e} should name {k}={v}"
            );
        }
    }
}
