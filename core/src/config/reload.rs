//! What a reload may change: the sections wired in at start must stay; of the services,
//! only timeouts and limits. Pure: two validated configs in, the verdict out.

use super::{Config, Policy};

/// Why a valid new document cannot replace the running one without a restart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: changing it needs a restart (only the timeouts and limits of existing services reload)")]
pub struct NeedsRestart {
    /// Path in the document, e.g. `services[2].upstream` or `controller`.
    pub field: String,
}

/// The sections wired in at start (addresses, the HTTP listener, scrape targets) are
/// unchanged: the test every reload passes first, in either mode.
///
/// # Errors
/// [`NeedsRestart`] naming the first section that differs.
pub fn same_top_sections(old: &Config, new: &Config) -> Result<(), NeedsRestart> {
    let changed = if old.controller != new.controller {
        "controller"
    } else if old.holder != new.holder {
        "holder"
    } else if old.envoy != new.envoy {
        "envoy"
    } else if old.run_dir != new.run_dir {
        "runDir"
    } else if old.in_cluster != new.in_cluster {
        "inCluster"
    } else if old.http != new.http {
        "http"
    } else if old.scrape != new.scrape {
        "scrape"
    } else {
        return Ok(());
    };
    Err(NeedsRestart {
        field: changed.to_string(),
    })
}

/// What a reload changes: per service whose policy differs, the new policy. Everything
/// else must be unchanged: listeners, addresses, commands and the set of services are
/// wired into Envoy, the holder and the backend at start.
///
/// # Errors
/// [`NeedsRestart`] naming the first field that differs and cannot be reloaded.
pub fn policy_changes(old: &Config, new: &Config) -> Result<Vec<(String, Policy)>, NeedsRestart> {
    let restart = |field: &str| NeedsRestart {
        field: field.to_string(),
    };
    same_top_sections(old, new)?;
    if old.services.len() != new.services.len() {
        return Err(restart("services"));
    }
    let mut changes = Vec::new();
    for (i, (o, n)) in old.services.iter().zip(&new.services).enumerate() {
        let at = |key: &str| restart(&format!("services[{i}].{key}"));
        if o.name != n.name {
            return Err(at("name"));
        }
        if o.protocol != n.protocol {
            return Err(at("protocol"));
        }
        if o.listen != n.listen {
            return Err(at("listen"));
        }
        if o.namespace != n.namespace || o.domains != n.domains {
            return Err(at("domains"));
        }
        if o.upstream != n.upstream {
            return Err(at("upstream"));
        }
        if o.command != n.command {
            return Err(at("command"));
        }
        let (op, np) = (&o.process, &n.process);
        let process = [
            ("ready", op.ready != np.ready),
            ("log", op.log != np.log),
            ("env", op.env != np.env),
            ("cwd", op.cwd != np.cwd),
            ("stopSignal", op.stop_signal != np.stop_signal),
            ("stopGrace", op.stop_grace != np.stop_grace),
        ];
        if let Some((key, _)) = process.iter().find(|(_, changed)| *changed) {
            return Err(at(key));
        }
        if o.policy != n.policy {
            changes.push((n.name.clone(), n.policy));
        }
    }
    Ok(changes)
}
