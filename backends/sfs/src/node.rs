//! The node side of file volumes: the NFS export named in the volume context is mounted once per
//! node at the staging path and bind-mounted into each pod. The node holds no credentials and
//! talks to no API: everything it needs travels in the volume context.

use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::backend::{
    BackendKind, Capabilities, NodeBackend, NodeExpand, NodePublish, NodeStage, VolumeUsage,
    unsupported,
};
use everest_backend::capability::{AccessType, VolumeCapability};
use everest_backend::host::Host;
use everest_backend::nfs::{self, NfsExport};
use everest_backend::node::{
    PublishMode, filesystem_usage, mount_of_kind, publish_filesystem, unmount_all,
    unmount_and_remove,
};
use everest_backend::paths::HostPath;
use everest_backend::{BackendName, Error, Result};

use crate::config::SfsConfig;
use crate::{EXPORT_CONTEXT_KEY, capabilities, check_capability};

/// The node side of one `sfs` instance.
#[derive(Debug)]
pub struct SfsNode {
    name: BackendName,
    config: SfsConfig,
    host: Arc<dyn Host>,
}

impl SfsNode {
    /// Builds the node side on `host`.
    pub fn new(name: BackendName, config: SfsConfig, host: Arc<dyn Host>) -> Self {
        Self { name, config, host }
    }

    /// The mount options: the backend's, then the volume capability's, checked together.
    fn options(&self, cap: &VolumeCapability, readonly: bool) -> Result<Vec<String>> {
        let mut user = self.config.mount_options.clone();
        if let AccessType::Mount { mount_flags, .. } = &cap.access_type {
            user.extend(mount_flags.iter().cloned());
        }
        nfs::mount_options(&user, readonly)
    }
}

/// The export a volume lives on: from the publish context (the controller looks it up at
/// ControllerPublish, so a static PV needs nothing more), else from the volume context.
fn export_of(req: &NodeStage) -> Result<NfsExport> {
    req.publish_context
        .get(EXPORT_CONTEXT_KEY)
        .or_else(|| req.volume_context.get(EXPORT_CONTEXT_KEY))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "volume {} has no {EXPORT_CONTEXT_KEY} in its publish or volume context (is the CSIDriver's attachRequired true? for a static PV without it, set volumeAttributes.{EXPORT_CONTEXT_KEY} to server:/path)",
                req.native_id
            ))
        })?
        .parse()
}

#[async_trait]
impl NodeBackend for SfsNode {
    fn kind(&self) -> BackendKind {
        BackendKind::File
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.config.share.is_some())
    }

    fn check_capability(&self, cap: &VolumeCapability) -> Result<()> {
        check_capability(cap)
    }

    async fn stage(&self, req: &NodeStage) -> Result<()> {
        check_capability(&req.capability)?;
        let export = export_of(req)?;
        let options = self.options(&req.capability, req.capability.access_mode.is_read_only())?;
        nfs::stage(
            self.host.as_ref(),
            &req.native_id,
            &export,
            &req.staging,
            &options,
        )
        .await
    }

    async fn unstage(&self, _native_id: &str, staging: &HostPath) -> Result<()> {
        unmount_all(self.host.as_ref(), staging).await
    }

    async fn publish(&self, req: &NodePublish) -> Result<()> {
        check_capability(&req.capability)?;
        publish_filesystem(
            self.host.as_ref(),
            &req.native_id,
            req.staging.as_ref(),
            &req.target,
            PublishMode::of(&req.capability, req.readonly),
        )
        .await
    }

    async fn unpublish(&self, _native_id: &str, target: &HostPath) -> Result<()> {
        unmount_and_remove(self.host.as_ref(), target).await
    }

    async fn expand(&self, _req: &NodeExpand) -> Result<u64> {
        Err(unsupported(&self.name, "NodeExpandVolume"))
    }

    async fn stats(&self, native_id: &str, volume_path: &HostPath) -> Result<VolumeUsage> {
        let mount = mount_of_kind(
            self.host.as_ref(),
            native_id,
            volume_path,
            "nfs",
            "NFS volume",
        )
        .await?;
        filesystem_usage(self.host.as_ref(), &mount, volume_path).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use everest_backend::capability::AccessMode;
    use everest_backend::host::FakeHost;
    use everest_backend::paths::AllowedRoot;
    use everest_backend::secrets::Secrets;

    use super::*;

    fn node(host: Arc<FakeHost>) -> SfsNode {
        let table = serde_json::json!({"server": "10.0.0.5", "export": "/exports", "mount_options": ["hard"]});
        let config = SfsConfig::parse("nfs", table.as_object().unwrap()).unwrap();
        SfsNode::new(BackendName::new("nfs").unwrap(), config, host)
    }

    fn cap(mode: AccessMode, flags: &[&str]) -> VolumeCapability {
        VolumeCapability {
            access_type: AccessType::Mount {
                fs_type: String::new(),
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            },
            access_mode: mode,
        }
    }

    fn paths() -> (HostPath, HostPath) {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        (
            root.check("/var/lib/kubelet/plugins/x/globalmount", "s")
                .unwrap(),
            root.check("/var/lib/kubelet/pods/p/volumes/v/mount", "t")
                .unwrap(),
        )
    }

    fn stage_req(cap: VolumeCapability) -> NodeStage {
        NodeStage {
            native_id: "d~pvc-1".into(),
            publish_context: BTreeMap::new(),
            staging: paths().0,
            capability: cap,
            volume_context: BTreeMap::from([(
                EXPORT_CONTEXT_KEY.to_owned(),
                "10.0.0.5:/exports/pvc-1".to_owned(),
            )]),
            secrets: Secrets::default(),
        }
    }

    #[tokio::test]
    async fn stages_the_export_once_publishes_it_and_reports_it() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        let req = stage_req(cap(AccessMode::MultiNodeMultiWriter, &["noatime"]));
        n.stage(&req).await.unwrap();
        n.stage(&req).await.unwrap();
        let mounts: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount"))
            .collect();
        assert_eq!(
            mounts,
            [
                "mount 10.0.0.5:/exports/pvc-1 /var/lib/kubelet/plugins/x/globalmount nfs vers=3,timeo=600,noresvport,nolock,hard,noatime,nosuid,nodev"
            ]
        );
        let (staging, target) = paths();
        n.publish(&NodePublish {
            native_id: "d~pvc-1".into(),
            staging: Some(staging.clone()),
            target: target.clone(),
            capability: req.capability.clone(),
            readonly: false,
            publish_context: BTreeMap::new(),
            volume_context: req.volume_context.clone(),
            secrets: Secrets::default(),
        })
        .await
        .unwrap();
        host.add_path(target.as_path());
        assert!(matches!(
            n.stats("d~pvc-1", &target).await.unwrap(),
            VolumeUsage::Filesystem { .. }
        ));
        n.unpublish("d~pvc-1", &target).await.unwrap();
        n.unstage("d~pvc-1", &staging).await.unwrap();
        assert!(host.mount_table().is_empty());
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_serve_before_touching_the_host() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        let mut no_export = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        no_export.volume_context.clear();
        assert_eq!(
            n.stage(&no_export).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let bad_flag = stage_req(cap(AccessMode::MultiNodeMultiWriter, &["suid"]));
        assert_eq!(
            n.stage(&bad_flag).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut block = stage_req(cap(AccessMode::SingleNodeWriter, &[]));
        block.capability.access_type = AccessType::Block;
        assert_eq!(
            n.stage(&block).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        host.set_kernel_filesystems(&["ext4"]);
        let err = n
            .stage(&stage_req(cap(AccessMode::MultiNodeMultiWriter, &[])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(!host.calls().iter().any(|c| c.starts_with("mount")));
        assert!(
            !host
                .exists(Path::new("/var/lib/kubelet/plugins/x/globalmount"))
                .await
                .unwrap()
        );
    }
}
