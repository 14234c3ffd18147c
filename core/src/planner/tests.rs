//! The planner's decisions, one test each, with made-up instants and a table of ACKs:
//! the harness ([`World`]) here, the front door's tests in `tests/front_door.rs`, the
//! lifecycle's in `tests/lifecycle.rs`.

use std::collections::HashMap;

use super::*;
use crate::model::{Observation, Protocol, Stats, VirtualHost};

mod front_door;
mod lifecycle;

const HOLDER: &str = "127.0.0.1:15001";
const HTTP: &str = "127.0.0.1:10080";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn policy() -> Policy {
    Policy {
        idle_timeout: Duration::from_secs(15),
        hold_timeout: Duration::from_secs(30),
        min_warm: Duration::ZERO,
        wake_timeout: Duration::from_secs(60),
        park_ack_timeout: Duration::from_secs(5),
        max_pending: 100,
        ..Policy::default()
    }
}

fn tcp(name: &str, port: u16) -> ServiceDef {
    ServiceDef {
        name: name.to_string(),
        protocol: Protocol::Tcp,
        listen: Some(SocketAddr::new(addr(HOLDER).ip(), port)),
        domains: Vec::new(),
        policy: policy(),
        in_cluster: None,
        group: None,
        dial: None,
    }
}

fn http(name: &str) -> ServiceDef {
    ServiceDef {
        name: name.to_string(),
        protocol: Protocol::Http,
        listen: None,
        domains: vec![name.to_string(), format!("{name}.default")],
        policy: policy(),
        in_cluster: None,
        group: None,
        dial: None,
    }
}

/// What the connected Envoys have ACKed: per service, the lowest version every Envoy
/// has ACKed (None: some Envoy has not asked for it).
#[derive(Default)]
struct Envoys {
    connected: usize,
    acked_by_all: HashMap<String, u64>,
}

impl Acks for Envoys {
    fn envoys(&self) -> usize {
        self.connected
    }
    fn warm_everywhere(&self, service: &str, version: u64) -> bool {
        self.connected == 0
            || self
                .acked_by_all
                .get(service)
                .is_some_and(|v| *v >= version)
    }
    fn all_acked(&self, service: &str, version: u64) -> bool {
        self.acked_by_all.get(service).is_none_or(|v| *v >= version)
    }
}

/// The planner with an executor that gives each published assignment the next version
/// (as the xDS cache does) and keeps every effect.
struct World {
    planner: Planner,
    envoys: Envoys,
    base: Instant,
    version: u64,
    /// Versions of the last assignment published per service.
    published: HashMap<String, u64>,
    effects: Vec<Effect>,
}

impl World {
    /// A world whose nodes never go silent long enough to expire (a real holder sends a
    /// heartbeat; these tests push only what they test).
    fn new(leading: bool, http: bool, services: Vec<ServiceDef>) -> Self {
        Self::with_expiry(leading, http, services, Duration::from_secs(24 * 3600))
    }

    fn with_expiry(
        leading: bool,
        http: bool,
        services: Vec<ServiceDef>,
        stats_expiry: Duration,
    ) -> Self {
        let settings = Settings {
            holder: addr(HOLDER),
            http: http.then(|| addr(HTTP)),
            leading,
            stats_expiry,
            warm_timeout: Duration::from_secs(15),
            in_cluster_settle: Duration::from_secs(2),
        };
        let mut w = World {
            planner: Planner::new(settings, services.len()),
            envoys: Envoys::default(),
            base: crate::test_clock::origin(),
            version: 100,
            published: HashMap::new(),
            effects: Vec::new(),
        };
        for def in services {
            let effects = w.planner.add(def);
            w.run(effects);
        }
        let effects = w.planner.started();
        w.run(effects);
        w
    }

    fn at(&self, secs: f64) -> Instant {
        self.base + Duration::from_secs_f64(secs)
    }

    /// Carry out effects as the runtime does; returns them.
    fn run(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        for e in &effects {
            if let Effect::PublishEndpoints { service, endpoints } = e {
                self.version += 1;
                self.published.insert(service.clone(), self.version);
                self.planner.published(service, endpoints, self.version);
            }
        }
        self.effects.extend(effects.iter().cloned());
        effects
    }

    fn event(&mut self, secs: f64, event: Event) -> Vec<Effect> {
        let now = self.at(secs);
        let effects = self.planner.handle(event, now, &self.envoys);
        self.run(effects)
    }

    fn tick(&mut self, secs: f64) -> Vec<Effect> {
        let now = self.at(secs);
        let effects = self.planner.tick(now, &self.envoys);
        self.run(effects)
    }

    fn phase(&self, service: &str) -> Phase {
        self.planner
            .phases()
            .find(|(n, _)| *n == service)
            .map(|(_, p)| p)
            .expect("known service")
    }

    /// Every Envoy ACKs the latest assignment of `service`.
    fn ack(&mut self, service: &str) {
        let v = self.published[service];
        self.envoys.acked_by_all.insert(service.to_string(), v);
    }

    fn pending(&mut self, secs: f64, service: &str, n: f64) -> Vec<Effect> {
        self.event(
            secs,
            Event::Metrics {
                node: "holder#1".into(),
                observations: vec![(service.to_string(), Observation::HolderPending(n))],
            },
        )
    }

    /// An Envoy sample: `open` connections, counters at `c`.
    fn sample(&mut self, secs: f64, service: &str, open: f64, c: f64) -> Vec<Effect> {
        self.sample_from("envoy#2", secs, service, open, c)
    }

    fn sample_from(
        &mut self,
        node: &str,
        secs: f64,
        service: &str,
        open: f64,
        c: f64,
    ) -> Vec<Effect> {
        self.event(
            secs,
            Event::Metrics {
                node: node.into(),
                observations: vec![(
                    service.to_string(),
                    Observation::Envoy(Stats {
                        open,
                        counters: [c, 0.0, 0.0, 0.0],
                    }),
                )],
            },
        )
    }

    /// Wake `service` from parked at `secs` and report it ready with `endpoints`.
    fn wake(&mut self, secs: f64, service: &str, endpoints: &[&str]) {
        let effects = self.pending(secs, service, 1.0);
        let wake = wake_number(&effects).expect("a wake");
        self.event(
            secs + 0.5,
            Event::WakeDone {
                service: service.to_string(),
                wake,
                result: Ok(endpoints.iter().map(|e| addr(e)).collect()),
            },
        );
        self.pending(secs + 0.6, service, 0.0);
        assert_eq!(self.phase(service), Phase::Awake);
    }
}

fn wake_number(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::Wake { wake, .. } => Some(*wake),
        _ => None,
    })
}

fn listeners(effects: &[Effect]) -> Vec<&str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishListener { service, .. } => Some(service.as_str()),
            _ => None,
        })
        .collect()
}

fn assignments<'a>(effects: &'a [Effect], service: &str) -> Vec<&'a Endpoints> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishEndpoints {
                service: s,
                endpoints,
            } if s == service => Some(endpoints),
            _ => None,
        })
        .collect()
}

fn routes(effects: &[Effect]) -> Option<&Vec<VirtualHost>> {
    effects.iter().rev().find_map(|e| match e {
        Effect::PublishRoutes(hosts) => Some(hosts),
        _ => None,
    })
}

fn parks(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Park { .. }))
        .count()
}

fn holder(p: Policy) -> Endpoints {
    Endpoints::Holder(addr(HOLDER), p.hold(None))
}

fn drift(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Record(Record::Drift { .. })))
}

fn steer_effects(effects: &[Effect], service: &str) -> Vec<Steer> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Steer { service: s, steer } if s == service => Some(*steer),
            _ => None,
        })
        .collect()
}

/// A port of the Service `pg` (one service per port, one workload for all).
fn port(name: &str) -> ServiceDef {
    ServiceDef {
        listen: None,
        group: Some("db/deployment/pg".into()),
        ..tcp(name, 0)
    }
}

/// The wakes asked for in `effects`, by service.
fn woken(effects: &[Effect]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Wake { service, wake, .. } => Some((service.clone(), *wake)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

impl World {
    /// Each of `wakes` reports ready at `secs`, the i-th on port 5432 + i.
    fn ready(&mut self, secs: f64, wakes: &[(String, u64)]) {
        for (i, (service, wake)) in (0u16..).zip(wakes) {
            self.event(
                secs,
                Event::WakeDone {
                    service: service.clone(),
                    wake: *wake,
                    result: Ok(vec![SocketAddr::new(addr("10.0.0.1:0").ip(), 5432 + i)]),
                },
            );
        }
    }
}
