//! One volume walked through the calls kubelet and the sidecars make, in their order:
//! csi-provisioner (CreateVolume/DeleteVolume), csi-attacher (ControllerPublish/Unpublish),
//! csi-resizer (ControllerExpand), kubelet (NodeStage/Publish/Expand/Stats/Unpublish/Unstage).
//!
//! Each step returns the gRPC result, so tests can assert on errors; `retries` makes every
//! step retry like the sidecars do (for fault-injection runs).

use std::collections::HashMap;
use std::time::Duration;

use everest_proto::csi::v1 as csi;
use tonic::Status;

use crate::csi::{GIB, create_request, retry};
use crate::world::World;

/// Sends `req` with `world.$client().$rpc`, retried as `self.retries` says, and answers the
/// response body.
macro_rules! call {
    ($self:ident, $what:literal, $client:ident, $rpc:ident, $req:expr) => {{
        let req = $req;
        let world = $self.world;
        $self
            .run($what, || {
                let req = req.clone();
                async move {
                    world
                        .$client()
                        .await
                        .$rpc(req)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await
    }};
}

/// A volume on its way through the lifecycle.
#[derive(Debug)]
pub struct Lifecycle<'w> {
    world: &'w World,
    /// The request name (what csi-provisioner derives from the PV name).
    pub name: String,
    /// The capability every call carries.
    pub cap: csi::VolumeCapability,
    /// The volume, once created.
    pub volume: Option<csi::Volume>,
    /// The node ID (from NodeGetInfo), once known.
    pub node_id: String,
    /// What ControllerPublish returned.
    pub publish_context: HashMap<String, String>,
    /// The staging path (created by the helper, as kubelet does).
    pub staging: String,
    /// The target path.
    pub target: String,
    /// Retry each step for up to this long, as the sidecars and kubelet would (`None`: once).
    pub retries: Option<Duration>,
    /// The NodeStage secrets (what kubelet reads from the StorageClass's node-stage secret).
    pub stage_secrets: HashMap<String, String>,
}

impl<'w> Lifecycle<'w> {
    /// Prepares a volume named `name` with capability `cap`, published into pod `pod`.
    pub async fn new(world: &'w World, name: &str, cap: csi::VolumeCapability, pod: &str) -> Self {
        let block = matches!(
            cap.access_type,
            Some(csi::volume_capability::AccessType::Block(_))
        );
        let target = if block {
            world.block_target_path(pod, name)
        } else {
            world.target_path(pod, name)
        };
        Self {
            world,
            name: name.to_string(),
            cap,
            volume: None,
            node_id: world.node_id().await,
            publish_context: HashMap::new(),
            staging: world.staging_path(name),
            target,
            retries: None,
            stage_secrets: HashMap::new(),
        }
    }

    /// The volume ID (panics before CreateVolume succeeded).
    pub fn id(&self) -> String {
        self.volume
            .as_ref()
            .expect("CreateVolume has not succeeded yet")
            .volume_id
            .clone()
    }

    fn volume_context(&self) -> HashMap<String, String> {
        self.volume
            .as_ref()
            .map(|v| v.volume_context.clone())
            .unwrap_or_default()
    }

    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut f = f;
        match self.retries {
            Some(deadline) => retry(what, deadline, f).await.map(|(v, _)| v),
            None => f().await,
        }
    }

    /// CreateVolume of `gib` GiB, ControllerPublish, NodeStage and NodePublish (read-write),
    /// each expected to succeed: a volume ready in a pod, for tests about what comes after.
    pub async fn bring_up(&mut self, gib: i64) -> csi::Volume {
        let vol = self.create(gib, &[]).await.expect("CreateVolume");
        self.attach().await.expect("ControllerPublishVolume");
        self.stage().await.expect("NodeStageVolume");
        self.publish(false).await.expect("NodePublishVolume");
        vol
    }

    /// CreateVolume of `gib` GiB with extra StorageClass parameters.
    pub async fn create(
        &mut self,
        gib: i64,
        params: &[(&str, &str)],
    ) -> Result<csi::Volume, Status> {
        let mut req = create_request(&self.name, gib * GIB, self.cap.clone(), params);
        req.accessibility_requirements = Some(self.world.topology_requirement().await);
        let vol = call!(self, "CreateVolume", controller, create_volume, req)?
            .volume
            .ok_or_else(|| Status::internal("CreateVolume answered without a volume"))?;
        self.volume = Some(vol.clone());
        Ok(vol)
    }

    /// ControllerPublishVolume to this node.
    pub async fn attach(&mut self) -> Result<HashMap<String, String>, Status> {
        let req = csi::ControllerPublishVolumeRequest {
            volume_id: self.id(),
            node_id: self.node_id.clone(),
            volume_capability: Some(self.cap.clone()),
            readonly: false,
            volume_context: self.volume_context(),
            ..Default::default()
        };
        let resp = call!(
            self,
            "ControllerPublishVolume",
            controller,
            controller_publish_volume,
            req
        )?;
        self.publish_context = resp.publish_context.clone();
        Ok(resp.publish_context)
    }

    /// NodeStageVolume at the staging path.
    pub async fn stage(&self) -> Result<(), Status> {
        let req = csi::NodeStageVolumeRequest {
            volume_id: self.id(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self.staging.clone(),
            volume_capability: Some(self.cap.clone()),
            volume_context: self.volume_context(),
            secrets: self.stage_secrets.clone(),
        };
        call!(self, "NodeStageVolume", node, node_stage_volume, req).map(drop)
    }

    /// NodePublishVolume at the target path.
    pub async fn publish(&self, readonly: bool) -> Result<(), Status> {
        let req = csi::NodePublishVolumeRequest {
            volume_id: self.id(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self.staging.clone(),
            target_path: self.target.clone(),
            volume_capability: Some(self.cap.clone()),
            readonly,
            volume_context: self.volume_context(),
            ..Default::default()
        };
        call!(self, "NodePublishVolume", node, node_publish_volume, req).map(drop)
    }

    /// ControllerExpandVolume to `gib` GiB; returns the response.
    pub async fn controller_expand(
        &self,
        gib: i64,
    ) -> Result<csi::ControllerExpandVolumeResponse, Status> {
        let req = csi::ControllerExpandVolumeRequest {
            volume_id: self.id(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: gib * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(self.cap.clone()),
            ..Default::default()
        };
        call!(
            self,
            "ControllerExpandVolume",
            controller,
            controller_expand_volume,
            req
        )
    }

    /// NodeExpandVolume on the target path (what kubelet sends for a published volume).
    pub async fn node_expand(&self, gib: i64) -> Result<csi::NodeExpandVolumeResponse, Status> {
        let req = csi::NodeExpandVolumeRequest {
            volume_id: self.id(),
            volume_path: self.target.clone(),
            staging_target_path: self.staging.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: gib * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(self.cap.clone()),
            ..Default::default()
        };
        call!(self, "NodeExpandVolume", node, node_expand_volume, req)
    }

    /// NodeGetVolumeStats on the target path.
    pub async fn stats(&self) -> Result<csi::NodeGetVolumeStatsResponse, Status> {
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: self.id(),
            volume_path: self.target.clone(),
            staging_target_path: self.staging.clone(),
        };
        call!(self, "NodeGetVolumeStats", node, node_get_volume_stats, req)
    }

    /// NodeUnpublishVolume.
    pub async fn unpublish(&self) -> Result<(), Status> {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: self.id(),
            target_path: self.target.clone(),
        };
        call!(
            self,
            "NodeUnpublishVolume",
            node,
            node_unpublish_volume,
            req
        )
        .map(drop)
    }

    /// NodeUnstageVolume.
    pub async fn unstage(&self) -> Result<(), Status> {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: self.id(),
            staging_target_path: self.staging.clone(),
        };
        call!(self, "NodeUnstageVolume", node, node_unstage_volume, req).map(drop)
    }

    /// ControllerUnpublishVolume from this node.
    pub async fn detach(&self) -> Result<(), Status> {
        let req = csi::ControllerUnpublishVolumeRequest {
            volume_id: self.id(),
            node_id: self.node_id.clone(),
            ..Default::default()
        };
        call!(
            self,
            "ControllerUnpublishVolume",
            controller,
            controller_unpublish_volume,
            req
        )
        .map(drop)
    }

    /// DeleteVolume.
    pub async fn delete(&self) -> Result<(), Status> {
        let req = csi::DeleteVolumeRequest {
            volume_id: self.id(),
            ..Default::default()
        };
        call!(self, "DeleteVolume", controller, delete_volume, req).map(drop)
    }
}
