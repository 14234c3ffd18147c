//! `inCluster`: where each Service port's proxy port is kept across controller restarts:
//! the ConfigMap `zenvoy-ports` in the controller's own namespace, one key per zenvoy
//! service (`<name>.<namespace>`, `<name>.<namespace>_<port>`) whose value is its port.
//! The index allocates ([`super::ports`]); this writes what it allocated and released
//! (the leader only, batched, retried with a backoff) and reads it all back at start.
//! The controller's EndpointSlices are then free to go while a Service is awake.
//!
//! ```text
//!  index --Change::Port--> PortStore::record --> writer (leader) --merge patch--> zenvoy-ports
//!  start: load (zenvoy-ports, else the slices an older controller kept) --> Ports::load
//!  leadership gained: the whole map written, keys no longer allocated removed
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};
use zenvoy_base::Backoff;

use super::api::{bounded, sleep_or_never, ApiError};

/// The ConfigMap's name (in the controller's namespace).
pub const NAME: &str = "zenvoy-ports";

/// The pause before a failed read or write of the ConfigMap is tried again: 500 ms,
/// doubling up to 30 s, back to 500 ms after a success.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The ports in a `zenvoy-ports` ConfigMap's data, and the keys whose value is not a
/// port (left out, to be allocated again). Pure.
pub fn parse(data: &BTreeMap<String, String>) -> (Vec<(String, u16)>, Vec<String>) {
    let mut ports = Vec::new();
    let mut bad = Vec::new();
    for (service, value) in data {
        match value.trim().parse::<u16>() {
            Ok(p) if p > 0 => ports.push((service.clone(), p)),
            _ => bad.push(service.clone()),
        }
    }
    (ports, bad)
}

/// The merge patch that makes the ConfigMap's data say `ports` for each key in `keys`:
/// the port, or `null` (the key goes) for a key no longer allocated. Pure.
pub fn patch<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    ports: &BTreeMap<String, u16>,
) -> Value {
    let data: Map<String, Value> = keys
        .into_iter()
        .map(|k| {
            let v = ports
                .get(k)
                .map_or(Value::Null, |p| Value::from(p.to_string()));
            (k.clone(), v)
        })
        .collect();
    json!({ "data": data })
}

/// Read the ports back, retrying until the API answers (ports must not move because the
/// API was slow at start). No ConfigMap yet: none.
pub async fn load(client: &Client, namespace: &str) -> Vec<(String, u16)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    loop {
        match bounded(api.get_opt(NAME)).await {
            Ok(cm) => {
                let data = cm.and_then(|c| c.data).unwrap_or_default();
                let (ports, bad) = parse(&data);
                for key in bad {
                    warn!(service = %key, configmap = NAME, "inCluster: not a port; it gets a new one");
                }
                info!(ports = ports.len(), "inCluster: proxy ports read back");
                return ports;
            }
            Err(e) => {
                warn!(error = %e, configmap = NAME, "inCluster: cannot read the proxy ports; trying again");
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Every allocation, as the index has it.
    ports: BTreeMap<String, u16>,
    /// Keys to write (their port, or their removal).
    dirty: BTreeSet<String>,
    /// The whole map is to be written (leadership gained).
    whole: bool,
}

/// The writer's handle: [`PortStore::record`] what the index allocated or released.
#[derive(Clone)]
pub struct PortStore {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl PortStore {
    /// Start the writer with what was loaded (`ports`): it writes only while `leader`
    /// reads true, and the whole map each time it becomes true.
    pub fn start<F>(
        client: Client,
        namespace: String,
        ports: &BTreeMap<String, u16>,
        leader: watch::Receiver<bool>,
        stopped: F,
    ) -> (PortStore, tokio::task::JoinHandle<()>)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let store = PortStore {
            state: Arc::new(Mutex::new(State {
                ports: ports.clone(),
                ..State::default()
            })),
            wake: Arc::default(),
        };
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let task = tokio::spawn(store.clone().write_loop(api, leader, stopped));
        (store, task)
    }

    /// The index allocated `port` to `service` (Some) or released it (None).
    pub fn record(&self, service: &str, port: Option<u16>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match port {
            Some(p) => s.ports.insert(service.to_string(), p),
            None => s.ports.remove(service),
        };
        s.dirty.insert(service.to_string());
        drop(s);
        self.wake.notify_one();
    }

    async fn write_loop(
        self,
        api: Api<ConfigMap>,
        mut leader: watch::Receiver<bool>,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut retry = None;
        loop {
            if *leader.borrow() {
                retry = match self.write(&api).await {
                    Ok(()) => {
                        backoff.succeeded();
                        None
                    }
                    Err(e) => {
                        let pause = backoff.failed();
                        warn!(error = %e, configmap = NAME, retry_in = ?pause, "inCluster: cannot write the proxy ports; trying again");
                        Some(pause)
                    }
                };
            }
            tokio::select! {
                () = &mut stopped => return,
                () = self.wake.notified() => {}
                () = sleep_or_never(retry) => {}
                r = leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if *leader.borrow_and_update() {
                        self.state.lock().unwrap_or_else(PoisonError::into_inner).whole = true;
                    }
                }
            }
        }
    }

    /// Write what is dirty (or the whole map), creating the ConfigMap if it is missing.
    /// On failure the keys stay dirty.
    async fn write(&self, api: &Api<ConfigMap>) -> Result<(), ApiError> {
        let (keys, ports, whole) = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let whole = std::mem::take(&mut s.whole);
            let mut keys = std::mem::take(&mut s.dirty);
            if whole {
                keys.extend(s.ports.keys().cloned());
            }
            (keys, s.ports.clone(), whole)
        };
        if keys.is_empty() && !whole {
            return Ok(());
        }
        let result = self.write_keys(api, keys.clone(), &ports, whole).await;
        if result.is_err() {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.dirty.extend(keys);
            s.whole |= whole;
        }
        result
    }

    async fn write_keys(
        &self,
        api: &Api<ConfigMap>,
        mut keys: BTreeSet<String>,
        ports: &BTreeMap<String, u16>,
        whole: bool,
    ) -> Result<(), ApiError> {
        if whole {
            // Keys the ConfigMap has that this leader did not allocate go.
            if let Some(cm) = bounded(api.get_opt(NAME)).await? {
                keys.extend(cm.data.unwrap_or_default().into_keys());
            }
        }
        let body = patch(&keys, ports);
        match bounded(api.patch(NAME, &PatchParams::default(), &Patch::Merge(&body))).await {
            Ok(_) => {
                debug!(keys = keys.len(), whole, "inCluster: proxy ports written");
                Ok(())
            }
            Err(ApiError::Kube(kube::Error::Api(e))) if e.code == 404 => {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": NAME},
                    "data": ports.iter().map(|(k, p)| (k.clone(), p.to_string())).collect::<BTreeMap<_, _>>(),
                }))
                .map_err(|e| ApiError::Kube(kube::Error::SerdeError(e)))?;
                match bounded(api.create(&PostParams::default(), &cm)).await {
                    Ok(_) => {
                        info!(configmap = NAME, "inCluster: proxy ports ConfigMap created");
                        Ok(())
                    }
                    // Created meanwhile: the next write patches it.
                    Err(ApiError::Kube(kube::Error::Api(e))) if e.code == 409 => {
                        self.state
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .whole = true;
                        self.wake.notify_one();
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_bound_and_a_success_resets_it() {
        let mut b = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let pauses: Vec<Duration> = (0..8).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(500));
        assert_eq!(pauses[1], Duration::from_secs(1));
        assert_eq!(pauses[7], Duration::from_secs(30));
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(500));
    }

    #[test]
    fn ports_are_read_back_and_garbage_is_left_out() {
        let data = BTreeMap::from([
            ("pg.db".to_string(), "20000".to_string()),
            ("pg.db_metrics".to_string(), " 20001 ".to_string()),
            ("web.shop".to_string(), "soon".to_string()),
            ("x.y".to_string(), "0".to_string()),
            ("z.y".to_string(), "70000".to_string()),
        ]);
        let (ports, bad) = parse(&data);
        assert_eq!(
            ports,
            [
                ("pg.db".to_string(), 20000),
                ("pg.db_metrics".to_string(), 20001)
            ]
        );
        assert_eq!(bad, ["web.shop", "x.y", "z.y"]);
    }

    #[test]
    fn a_patch_sets_allocated_keys_and_removes_released_ones() {
        let ports = BTreeMap::from([("pg.db".to_string(), 20000)]);
        let keys = ["pg.db".to_string(), "gone.db".to_string()];
        assert_eq!(
            patch(&keys, &ports),
            json!({"data": {"pg.db": "20000", "gone.db": null}})
        );
    }
}
