//! The two sides of a backend. The controller side talks to the cloud; the node side talks to
//! the host. They run in different processes with different privileges, so they are two traits.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;

use crate::capability::VolumeCapability;
use crate::capacity::CapacityRange;
use crate::error::Result;
use crate::host::FsStats;
use crate::params::CommonParams;
use crate::paths::HostPath;
use crate::secrets::Secrets;
use crate::snapshot::{CreateSnapshot, Snapshot, SnapshotPage, VolumeSource};

/// What kind of storage a backend provides; decides attach and stage behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Cloud disks: attached to a node, formatted and mounted there.
    Block,
    /// NFS shares.
    File,
    /// S3 buckets through FUSE.
    Object,
}

/// What one backend kind can do. The daemons advertise the union over their configured
/// backends (ControllerGetCapabilities, NodeGetCapabilities) and refuse a request its backend
/// cannot serve with INVALID_ARGUMENT naming the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// ControllerExpandVolume grows the volume.
    pub expand: bool,
    /// After a controller expand, NodeExpandVolume has something to grow on the node.
    pub node_expand: bool,
    /// ListVolumes and ControllerGetVolume (with health and published nodes).
    pub list: bool,
    /// CreateSnapshot, DeleteSnapshot, ListSnapshots, and CreateVolume from a snapshot.
    pub snapshots: bool,
    /// CreateVolume from another volume of the same instance (a clone).
    pub clone: bool,
    /// ControllerModifyVolume (VolumeAttributesClass): some parameters change in place.
    pub modify: bool,
    /// The access modes the kind can serve at all (a backend may refuse more, e.g. by
    /// filesystem, in its own capability check).
    pub access_modes: &'static [crate::capability::AccessMode],
}

impl Capabilities {
    /// Whether some single-node mode beyond plain ReadWriteOnce is served (what CSI's
    /// SINGLE_NODE_MULTI_WRITER capability announces).
    pub fn single_node_multi_writer(&self) -> bool {
        use crate::capability::AccessMode;
        self.access_modes.iter().any(|m| {
            matches!(
                m,
                AccessMode::SingleNodeSingleWriter | AccessMode::SingleNodeMultiWriter
            )
        })
    }
}

/// What a backend kind that has no snapshots answers to a snapshot call (the daemon checks
/// [`Capabilities::snapshots`] first, so this only answers a caller that did not).
fn no_snapshots(kind: BackendKind) -> crate::Error {
    crate::Error::InvalidArgument(format!("{kind:?} backends do not support snapshots"))
}

/// The request a backend cannot serve: INVALID_ARGUMENT naming the backend and what it lacks.
pub fn unsupported(backend: &crate::volume_id::BackendName, what: &str) -> crate::Error {
    crate::Error::InvalidArgument(format!("backend {backend} does not support {what}"))
}

/// The topology key every Everest node reports its availability zone under.
pub const ZONE_TOPOLOGY_KEY: &str = "topology.everest.csi.io/zone";

/// One topology segment set, e.g. `{"topology.everest.csi.io/zone": "az1"}`.
pub type Topology = BTreeMap<String, String>;

/// Where a CreateVolume may or should place the volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyRequirement {
    /// The volume must be reachable from one of these.
    pub requisite: Vec<Topology>,
    /// Try these first, in order.
    pub preferred: Vec<Topology>,
}

impl TopologyRequirement {
    /// The values of `key` to try, preferred ones first, without repeats.
    pub fn candidates(&self, key: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.preferred.iter().chain(&self.requisite) {
            if let Some(v) = t.get(key)
                && !out.contains(v)
            {
                out.push(v.clone());
            }
        }
        out
    }
}

/// A validated CreateVolume.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    /// The idempotency key chosen by the provisioner (`pvc-<uid>`).
    pub name: String,
    /// Requested size.
    pub capacity: CapacityRange,
    /// Every capability the volume must support.
    pub capabilities: Vec<VolumeCapability>,
    /// The parameters shared by every backend.
    pub common: CommonParams,
    /// The backend's own parameters, for it to parse into its typed struct.
    pub parameters: BTreeMap<String, String>,
    /// Placement constraints.
    pub topology: Option<TopologyRequirement>,
    /// What the volume starts with (a snapshot or volume of the same backend instance);
    /// `None` for an empty volume. The daemon only passes one to a backend whose
    /// [`Capabilities`] say it can.
    pub source: Option<VolumeSource>,
    /// CSI secrets sent with the request.
    pub secrets: Secrets,
    /// The cluster this controller serves, for the marker the backend leaves on the volume.
    pub cluster: crate::marker::ClusterId,
}

impl CreateVolume {
    /// The marker `backend` leaves on what it creates for this request.
    pub fn marker(&self, backend: &crate::volume_id::BackendName) -> crate::marker::Marker {
        crate::marker::Marker::new(&self.cluster, backend, &self.common.k8s)
    }
}

#[cfg(any(test, feature = "test-util"))]
impl CreateVolume {
    /// A request for tests: `name`, at least `required_bytes`, the one capability `capability`
    /// and the StorageClass `params`; no topology, source or secrets.
    pub fn for_test(
        name: &str,
        required_bytes: u64,
        capability: VolumeCapability,
        params: &[(&str, &str)],
    ) -> Self {
        Self {
            name: name.to_owned(),
            capacity: CapacityRange {
                required_bytes,
                limit_bytes: 0,
            },
            capabilities: vec![capability],
            common: CommonParams::default(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            topology: None,
            source: None,
            secrets: Secrets::default(),
            cluster: crate::marker::ClusterId::default(),
        }
    }
}

/// A volume as the controller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The backend's own ID (disk ID, share ID…), encoded into the CSI volume ID by the daemon.
    pub native_id: String,
    /// Actual size in bytes.
    pub capacity_bytes: u64,
    /// Passed to the node on every stage and publish.
    pub context: BTreeMap<String, String>,
    /// Where the volume can be reached from.
    pub topology: Vec<Topology>,
}

/// A volume in ListVolumes/ControllerGetVolume, with its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedVolume {
    /// The volume.
    pub volume: Volume,
    /// Node IDs the volume is attached to.
    pub published_nodes: Vec<String>,
    /// Why the volume is abnormal, if it is.
    pub abnormal: Option<String>,
}

/// A resource a backend instance found with its owner's mark (or without one, where the kind
/// lists every resource), for `everestctl orphans`: what it is, how old, and how DeleteVolume
/// would take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedVolume {
    /// The native ID that deletes it as the marker's policy says; the keeping (retain) form
    /// when the marker records no policy, so that no ID deletes what the policy does not say.
    pub native_id: String,
    /// Every other native ID that names the same resource (with another policy): a PV naming
    /// it in any of these forms is using it.
    pub aliases: Vec<String>,
    /// Its name where it lives (share name, directory, bucket, `bucket/prefix`).
    pub name: String,
    /// Its size, where the service has one.
    pub size_bytes: Option<u64>,
    /// When it was made, where the service says.
    pub created_at: Option<std::time::SystemTime>,
    /// Its tags or mark, where the marker ([`crate::marker`]) is read from; empty for a
    /// resource Everest did not mark.
    pub tags: BTreeMap<String, String>,
    /// What DeleteVolume does with it, by the marker; `None` when the marker does not say.
    pub on_delete: Option<crate::marker::DeletePolicy>,
}

/// One page of ListVolumes.
#[derive(Debug, Clone, Default)]
pub struct VolumePage {
    /// The volumes on this page.
    pub entries: Vec<ListedVolume>,
    /// Token for the next page, if any.
    pub next_token: Option<String>,
}

/// A validated ControllerPublishVolume.
#[derive(Debug, Clone)]
pub struct ControllerPublish {
    /// The backend's own volume ID.
    pub native_id: String,
    /// The node (cloud server ID) to attach to.
    pub node_id: String,
    /// How the volume will be used.
    pub capability: VolumeCapability,
    /// Attach read-only.
    pub readonly: bool,
    /// The volume context from CreateVolume.
    pub context: BTreeMap<String, String>,
    /// CSI secrets.
    pub secrets: Secrets,
}

/// The result of ControllerExpandVolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expanded {
    /// The new size in bytes.
    pub capacity_bytes: u64,
    /// Whether the node must also grow the filesystem.
    pub node_expansion_required: bool,
}

/// The controller side: cloud resources.
#[async_trait]
pub trait ControllerBackend: Send + Sync + Debug {
    /// The kind of storage.
    fn kind(&self) -> BackendKind;
    /// What the kind can do.
    fn capabilities(&self) -> Capabilities;
    /// Rejects capabilities this backend cannot serve (INVALID_ARGUMENT naming the capability).
    fn check_capabilities(&self, caps: &[VolumeCapability]) -> Result<()>;
    /// Creates the volume, or returns the one already created under the same name.
    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume>;
    /// Deletes the volume; a volume that is already gone is success.
    async fn delete_volume(&self, native_id: &str, secrets: &Secrets) -> Result<()>;
    /// Attaches the volume to a node; returns the publish context the node needs. A kind that
    /// attaches nothing (file, object) answers at once with what its node side needs (the
    /// CSIDriver object is one per driver, so the attacher calls every kind).
    async fn publish(&self, req: &ControllerPublish) -> Result<BTreeMap<String, String>>;
    /// Detaches the volume from a node (or from all nodes when `node_id` is None); already detached is success.
    async fn unpublish(&self, native_id: &str, node_id: Option<&str>) -> Result<()>;
    /// Grows the volume to satisfy `capacity`.
    async fn expand(&self, native_id: &str, capacity: CapacityRange) -> Result<Expanded>;
    /// One volume with its health; NOT_FOUND when it does not exist.
    async fn get_volume(&self, native_id: &str) -> Result<ListedVolume>;
    /// A page of volumes.
    async fn list_volumes(
        &self,
        starting_token: Option<&str>,
        max_entries: u32,
    ) -> Result<VolumePage>;
    /// Checks that the backend's service answers.
    async fn probe(&self) -> Result<()>;
    /// Every resource of this instance's kind the instance can see, with its tags or mark
    /// (`everestctl orphans` decides which are stranded). Kinds that cannot list say so.
    async fn marked_volumes(&self) -> Result<Vec<MarkedVolume>> {
        Err(crate::Error::InvalidArgument(format!(
            "{:?} backends do not list their volumes by marker",
            self.kind()
        )))
    }
    /// Changes a volume in place to what the mutable `parameters` (a VolumeAttributesClass)
    /// say; a parameter that cannot change is INVALID_ARGUMENT naming it. Already so is success.
    async fn modify_volume(
        &self,
        native_id: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<()> {
        let _ = (native_id, parameters);
        Err(crate::Error::InvalidArgument(format!(
            "{:?} backends do not change volumes in place",
            self.kind()
        )))
    }
    /// Takes a snapshot of a volume, or returns the one already taken under the same name
    /// (ALREADY_EXISTS when that one is of another volume); NOT_FOUND when the volume does not
    /// exist. `ready` says whether a volume can be made from it yet.
    async fn create_snapshot(&self, req: &CreateSnapshot) -> Result<Snapshot> {
        let _ = req;
        Err(no_snapshots(self.kind()))
    }
    /// Deletes a snapshot; one that is already gone is success.
    async fn delete_snapshot(&self, native_id: &str, secrets: &Secrets) -> Result<()> {
        let _ = (native_id, secrets);
        Err(no_snapshots(self.kind()))
    }
    /// One snapshot; `None` when it does not exist.
    async fn get_snapshot(&self, native_id: &str) -> Result<Option<Snapshot>> {
        let _ = native_id;
        Err(no_snapshots(self.kind()))
    }
    /// A page of this backend's snapshots, of one volume when `source` names it. A token this
    /// backend did not issue is ABORTED.
    async fn list_snapshots(
        &self,
        source: Option<&str>,
        starting_token: Option<&str>,
        max_entries: u32,
    ) -> Result<SnapshotPage> {
        let _ = (source, starting_token, max_entries);
        Err(no_snapshots(self.kind()))
    }
}

/// A validated NodeStageVolume.
#[derive(Debug, Clone)]
pub struct NodeStage {
    /// The backend's own volume ID.
    pub native_id: String,
    /// From ControllerPublish (how to find the device).
    pub publish_context: BTreeMap<String, String>,
    /// The global mount path for this volume on this node.
    pub staging: HostPath,
    /// How the volume will be used.
    pub capability: VolumeCapability,
    /// From CreateVolume.
    pub volume_context: BTreeMap<String, String>,
    /// CSI secrets.
    pub secrets: Secrets,
}

/// A validated NodePublishVolume.
#[derive(Debug, Clone)]
pub struct NodePublish {
    /// The backend's own volume ID.
    pub native_id: String,
    /// The staging path, when the backend stages.
    pub staging: Option<HostPath>,
    /// The pod's path for the volume.
    pub target: HostPath,
    /// How the volume will be used.
    pub capability: VolumeCapability,
    /// Publish read-only.
    pub readonly: bool,
    /// From ControllerPublish.
    pub publish_context: BTreeMap<String, String>,
    /// From CreateVolume.
    pub volume_context: BTreeMap<String, String>,
    /// CSI secrets.
    pub secrets: Secrets,
}

/// A validated NodeExpandVolume.
#[derive(Debug, Clone)]
pub struct NodeExpand {
    /// The backend's own volume ID.
    pub native_id: String,
    /// A path where the volume is published or staged.
    pub volume_path: HostPath,
    /// The staging path, if the kubelet sent it.
    pub staging: Option<HostPath>,
    /// The size asked for.
    pub capacity: CapacityRange,
    /// The capability, if the kubelet sent it (block volumes need no filesystem grow).
    pub capability: Option<VolumeCapability>,
}

/// NodeGetVolumeStats' answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeUsage {
    /// A mounted filesystem.
    Filesystem {
        /// Usage figures.
        stats: FsStats,
        /// Why the volume is abnormal, if it is.
        abnormal: Option<String>,
    },
    /// The volume is there but cannot be measured (its device is gone, its filesystem does not
    /// answer): no figures, only the condition.
    Lost {
        /// What is wrong, for the volume condition.
        abnormal: String,
    },
    /// A raw block device: only its size is known.
    Block {
        /// Device size in bytes.
        total_bytes: u64,
        /// Why the volume is abnormal, if it is.
        abnormal: Option<String>,
    },
}

/// This node as a backend's cloud names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The ID ControllerPublishVolume attaches to (a block backend: the cloud server ID).
    pub node_id: String,
    /// The node's availability zone.
    pub zone: String,
}

/// The node side: devices and mounts on this host.
#[async_trait]
pub trait NodeBackend: Send + Sync + Debug {
    /// The kind of storage.
    fn kind(&self) -> BackendKind;
    /// What the kind can do.
    fn capabilities(&self) -> Capabilities;
    /// Rejects a capability this backend cannot serve on a node.
    fn check_capability(&self, cap: &VolumeCapability) -> Result<()>;
    /// Makes the volume available at the staging path (find device, format if blank, mount).
    async fn stage(&self, req: &NodeStage) -> Result<()>;
    /// Undoes [`NodeBackend::stage`]; not staged is success.
    async fn unstage(&self, native_id: &str, staging: &HostPath) -> Result<()>;
    /// Makes the volume available at the pod's target path.
    async fn publish(&self, req: &NodePublish) -> Result<()>;
    /// Undoes [`NodeBackend::publish`]; not published is success.
    async fn unpublish(&self, native_id: &str, target: &HostPath) -> Result<()>;
    /// Grows the filesystem after a controller expand; returns the new size in bytes.
    async fn expand(&self, req: &NodeExpand) -> Result<u64>;
    /// Usage and health of the volume at `volume_path`.
    async fn stats(&self, native_id: &str, volume_path: &HostPath) -> Result<VolumeUsage>;
    /// This node's ID and zone as the backend's cloud names them, for a backend whose volumes
    /// attach to a cloud server (block); `None` (the default) for one that needs no cloud
    /// identity, so a node with only such backends never asks a metadata service.
    async fn node_identity(&self) -> Result<Option<NodeIdentity>> {
        Ok(None)
    }
    /// How many of this driver's volumes the node `node_id` can hold in all, when the backend
    /// can tell (a block backend asks the cloud for the server's free disk slots); `None`
    /// leaves the configured `max_volumes_per_node`.
    async fn max_volumes(&self, _node_id: &str) -> Result<Option<u32>> {
        Ok(None)
    }
    /// Called once when the node plugin starts, before it serves: takes up again what an
    /// earlier run left on this host (mounts whose helper processes outlived it). Nothing by
    /// default; an error is logged, never fatal (the next NodeStage repairs what is wrong).
    async fn recover(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_candidates_prefer_preferred_and_dedupe() {
        let t = |z: &str| Topology::from([("zone".to_string(), z.to_string())]);
        let req = TopologyRequirement {
            requisite: vec![t("a"), t("b")],
            preferred: vec![t("b")],
        };
        assert_eq!(req.candidates("zone"), vec!["b", "a"]);
        assert!(req.candidates("other").is_empty());
    }
}
