//! The resources zenvoy serves, one store shared by the runtime (the writer) and every
//! ADS stream (readers). Every resource is kept encoded once, at the version it last
//! changed; a type's changes are indexed by version, so a stream finds what changed
//! since it last looked without walking every resource; a whole type's encoding, for
//! the responses that carry all of it, is built once per version and shared.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;
use zenvoy_base::lock;

use super::acks::AckRegistry;
use super::wire::{self, Run};
use super::{Name, Variant};

/// One resource at the version it last changed: its `Any`, encoded once and shared by
/// every response that carries it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    pub any: Bytes,
}

#[derive(Debug, Default)]
struct TypeState {
    /// Generation of the last change of any resource of this type.
    version: u64,
    resources: BTreeMap<Name, Entry>,
    /// Every resource at `version`, encoded as a response's `resources` (SotW) and as
    /// delta `Resource`s: built by the first stream that sends the whole type at this
    /// version, shared by the rest, dropped at the next change.
    whole: Option<Wholes>,
    /// The name of the resource set at each version (every set has a version of its own):
    /// what changed since a stream last looked is a range, not a walk of every resource.
    by_version: BTreeMap<u64, Name>,
    /// Names removed, by the version of the removal; the oldest go beyond
    /// [`MAX_TOMBSTONES`], and a stream that last looked before `forgotten_before` walks
    /// everything instead.
    removed: BTreeMap<u64, Name>,
    forgotten_before: u64,
}

/// Removals remembered per type for [`Cache::since`].
const MAX_TOMBSTONES: usize = 10_000;

/// What changed in a type since a version a stream has seen.
#[derive(Debug)]
pub(super) enum Since {
    /// Nothing: the type is still at that version.
    Current,
    Changes {
        /// The type's version now.
        version: u64,
        /// Resources set since, at their current version.
        set: Vec<(Name, Entry)>,
        /// Names removed since (and not set again).
        removed: Vec<Name>,
    },
    /// Too long ago (removals forgotten): read everything.
    TooOld,
}

/// A whole type's encodings, one per variant (see [`Cache::whole`]).
#[derive(Debug, Default)]
struct Wholes {
    sotw: Option<Run>,
    delta: Option<Run>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    types: HashMap<&'static str, TypeState>,
}

/// The resources zenvoy serves, shared by the runtime (writer) and every ADS stream; and
/// what the connected streams have ACKed ([`AckRegistry`]).
#[derive(Debug)]
pub struct Cache {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// What every stream subscribes to and has ACKed of the ClusterLoadAssignments, and
    /// which streams are Envoys.
    pub(super) acks: AckRegistry,
}

impl Default for Cache {
    fn default() -> Self {
        // Versions start at this process's start time in microseconds, so a version a
        // client got from another controller (an earlier run, the previous leader) does
        // not coincide with one of ours: a delta client's initial_resource_versions
        // then never make us skip a resource, or count it as ACKed, by accident.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1));
        Cache {
            inner: Mutex::new(Inner {
                generation: epoch,
                types: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
            acks: AckRegistry::default(),
        }
    }
}

impl Cache {
    /// Set a resource. Returns its version; an identical resource keeps its version and
    /// wakes no stream.
    pub fn set(&self, type_url: &'static str, name: &str, any: Any) -> u64 {
        let any = Bytes::from(prost::Message::encode_to_vec(&any));
        let mut inner = lock(&self.inner);
        let generation = inner.generation + 1;
        let ty = inner.types.entry(type_url).or_default();
        if let Some(e) = ty.resources.get(name) {
            if e.any == any {
                return e.version;
            }
        }
        ty.version = generation;
        ty.whole = None;
        let entry = Entry {
            version: generation,
            any,
        };
        let key: Name = match ty.resources.get_key_value(name) {
            Some((key, old)) => {
                let key = key.clone();
                ty.by_version.remove(&old.version);
                key
            }
            None => Name::from(name),
        };
        ty.resources.insert(key.clone(), entry);
        ty.by_version.insert(generation, key);
        inner.generation = generation;
        drop(inner);
        self.changed.send_replace(generation);
        generation
    }

    /// Remove a resource (a service that is gone). Streams see the type change: SotW
    /// sends the type whole without it, delta lists it as removed.
    pub fn remove(&self, type_url: &'static str, name: &str) {
        let mut inner = lock(&self.inner);
        let generation = inner.generation + 1;
        let Some(ty) = inner.types.get_mut(type_url) else {
            return;
        };
        let Some((key, old)) = ty.resources.remove_entry(name) else {
            return;
        };
        ty.by_version.remove(&old.version);
        ty.removed.insert(generation, key);
        while ty.removed.len() > MAX_TOMBSTONES {
            if let Some((v, _)) = ty.removed.pop_first() {
                ty.forgotten_before = v + 1;
            }
        }
        ty.version = generation;
        ty.whole = None;
        inner.generation = generation;
        drop(inner);
        self.changed.send_replace(generation);
    }

    /// The version of a type, for each requested name (all when `names` is None) its
    /// entry when `wanted(name, version)`, and how many resources the type has. Only
    /// wanted entries are cloned (a name and a reference to shared bytes): a wake changes
    /// one resource, and a stream subscribed to 10,000 must not copy them all to find it.
    pub(super) fn read(
        &self,
        type_url: &str,
        names: Option<&[Name]>,
        wanted: impl Fn(&str, u64) -> bool,
    ) -> (u64, Vec<(Name, Entry)>, usize) {
        let inner = lock(&self.inner);
        let Some(ty) = inner.types.get(type_url) else {
            return (0, Vec::new(), 0);
        };
        let total = ty.resources.len();
        let entries = match names {
            None => ty
                .resources
                .iter()
                .filter(|(n, e)| wanted(n, e.version))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| ty.resources.get(&**n).map(|e| (n, e)))
                .filter(|(n, e)| wanted(n, e.version))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
        };
        (ty.version, entries, total)
    }

    /// `names` as the cache's own [`Name`]s where it has them (new ones otherwise).
    pub(super) fn intern<'n>(
        &self,
        type_url: &str,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Vec<Name> {
        let inner = lock(&self.inner);
        let ty = inner.types.get(type_url);
        names
            .into_iter()
            .map(|n| {
                ty.and_then(|t| t.resources.get_key_value(n))
                    .map_or_else(|| Name::from(n), |(k, _)| k.clone())
            })
            .collect()
    }

    /// The version of a type (0: none yet).
    pub(super) fn version(&self, type_url: &str) -> u64 {
        lock(&self.inner)
            .types
            .get(type_url)
            .map_or(0, |t| t.version)
    }

    /// What changed in `type_url` after version `seen`: a range of the version index, so
    /// a wake (one resource) costs every stream one lookup, not a walk of 10,000.
    pub(super) fn since(&self, type_url: &str, seen: u64) -> Since {
        let inner = lock(&self.inner);
        let Some(ty) = inner.types.get(type_url) else {
            return if seen == 0 {
                Since::Current
            } else {
                Since::TooOld
            };
        };
        if ty.version == seen {
            return Since::Current;
        }
        if seen < ty.forgotten_before || seen > ty.version {
            return Since::TooOld;
        }
        let after = seen.saturating_add(1);
        let set = ty
            .by_version
            .range(after..)
            .filter_map(|(_, n)| ty.resources.get(n).map(|e| (n.clone(), e.clone())))
            .collect();
        let removed = ty
            .removed
            .range(after..)
            .map(|(_, n)| n)
            .filter(|n| !ty.resources.contains_key(&***n))
            .cloned()
            .collect();
        Since::Changes {
            version: ty.version,
            set,
            removed,
        }
    }

    /// Every resource of `type_url` encoded as `variant`'s repeated `resources`, when the
    /// type is still at `version`: built once per version, shared by every stream.
    pub(super) fn whole(&self, type_url: &str, version: u64, variant: Variant) -> Option<Run> {
        let mut inner = lock(&self.inner);
        let ty = inner.types.get_mut(type_url)?;
        if ty.version != version {
            return None;
        }
        let wholes = ty.whole.get_or_insert_with(Wholes::default);
        let slot = match variant {
            Variant::Sotw => &mut wholes.sotw,
            Variant::Delta => &mut wholes.delta,
        };
        if let Some(run) = slot {
            return Some(run.clone());
        }
        let run = match variant {
            Variant::Sotw => Run::new(2, ty.resources.values().map(|e| &e.any)),
            Variant::Delta => {
                let each: Vec<Bytes> = ty
                    .resources
                    .iter()
                    .map(|(n, e)| wire::delta_resource(n, &e.version.to_string(), &e.any))
                    .collect();
                Run::new(2, each.iter())
            }
        };
        *slot = Some(run.clone());
        Some(run)
    }

    /// Of `names`, those the cache has no resource of this type for.
    pub(super) fn missing<'n>(
        &self,
        type_url: &str,
        names: impl Iterator<Item = &'n Name>,
    ) -> Vec<Name> {
        let inner = lock(&self.inner);
        let ty = inner.types.get(type_url);
        names
            .filter(|n| !ty.is_some_and(|t| t.resources.contains_key(&***n)))
            .cloned()
            .collect()
    }

    /// Told of every change: the generation after it.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// What the runtime and the benchmarks ask of the connected streams.
impl Cache {
    /// True when every stream subscribed to ClusterLoadAssignment `name` has ACKed
    /// `version` or later. Streams not subscribed to it do not count.
    pub fn all_acked(&self, name: &str, version: u64) -> bool {
        self.acks.all_acked(name, version)
    }

    /// True when some connected stream subscribes to ClusterLoadAssignment `name` (it
    /// has asked for it, ACKed or not). Lets a caller publish an update only once a
    /// client will receive it as an update, e.g. to time EDS update -> effect.
    pub fn subscribed(&self, name: &str) -> bool {
        self.acks.subscribed(name)
    }

    /// Number of connected streams that subscribe to Clusters (Envoys).
    pub fn cluster_streams(&self) -> usize {
        self.acks.cluster_streams()
    }

    /// True when every stream that subscribes to Clusters (every Envoy) has ACKed
    /// ClusterLoadAssignment `name` at `version` or later: the cluster is warm in every
    /// Envoy. An Envoy that has not asked for it yet counts as not warm.
    pub fn warm_everywhere(&self, name: &str, version: u64) -> bool {
        self.acks.warm_everywhere(name, version)
    }

    /// Number of connected ADS streams that have sent an endpoint (EDS) request.
    pub fn streams(&self) -> usize {
        self.acks.streams()
    }
}

/// The planner asks the cache what the connected streams have ACKed.
impl zenvoy_core::planner::Acks for Cache {
    fn envoys(&self) -> usize {
        self.acks.cluster_streams()
    }

    fn warm_everywhere(&self, service: &str, version: u64) -> bool {
        self.acks.warm_everywhere(service, version)
    }

    fn all_acked(&self, service: &str, version: u64) -> bool {
        self.acks.all_acked(service, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::names::Names;
    use crate::xds::resources;

    fn any(v: u8) -> Any {
        Any {
            type_url: "t".into(),
            value: vec![v],
        }
    }

    #[test]
    fn since_gives_what_changed_after_a_version_and_what_was_removed() {
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        let va = cache.set(eds, "a", any(1));
        let vb = cache.set(eds, "b", any(1));
        let names = |s: Since| match s {
            Since::Changes { set, removed, .. } => (
                set.into_iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>(),
                removed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ),
            other => panic!("expected changes, got {other:?}"),
        };
        assert_eq!(
            names(cache.since(eds, va)),
            (vec!["b".to_string()], Vec::<String>::new())
        );
        assert!(matches!(cache.since(eds, vb), Since::Current));
        // Set again: one entry, at its new version; an identical set changes nothing.
        let va2 = cache.set(eds, "a", any(2));
        assert_eq!(cache.set(eds, "a", any(2)), va2);
        assert_eq!(
            names(cache.since(eds, vb)),
            (vec!["a".to_string()], Vec::<String>::new())
        );
        cache.remove(eds, "b");
        assert_eq!(
            names(cache.since(eds, va2)),
            (Vec::<String>::new(), vec!["b".to_string()])
        );
        // Removed and set again: a change, not a removal.
        let before = cache.version(eds);
        cache.remove(eds, "a");
        cache.set(eds, "a", any(3));
        assert_eq!(
            names(cache.since(eds, before)),
            (vec!["a".to_string()], Vec::<String>::new())
        );
        assert!(matches!(
            cache.since(resources::ROUTE_TYPE, 0),
            Since::Current
        ));
    }

    #[test]
    fn since_before_the_oldest_remembered_removal_reads_everything() {
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        let start = cache.set(eds, "keep", any(0));
        for i in 0..=MAX_TOMBSTONES {
            let name = format!("n{i}");
            cache.set(eds, &name, any(1));
            cache.remove(eds, &name);
        }
        assert!(matches!(cache.since(eds, start), Since::TooOld));
        let now = cache.version(eds);
        assert!(matches!(cache.since(eds, now), Since::Current));
    }

    #[test]
    fn subscribed_while_a_connected_stream_asks_for_the_name() {
        let cache = Cache::default();
        assert!(!cache.subscribed("a"), "no stream yet");
        let eds = resources::ENDPOINT_TYPE;
        cache.acks.record(1, eds, &Names::new([Name::from("a")]));
        assert!(cache.subscribed("a"), "subscribed, nothing ACKed yet");
        assert!(!cache.subscribed("b"));
        cache.acks.record(2, eds, &Names::new([Name::from("b")]));
        cache.acks.ack(2, eds, &[(Name::from("b"), 3)]);
        assert!(cache.subscribed("b"));
        assert!(cache.all_acked("b", 3));
        // A new subscription keeps what was ACKed of the names that stay.
        cache
            .acks
            .record(2, eds, &Names::new([Name::from("b"), Name::from("c")]));
        assert!(cache.all_acked("b", 3));
        assert!(!cache.all_acked("c", 1));
        // Another type's names leave the endpoint view alone.
        cache
            .acks
            .record(1, resources::ROUTE_TYPE, &Names::default());
        assert!(cache.subscribed("a"));
        // Stream 1 narrows its subscription, then stream 2 disconnects.
        cache.acks.record(1, eds, &Names::default());
        assert!(!cache.subscribed("a"));
        cache.acks.forget(2);
        assert!(!cache.subscribed("b"));
    }

    #[test]
    fn names_are_sorted_without_repeats_and_change_by_adding_and_removing() {
        let n = |s: &str| Name::from(s);
        let names = Names::new([n("c"), n("a"), n("b"), n("a")]);
        assert_eq!(
            names.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(names.index_of("b"), Some(1));
        assert!(!names.contains("d"));
        let next = names.changed(vec![n("d"), n("a")], &["b", "x"]);
        assert_eq!(
            next.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        assert_eq!(names.len(), 3, "the old list is unchanged");
        // An ACK of a name its stream does not subscribe to counts nowhere; the versions
        // stay with their names as the list around them changes.
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        cache.acks.record(1, eds, &names);
        cache.acks.ack(1, eds, &[(n("c"), 4), (n("z"), 9)]);
        cache.acks.record(1, eds, &next);
        assert!(cache.all_acked("c", 4));
        assert!(!cache.all_acked("a", 1));
        assert!(
            cache.all_acked("z", 9),
            "no stream subscribes to z: nothing to wait for"
        );
    }
}
