//! Which services a tick looks at.

use std::collections::BTreeSet;
use std::time::Instant;

use rustc_hash::FxHashMap;

/// Which services a tick looks at: those whose deadline has come (a wake's timeout, an
/// idle timeout, a park's ACK bound) and those that need a look at every tick
/// (connections held, a front door warming, a park waiting for ACKs and samples). The
/// rest cost the tick nothing: at 10,000 mostly idle services, a tick that walked them
/// all was 5 % of a core.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    pub(super) deadlines: BTreeSet<(Instant, String)>,
    due: FxHashMap<String, Instant>,
    pub(super) watched: BTreeSet<String>,
}

impl Schedule {
    pub(super) fn set(&mut self, name: &str, due: Option<Instant>, watched: bool) {
        let old = self.due.get(name).copied();
        if old != due {
            if let Some(old) = old {
                self.deadlines.remove(&(old, name.to_string()));
                self.due.remove(name);
            }
            if let Some(due) = due {
                self.deadlines.insert((due, name.to_string()));
                self.due.insert(name.to_string(), due);
            }
        }
        if watched {
            if !self.watched.contains(name) {
                self.watched.insert(name.to_string());
            }
        } else {
            self.watched.remove(name);
        }
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.set(name, None, false);
    }

    /// The services to look at `now`, each once, by name.
    pub(super) fn visit(&self, now: Instant) -> Vec<String> {
        let mut out: Vec<String> = self.watched.iter().cloned().collect();
        out.extend(
            self.deadlines
                .iter()
                .take_while(|(due, _)| *due <= now)
                .map(|(_, name)| name.clone()),
        );
        out.sort();
        out.dedup();
        out
    }
}
