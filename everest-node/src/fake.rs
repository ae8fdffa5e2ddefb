//! A node backend that answers only what the daemon itself asks (capabilities, identity, disk
//! slots), for the unit tests of the Node service and of node_info.

use everest_backend::backend::{
    Capabilities, NodeExpand, NodeIdentity, NodePublish, NodeStage, VolumeUsage,
};
use everest_backend::capability::VolumeCapability;
use everest_backend::paths::HostPath;
use everest_backend::{BackendKind, Error, NodeBackend};

/// Configurable answers; every volume call fails the test.
#[derive(Debug)]
pub struct FakeNodeBackend {
    /// What `max_volumes` answers (for node `server-1` only).
    pub slots: Result<Option<u32>, &'static str>,
    /// What `node_identity` answers: (node ID, zone).
    pub identity: Option<(&'static str, &'static str)>,
    /// What the kind can do.
    pub capabilities: Capabilities,
}

impl Default for FakeNodeBackend {
    fn default() -> Self {
        Self {
            slots: Ok(None),
            identity: None,
            capabilities: Capabilities {
                expand: false,
                node_expand: false,
                list: false,
                snapshots: false,
                clone: false,
                modify: false,
                access_modes: &[],
            },
        }
    }
}

#[async_trait::async_trait]
impl NodeBackend for FakeNodeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::File
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    fn check_capability(&self, _: &VolumeCapability) -> Result<(), Error> {
        Ok(())
    }
    async fn stage(&self, _: &NodeStage) -> Result<(), Error> {
        unreachable!("no volume calls in these tests")
    }
    async fn unstage(&self, _: &str, _: &HostPath) -> Result<(), Error> {
        unreachable!("no volume calls in these tests")
    }
    async fn publish(&self, _: &NodePublish) -> Result<(), Error> {
        unreachable!("no volume calls in these tests")
    }
    async fn unpublish(&self, _: &str, _: &HostPath) -> Result<(), Error> {
        unreachable!("no volume calls in these tests")
    }
    async fn expand(&self, _: &NodeExpand) -> Result<u64, Error> {
        unreachable!("no volume calls in these tests")
    }
    async fn stats(&self, _: &str, _: &HostPath) -> Result<VolumeUsage, Error> {
        unreachable!("no volume calls in these tests")
    }
    async fn max_volumes(&self, node_id: &str) -> Result<Option<u32>, Error> {
        assert_eq!(node_id, "server-1");
        self.slots.map_err(|e| Error::Unavailable(e.into()))
    }
    async fn node_identity(&self) -> Result<Option<NodeIdentity>, Error> {
        Ok(self.identity.map(|(node_id, zone)| NodeIdentity {
            node_id: node_id.into(),
            zone: zone.into(),
        }))
    }
}
