//! A stand-in for a HorizontalPodAutoscaler, for tests of zenvoy next to an autoscaler:
//! it writes a Deployment's or StatefulSet's `/scale` subresource through the fake API
//! server as the HPA controller does, on the same path zenvoy's controller scales by
//! (`/apis/apps/v1/namespaces/<ns>/<deployments|statefulsets>/<name>/scale`).
//!
//! Like the HPA controller it reads the Scale, sets `spec.replicas`, and replaces it (a PUT
//! carrying the Scale's resourceVersion, so a write in between is a 409 Conflict, read
//! again); and it leaves a workload at 0 replicas alone (the HPA's "ScalingDisabled": it
//! never wakes a parked workload, nor parks one). Unlike it, it scales when told to
//! ([`Hpa::scale_to`]), not from metrics. Its API token is [`TOKEN`], so the fake's
//! request log tells its writes from the controller's.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use kube::api::{Api, PostParams};
use zenvoy_fake_kube::{AuditRecord, FakeApi};

/// The HPA's API token (and so its identity in [`FakeApi::requests`]).
pub const TOKEN: &str = "horizontal-pod-autoscaler";
/// Read-modify-write rounds before a run of conflicts is an error.
const ATTEMPTS: usize = 10;

/// What one [`Hpa::scale_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wrote `/scale`: from `from` replicas to `to`.
    Scaled { from: i32, to: i32 },
    /// Already at that count: nothing written.
    Unchanged,
    /// At 0 replicas: nothing written, as the HPA does not scale a workload from zero.
    Disabled,
}

enum Target {
    Deployment(Api<Deployment>),
    StatefulSet(Api<StatefulSet>),
}

impl Target {
    async fn get_scale(&self, name: &str) -> kube::Result<Scale> {
        match self {
            Target::Deployment(a) => a.get_scale(name).await,
            Target::StatefulSet(a) => a.get_scale(name).await,
        }
    }

    async fn replace_scale(&self, name: &str, scale: &Scale) -> kube::Result<Scale> {
        let pp = PostParams::default();
        match self {
            Target::Deployment(a) => a.replace_scale(name, &pp, scale).await,
            Target::StatefulSet(a) => a.replace_scale(name, &pp, scale).await,
        }
    }
}

/// An HPA for one workload.
pub struct Hpa {
    target: Target,
    namespace: String,
    name: String,
    plural: &'static str,
}

impl Hpa {
    /// An HPA for the `kind` (`Deployment` or `StatefulSet`) `namespace/name` in `api`.
    pub async fn new(
        api: &FakeApi,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Hpa> {
        let client = api.client(TOKEN).await?;
        let (target, plural) = match kind {
            "Deployment" => (
                Target::Deployment(Api::namespaced(client, namespace)),
                "deployments",
            ),
            "StatefulSet" => (
                Target::StatefulSet(Api::namespaced(client, namespace)),
                "statefulsets",
            ),
            other => anyhow::bail!("an HPA scales a Deployment or a StatefulSet, not a {other:?}"),
        };
        Ok(Hpa {
            target,
            namespace: namespace.to_string(),
            name: name.to_string(),
            plural,
        })
    }

    /// The subresource it reads and writes.
    pub fn path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/{}/{}/scale",
            self.namespace, self.plural, self.name
        )
    }

    /// `spec.replicas` as the Scale shows it now.
    pub async fn replicas(&self) -> anyhow::Result<i32> {
        let scale = self
            .target
            .get_scale(&self.name)
            .await
            .map_err(|e| anyhow::anyhow!("GET {}: {e}", self.path()))?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    /// Scale to `replicas` as the HPA would: read the Scale, and unless it is at 0 or
    /// already there, replace it with the new count. A conflict (someone, zenvoy say,
    /// wrote in between) is read again, up to 10 rounds. Returns once the API has
    /// accepted the write; the pods follow later (wait on the kubelet for them).
    pub async fn scale_to(&self, replicas: i32) -> anyhow::Result<Step> {
        anyhow::ensure!(replicas > 0, "an HPA never scales to {replicas}");
        let mut conflict = String::new();
        for _ in 0..ATTEMPTS {
            let mut scale = self
                .target
                .get_scale(&self.name)
                .await
                .map_err(|e| anyhow::anyhow!("GET {}: {e}", self.path()))?;
            let from = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            if from == 0 {
                return Ok(Step::Disabled);
            }
            if from == replicas {
                return Ok(Step::Unchanged);
            }
            scale.spec = Some(ScaleSpec {
                replicas: Some(replicas),
            });
            match self.target.replace_scale(&self.name, &scale).await {
                Ok(_) => return Ok(Step::Scaled { from, to: replicas }),
                Err(kube::Error::Api(s)) if s.code == 409 => conflict = s.message.clone(),
                Err(e) => anyhow::bail!("PUT {}: {e}", self.path()),
            }
        }
        anyhow::bail!(
            "PUT {}: still a conflict after {ATTEMPTS} rounds: {conflict}",
            self.path()
        )
    }

    /// The `/scale` writes the fake API accepted from an HPA (any workload), oldest first.
    pub fn writes(api: &FakeApi) -> Vec<AuditRecord> {
        api.writes_to("/scale")
            .into_iter()
            .filter(|r| r.token.as_deref() == Some(TOKEN) && r.status < 300)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_stack::workload;

    #[tokio::test]
    async fn scales_through_the_scale_subresource_and_leaves_zero_alone() -> anyhow::Result<()> {
        let api = FakeApi::start().await?;
        let spec = |w: &str| {
            api.get("apps/v1", "StatefulSet", "db", w)
                .map(|o| o["spec"]["replicas"].clone())
        };
        api.put(workload("StatefulSet", "db", "postgres", 1, 5432, &[]))?;
        let hpa = Hpa::new(&api, "StatefulSet", "db", "postgres").await?;
        assert_eq!(hpa.scale_to(3).await?, Step::Scaled { from: 1, to: 3 });
        assert_eq!(hpa.replicas().await?, 3);
        assert_eq!(hpa.scale_to(2).await?, Step::Scaled { from: 3, to: 2 });
        assert_eq!(hpa.scale_to(2).await?, Step::Unchanged);
        assert_eq!(spec("postgres"), Some(serde_json::json!(2)));

        // Parked (by someone else): the HPA does not wake it.
        let mut parked = api
            .get("apps/v1", "StatefulSet", "db", "postgres")
            .expect("the StatefulSet");
        parked["spec"]["replicas"] = serde_json::json!(0);
        api.put(parked)?;
        assert_eq!(hpa.scale_to(2).await?, Step::Disabled);
        assert_eq!(spec("postgres"), Some(serde_json::json!(0)));

        let writes = Hpa::writes(&api);
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(
            writes
                .iter()
                .all(|r| r.method == "PUT" && r.path == hpa.path()),
            "{writes:?}"
        );
        assert_eq!(
            hpa.path(),
            "/apis/apps/v1/namespaces/db/statefulsets/postgres/scale"
        );
        assert!(Hpa::new(&api, "ReplicaSet", "db", "postgres")
            .await
            .is_err());
        Ok(())
    }
}
