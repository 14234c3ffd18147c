//! The state file and adoption: what runs is written down (service, pid, the process's
//! start time), so that a controller started after one that died without stopping its
//! services adopts each process still alive instead of starting a second one, and stops
//! those of services no longer configured.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::{ProcessBackend, Running};

/// A process as the state file names it: its pid and its start time (clock ticks since
/// boot, `/proc/<pid>/stat` field 22), which a recycled pid does not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub pid: i32,
    pub start: u64,
}

impl Identity {
    /// The identity of a live process, None when it is gone (or a zombie).
    pub fn of(pid: i32) -> Option<Identity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        // Field 22 of the whole line is the 20th after the comm.
        let start = fields.get(19)?.parse().ok()?;
        Some(Identity { pid, start })
    }

    pub(super) fn alive(&self) -> bool {
        Identity::of(self.pid) == Some(*self)
    }
}

impl ProcessBackend {
    /// Keep what runs in `path`, and adopt the processes a previous controller left
    /// running (see the module's doc). Processes it names for services that are no
    /// longer configured are stopped. An unreadable file is logged and starts empty.
    pub fn with_state_file(mut self, path: PathBuf) -> Self {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                warn!(dir = %dir.display(), error = %e, "cannot make the state file's directory");
            }
        }
        let state = StateFile { path };
        let mut adopted = Vec::new();
        for (service, id) in state.load() {
            if !id.alive() {
                continue;
            }
            match self.services.get(&service) {
                Some(instance) => match instance.child.try_lock() {
                    Ok(mut child) => {
                        info!(%service, pid = id.pid, "adopted the process a previous controller left running");
                        *child = Some(Running::Adopted(id));
                        adopted.push(service);
                    }
                    Err(_) => warn!(%service, "cannot adopt: instance busy"),
                },
                None => {
                    warn!(%service, pid = id.pid, "stopping a process of a service no longer configured");
                    let _ = killpg(Pid::from_raw(id.pid), Signal::SIGTERM);
                }
            }
        }
        self.state = Some(Arc::new(state));
        self.adopted = Arc::new(adopted);
        self.save_blocking();
        self
    }

    /// Write what runs now (never awaits: at start, before any task runs).
    fn save_blocking(&self) {
        let Some(state) = &self.state else { return };
        let mut running = HashMap::new();
        for (name, instance) in self.services.iter() {
            if let Ok(child) = instance.child.try_lock() {
                if let Some(id) = child.as_ref().and_then(Running::identity) {
                    running.insert(name.clone(), id);
                }
            }
        }
        state.save(&running);
    }

    /// Write what runs now.
    pub(super) async fn save(&self) {
        let Some(state) = &self.state else { return };
        let mut running = HashMap::new();
        for (name, instance) in self.services.iter() {
            if let Some(id) = instance
                .child
                .lock()
                .await
                .as_ref()
                .and_then(Running::identity)
            {
                running.insert(name.clone(), id);
            }
        }
        state.save(&running);
    }
}

/// The state file: service -> process identity, as JSON, replaced whole on each change.
#[derive(Debug)]
pub(super) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    fn load(&self) -> HashMap<String, Identity> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                warn!(path = %self.path.display(), error = %e, "state file unreadable; adopting nothing");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the state file; adopting nothing");
                HashMap::new()
            }
        }
    }

    /// Write atomically (a temporary file renamed over it): a crash mid-write leaves
    /// the previous state, never half a file.
    fn save(&self, running: &HashMap<String, Identity>) {
        let written = serde_json::to_vec(running)
            .map_err(std::io::Error::other)
            .and_then(|bytes| zenvoy_base::write_atomically(&self.path, &bytes));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "cannot write the state file: a controller restarted after a crash would not adopt these processes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tells_a_live_process_from_a_recycled_pid() {
        let me = Identity::of(i32::try_from(std::process::id()).expect("pid")).expect("alive");
        assert!(me.alive());
        let recycled = Identity {
            start: me.start + 1,
            ..me
        };
        assert!(!recycled.alive(), "same pid, another start time");
        assert_eq!(Identity::of(i32::MAX), None);
    }

    #[test]
    fn the_state_file_round_trips_and_a_broken_one_adopts_nothing() {
        let dir = std::env::temp_dir().join(format!("zenvoy-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let state = StateFile {
            path: dir.join("state.json"),
        };
        assert!(state.load().is_empty(), "no file yet");
        let running = HashMap::from([("pg".to_string(), Identity { pid: 42, start: 7 })]);
        state.save(&running);
        assert_eq!(state.load(), running);
        std::fs::write(&state.path, "{not json").expect("write");
        assert!(state.load().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
