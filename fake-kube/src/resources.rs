//! The resource types the fake serves and, for each, the registry strategy flags of the
//! real kube-apiserver that change observable behaviour (`pkg/registry/*/strategy.go`).
//! Pure data.

/// When `metadata.generation` moves (the registry strategy's `PrepareForUpdate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generation {
    /// Not tracked: the field is never set (Services, ConfigMaps, Leases, Events).
    Untracked,
    /// Set to 1 on create, bumped when `spec` changes (Deployments, StatefulSets).
    Spec,
    /// Set to 1 on create, bumped when anything outside `metadata` changes (EndpointSlices).
    AllButMetadata,
}

#[derive(Debug)]
pub(crate) struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    /// Writes to the main resource ignore `status`; `/status` writes only change `status`.
    pub status_subresource: bool,
    /// Serves `/scale` (autoscaling/v1 Scale over `spec.replicas`).
    pub scale_subresource: bool,
    pub generation: Generation,
    /// A PUT to a missing object creates it (`AllowCreateOnUpdate`).
    pub create_on_update: bool,
    /// A PUT without `metadata.resourceVersion` is accepted (`AllowUnconditionalUpdate`).
    pub unconditional_update: bool,
    /// DELETE answers with the deleted object rather than a Success Status
    /// (`ReturnDeletedObject`).
    pub delete_returns_object: bool,
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `deployments.apps`, as the apiserver names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn same(&self, other: &ResourceDef) -> bool {
        self.group == other.group && self.plural == other.plural
    }
}

const fn def(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        plural,
        kind,
        status_subresource: false,
        scale_subresource: false,
        generation: Generation::Untracked,
        create_on_update: false,
        unconditional_update: true,
        delete_returns_object: false,
    }
}

pub(crate) static SERVICES: ResourceDef = ResourceDef {
    status_subresource: true,
    create_on_update: true,
    delete_returns_object: true,
    ..def("", "v1", "services", "Service")
};
pub(crate) static CONFIGMAPS: ResourceDef = def("", "v1", "configmaps", "ConfigMap");
pub(crate) static DEPLOYMENTS: ResourceDef = ResourceDef {
    status_subresource: true,
    scale_subresource: true,
    generation: Generation::Spec,
    ..def("apps", "v1", "deployments", "Deployment")
};
pub(crate) static STATEFULSETS: ResourceDef = ResourceDef {
    status_subresource: true,
    scale_subresource: true,
    generation: Generation::Spec,
    ..def("apps", "v1", "statefulsets", "StatefulSet")
};
pub(crate) static ENDPOINTSLICES: ResourceDef = ResourceDef {
    generation: Generation::AllButMetadata,
    ..def("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
};
pub(crate) static LEASES: ResourceDef = ResourceDef {
    create_on_update: true,
    unconditional_update: false,
    ..def("coordination.k8s.io", "v1", "leases", "Lease")
};
pub(crate) static EVENTS: ResourceDef = ResourceDef {
    create_on_update: true,
    ..def("events.k8s.io", "v1", "events", "Event")
};

pub(crate) static RESOURCES: [&ResourceDef; 7] = [
    &SERVICES,
    &CONFIGMAPS,
    &DEPLOYMENTS,
    &STATEFULSETS,
    &ENDPOINTSLICES,
    &LEASES,
    &EVENTS,
];

/// The resource served at `/api[s]/{group}/{version}/.../{plural}`.
pub(crate) fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .copied()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
}

/// The resource an object with this `apiVersion` and `kind` belongs to.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .copied()
        .find(|d| d.kind == kind && d.api_version() == api_version)
}
