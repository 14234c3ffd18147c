//! What the serve loop (`server`) drives of a stream, in either variant (`sotw`, `delta`).

use super::cache::Cache;
use super::subscriptions::Subscriptions;
use super::wire::Encoded;
use super::Variant;
use crate::telemetry::Metrics;

/// One stream's state in one ADS variant, apart from the transport: what the serve loop
/// drives. Requests in, responses out; what it subscribes to, was sent and ACKed is its
/// [`Subscriptions`].
pub(super) trait VariantStream: Send + 'static {
    const VARIANT: Variant;
    /// A request as the stream reads it.
    type Req: prost::Message + Default + Send + 'static;
    /// What the variant keeps of a type beyond the shared bookkeeping.
    type Own;
    /// A response as a client decodes it.
    #[cfg(test)]
    type Response: prost::Message + Default;

    fn new(id: u64) -> Self;
    fn subscriptions(&self) -> &Subscriptions<Self::Own>;
    /// Handle one request; returns the responses to send.
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Encoded>;
    /// The cache changed: send what this stream's subscriptions are missing.
    fn on_change(&mut self, cache: &Cache) -> Vec<Encoded>;

    /// Tests read a stream's responses as a client does: decoded from the bytes it sends.
    #[cfg(test)]
    fn on_request_decoded(
        &mut self,
        req: impl Into<Self::Req>,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<Self::Response> {
        decoded(self.on_request(req.into(), cache, metrics))
    }

    #[cfg(test)]
    fn on_change_decoded(&mut self, cache: &Cache) -> Vec<Self::Response> {
        decoded(self.on_change(cache))
    }
}

#[cfg(test)]
fn decoded<M: prost::Message + Default>(v: Vec<Encoded>) -> Vec<M> {
    v.iter()
        .map(|e| e.decode().expect("a response decodes"))
        .collect()
}
