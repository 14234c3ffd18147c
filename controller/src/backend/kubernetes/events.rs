//! Kubernetes Events (events.k8s.io/v1) through kube's `Recorder`, off the caller's path:
//! a bounded queue and one publishing task, so an apiserver outage delays or drops
//! Events (logged) but never blocks a wake or a park.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;
use tracing::{debug, warn};

const QUEUE: usize = 256;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Only the leader publishes: every replica sees the same objects, and Events from
/// each would be duplicates.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::Sender<(ObjectReference, Event)>,
    leader: tokio::sync::watch::Receiver<bool>,
}

/// An object an Event is about.
pub fn reference(api_version: &str, kind: &str, namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(kind.to_string()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

impl Events {
    pub fn start(
        client: Client,
        instance: &str,
        leader: tokio::sync::watch::Receiver<bool>,
    ) -> (Events, tokio::task::JoinHandle<()>) {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "zenvoy-controller".into(),
                instance: Some(instance.to_string()),
            },
        );
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        let task = tokio::spawn(async move {
            while let Some((reference, event)) = rx.recv().await {
                match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(&event, &reference))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(reason = %event.reason, error = %e, "cannot publish a Kubernetes Event")
                    }
                    Err(_) => {
                        warn!(reason = %event.reason, "publishing a Kubernetes Event timed out")
                    }
                }
            }
        });
        (Events { tx, leader }, task)
    }

    pub fn normal(&self, about: ObjectReference, reason: &str, note: String) {
        self.emit(about, EventType::Normal, reason, note);
    }

    pub fn warning(&self, about: ObjectReference, reason: &str, note: String) {
        self.emit(about, EventType::Warning, reason, note);
    }

    fn emit(&self, about: ObjectReference, type_: EventType, reason: &str, mut note: String) {
        if !*self.leader.borrow() {
            debug!(reason, "not the leader; Event left to the leader");
            return;
        }
        // The API caps a note at 1 kB.
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        if self.tx.try_send((about, event)).is_err() {
            debug!(reason, "Event queue full; Event dropped");
        }
    }
}
