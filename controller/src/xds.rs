//! The ADS server, in both variants of the protocol: state of the world (`sotw`) and
//! delta (`delta`). Resources live in a [`Cache`]; each connected stream keeps, per
//! type, what it subscribed to, what it was sent and what it ACKed (`subscriptions`,
//! one bookkeeping for both variants); what every stream ACKed of the endpoints is the
//! cache's ACK registry (`acks`), which the planner's two-phase park asks.
//!
//! ```text
//!  runtime --set()--> Cache --generation watch--> every stream: diff -> DiscoveryResponse
//!                       ^                                         |
//!                       +---- EDS ACK registry <-- requests ------+
//! ```
//!
//! SotW: Listeners and Clusters are sent whole (the protocol requires it for those types);
//! endpoints and routes per resource. Delta: every type per resource. Either way a wake or
//! park changes one ClusterLoadAssignment and only that CLA goes on the wire.
//!
//! | module | holds |
//! |---|---|
//! | `cache` | the resources, versioned, encoded once; what changed since a version |
//! | `acks` | what each stream ACKed of the endpoints, which streams are Envoys |
//! | `names` | a stream's names of one type, sorted and shared |
//! | `subscriptions` | one stream's subscriptions, sent versions, unsettled responses |
//! | `variant` | what the serve loop asks of a stream in either variant |
//! | `sotw`, `delta` | one stream's protocol state in each variant |
//! | `server` | the gRPC service: admission, one task per stream, shutdown |
//! | [`wire`] | responses encoded by hand from shared bytes |
//! | [`resources`] | domain -> Envoy resources (pure) |

mod acks;
mod cache;
mod delta;
mod names;
pub mod resources;
mod server;
mod sotw;
mod subscriptions;
mod variant;
pub mod wire;

use std::sync::Arc;

pub use cache::{Cache, Entry};
pub use server::{AdsServer, AdsService};

/// A resource name, shared: the cache, and every stream's subscription, sent and ACK
/// records hold the same allocation (at 10,000 names and hundreds of streams, a copy
/// of each name per stream per record was most of a stream's memory).
pub type Name = Arc<str>;

/// The variant of the ADS protocol a stream speaks (Envoy's docs call them variants of
/// the xDS transport protocol). In state of the world every response carries the whole
/// of a type, or of the names asked for; in delta it carries what changed and the names
/// of what was removed. Also says which shared encoding of a whole type a response uses
/// (see [`Cache::whole`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    Sotw,
    Delta,
}
