//! The node side of object volumes: the bucket (or prefix) is mounted once per node at the
//! staging path by a FUSE mounter and bind-mounted into each pod. The node holds no cloud
//! credentials: each volume's keys come in the NodeStage secrets and live, while the volume is
//! staged, in a file only root can read, in a private runtime directory; the mounter reads
//! them from there (never from its command line or environment), and unstage removes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::backend::{
    BackendKind, Capabilities, NodeBackend, NodeExpand, NodePublish, NodeStage, VolumeUsage,
    unsupported,
};
use everest_backend::capability::{AccessType, VolumeCapability};
use everest_backend::host::{Host, LostMount, MountEntry, bind_again, mounts_at};
use everest_backend::node::{
    PublishMode, filesystem_usage, mount_of_kind, publish_filesystem, unmount_and_remove,
};
use everest_backend::paths::HostPath;
use everest_backend::{BackendName, Error, Result};

use crate::config::ObsConfig;
use crate::credentials::{ACCESS_KEY_SECRET, S3Keys, SECRET_KEY_SECRET};
use crate::mounter::{MountSource, Mounter, Run};
use crate::supervisor::client::SupervisorClient;
use crate::supervisor::protocol::{MountSpec, MountStatus};
use crate::volume::{ObsVolume, check_endpoint, check_region, short_hash};
use crate::{CAPABILITIES, check_capability, context};

/// The node side of one `obs` instance.
#[derive(Debug)]
pub struct ObsNode {
    name: BackendName,
    config: ObsConfig,
    host: Arc<dyn Host>,
    /// The mounter supervisor, when the backend names its socket; else the node starts the
    /// mounters itself (as daemons).
    supervisor: Option<SupervisorClient>,
}

/// How long a call to the supervisor may take: a start waits for the mount (up to the
/// supervisor's 60 s), under the kubelet's two minutes.
const SUPERVISOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Where and how a volume is mounted, from its ID, its context and the backend's defaults.
#[derive(Debug)]
struct Target {
    volume: ObsVolume,
    endpoint: String,
    region: String,
    path_style: bool,
    mounter: Mounter,
}

impl ObsNode {
    /// Builds the node side on `host`.
    pub fn new(name: BackendName, config: ObsConfig, host: Arc<dyn Host>) -> Self {
        let supervisor = config.supervisor_socket.clone().map(|socket| {
            // Longer than the supervisor's own mount limit, so its answer arrives first.
            SupervisorClient::new(socket, SUPERVISOR_TIMEOUT)
        });
        Self {
            name,
            config,
            host,
            supervisor,
        }
    }

    /// The credentials file of the volume staged at `staging` (s3fs's passwd file, or
    /// rclone's config): one per staging path, so unstage (which gets only the path) finds it.
    pub fn credentials_file(&self, staging: &HostPath) -> PathBuf {
        self.credentials_file_of(staging.as_path())
    }

    fn credentials_file_of(&self, staging: &Path) -> PathBuf {
        let key = short_hash(&staging.display().to_string(), 24);
        self.config.runtime_dir.join(format!("{key}.secret"))
    }

    /// What the supervisor says of the FUSE mount `mount` (at a staging path, or a bind of
    /// one: the same filesystem, so the same device number), if it supervises it.
    async fn supervised_status(
        &self,
        client: &SupervisorClient,
        mount: &MountEntry,
    ) -> Result<Option<MountStatus>> {
        let statuses = client.list().await?;
        let all = self.host.mounts().await?;
        Ok(statuses.into_iter().find(|s| {
            s.target == mount.mount_point
                || all
                    .iter()
                    .any(|m| m.mount_point == s.target && m.device_number == mount.device_number)
        }))
    }

    fn target(&self, native_id: &str, ctx: &BTreeMap<String, String>) -> Result<Target> {
        let volume: ObsVolume = native_id.parse()?;
        let bad = |key: &str, why: String| {
            Error::InvalidArgument(format!("volume {native_id}: volume context {key}: {why}"))
        };
        if let Some(b) = ctx.get(context::BUCKET)
            && *b != volume.bucket
        {
            return Err(bad(
                context::BUCKET,
                format!("{b:?} is not the bucket in the volume ID"),
            ));
        }
        if let Some(p) = ctx.get(context::PREFIX)
            && Some(p) != volume.prefix.as_ref()
        {
            return Err(bad(
                context::PREFIX,
                format!("{p:?} is not the prefix in the volume ID"),
            ));
        }
        let endpoint = ctx
            .get(context::ENDPOINT)
            .unwrap_or(&self.config.endpoint)
            .clone();
        check_endpoint(&endpoint).map_err(|e| bad(context::ENDPOINT, e))?;
        let region = ctx
            .get(context::REGION)
            .unwrap_or(&self.config.region)
            .clone();
        check_region(&region).map_err(|e| bad(context::REGION, e))?;
        let path_style = match ctx.get(context::PATH_STYLE) {
            None => self.config.path_style,
            Some(v) => v
                .parse()
                .map_err(|_| bad(context::PATH_STYLE, format!("{v:?} is not true or false")))?,
        };
        let mounter = match ctx.get(context::MOUNTER) {
            None => self.config.mounter,
            Some(m) => m.parse().map_err(|e| bad(context::MOUNTER, e))?,
        };
        Ok(Target {
            volume,
            endpoint,
            region,
            path_style,
            mounter,
        })
    }

    /// The backend's options, then the capability's, checked against the mounter's allowlist.
    fn options(&self, mounter: Mounter, cap: &VolumeCapability) -> Result<Vec<String>> {
        let mut user = self.config.mount_options.clone();
        if let AccessType::Mount { mount_flags, .. } = &cap.access_type {
            user.extend(mount_flags.iter().cloned());
        }
        mounter
            .check_options(&user)
            .map_err(Error::InvalidArgument)?;
        Ok(user)
    }
}

#[async_trait]
impl NodeBackend for ObsNode {
    fn kind(&self) -> BackendKind {
        BackendKind::Object
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn check_capability(&self, cap: &VolumeCapability) -> Result<()> {
        check_capability(cap)
    }

    async fn stage(&self, req: &NodeStage) -> Result<()> {
        check_capability(&req.capability)?;
        let t = self.target(&req.native_id, &req.volume_context)?;
        let options = self.options(t.mounter, &req.capability)?;
        let readonly = req.capability.access_mode.is_read_only();
        let staging = &req.staging;
        // A dead staged mount this call replaces: the pods' binds of it are bound again once
        // it is mounted anew.
        let mut lost = None;
        if let Some(m) = mounts_at(self.host.as_ref(), staging.as_path())
            .await?
            .last()
        {
            if m.fs_type != t.mounter.fs_type() {
                return Err(Error::AlreadyExists(format!(
                    "staging path {staging} already has {} ({}) mounted, not object volume {}",
                    m.source, m.fs_type, req.native_id
                )));
            }
            if m.is_read_only() != readonly {
                return Err(Error::AlreadyExists(format!(
                    "volume {} is staged at {staging} with readonly={}, not readonly={readonly}; unstage it first",
                    req.native_id,
                    m.is_read_only()
                )));
            }
            match self.host.fs_stats(staging.as_path()).await {
                Ok(_) => return Ok(()),
                // The mounter died ("transport endpoint is not connected"): mount it again.
                // With a supervisor, it replaces the mount (it may be doing so right now) and
                // binds the pods' paths again: asked below, never unmounted under it.
                Err(e) if self.supervisor.is_some() => {
                    tracing::warn!(volume = %req.native_id, %staging, error = %e, "staged FUSE mount is dead; asking the mounter supervisor for it");
                }
                Err(e) => {
                    tracing::warn!(volume = %req.native_id, %staging, error = %e, "staged FUSE mount is dead; mounting it again");
                    lost = LostMount::at(self.host.as_ref(), staging.as_path()).await?;
                    self.host.unmount_fuse(staging.as_path()).await?;
                }
            }
        }
        let keys = S3Keys::from_secrets(&req.secrets)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "volume {}: NodeStage has no S3 credentials; put {ACCESS_KEY_SECRET} and {SECRET_KEY_SECRET} in the Secret named by csi.storage.k8s.io/node-stage-secret-name",
                req.native_id
            ))
        })?;
        if !self.host.kernel_supports("fuse").await? {
            return Err(Error::FailedPrecondition(format!(
                "volume {}: this node's kernel has no FUSE (no fuse in /proc/filesystems); load the fuse module, then retry",
                req.native_id
            )));
        }
        let spec = MountSpec {
            backend: self.name.to_string(),
            mounter: t.mounter,
            endpoint: t.endpoint.clone(),
            region: t.region.clone(),
            path_style: t.path_style,
            bucket: t.volume.bucket.clone(),
            prefix: t.volume.prefix.clone(),
            target: staging.as_path().to_owned(),
            credentials_file: self.credentials_file(staging),
            options,
            readonly,
        };
        let source = MountSource {
            endpoint: &t.endpoint,
            region: &t.region,
            path_style: t.path_style,
            bucket: &t.volume.bucket,
            prefix: t.volume.prefix.as_deref(),
        };
        self.host.make_dir(staging.as_path()).await?;
        self.host
            .write_private_file(
                &spec.credentials_file,
                t.mounter.credentials(&keys, &source).as_bytes(),
            )
            .await?;
        let mounted = match &self.supervisor {
            Some(client) => client.start(&spec).await.map(drop),
            None => self
                .host
                .mount_fuse(&spec.command(Run::Daemon), staging.as_path())
                .await
                .map_err(Error::from),
        };
        if let Err(e) = mounted {
            // A mounter stopped at its time limit (or a supervisor still at work) may have
            // mounted: unstage cleans up then.
            if !matches!(e, Error::DeadlineExceeded(_)) {
                let _ = self.host.remove_path(&spec.credentials_file).await;
            }
            return Err(e.context(format!(
                "volume {}: mounting bucket {} with {}",
                req.native_id, t.volume.bucket, t.mounter
            )));
        }
        if let Some(lost) = lost {
            let binds = lost.binds(self.host.as_ref(), staging.as_path()).await?;
            bind_again(self.host.as_ref(), staging.as_path(), &binds).await;
        }
        tracing::info!(volume = %req.native_id, %staging, mounter = %t.mounter, "object volume staged");
        Ok(())
    }

    async fn unstage(&self, native_id: &str, staging: &HostPath) -> Result<()> {
        if let Some(client) = &self.supervisor {
            // The supervisor unmounts and ends the mounter; what it did not mount (a mount
            // from before it was configured) goes below like any other.
            let known = client.stop(staging.as_path()).await?;
            tracing::debug!(volume = %native_id, %staging, supervised = known, "asked the mounter supervisor to stop");
        }
        // Unmount until nothing is left: a retried stage may have stacked mounts.
        for _ in 0..16 {
            let Some(m) = mounts_at(self.host.as_ref(), staging.as_path())
                .await?
                .pop()
            else {
                self.host
                    .remove_path(&self.credentials_file(staging))
                    .await?;
                return Ok(());
            };
            if m.fs_type.starts_with("fuse") {
                self.host.unmount_fuse(staging.as_path()).await?;
            } else {
                self.host.unmount(staging.as_path()).await?;
            }
        }
        Err(Error::Internal(format!(
            "{staging} still has mounts after 16 unmounts; something keeps mounting there"
        )))
    }

    async fn publish(&self, req: &NodePublish) -> Result<()> {
        check_capability(&req.capability)?;
        // A bind of a mount whose mounter died stays dead after the stage is repaired: drop it
        // so it is bound again from the live staging mount.
        let target = req.target.as_path();
        if !mounts_at(self.host.as_ref(), target).await?.is_empty()
            && let Err(e) = self.host.fs_stats(target).await
        {
            tracing::warn!(volume = %req.native_id, target = %req.target, error = %e, "published FUSE mount is dead; binding it again");
            self.host.unmount(target).await?;
        }
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
            "fuse",
            "object volume",
        )
        .await?;
        // A mounter that died leaves a mount that cannot be read: an abnormal volume.
        let usage = filesystem_usage(self.host.as_ref(), &mount, volume_path).await?;
        let mut notes = Vec::new();
        // A live bind stacked over a dead one: the mounter was restarted and this path bound
        // again, which a container sees only through mount propagation.
        let under = mounts_at(self.host.as_ref(), volume_path.as_path()).await?;
        if under[..under.len().saturating_sub(1)]
            .iter()
            .any(|m| m.fs_type.starts_with("fuse") && m.device_number != mount.device_number)
        {
            notes.push(format!(
                "its FUSE mounter was restarted and {volume_path} bound again; a container started before then still sees the dead mount unless its volumeMount has mountPropagation HostToContainer: restart that pod"
            ));
        }
        // The supervisor knows more: a mounter being restarted, or given up.
        if let Some(client) = &self.supervisor {
            match self.supervised_status(client, &mount).await {
                Ok(status) => notes.extend(status.and_then(|s| s.abnormal())),
                Err(e) => notes.push(format!(
                    "{e}: a mounter that dies will not be restarted until it is back"
                )),
            }
        }
        let said = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(match (usage, said) {
            (VolumeUsage::Filesystem { stats, abnormal }, Some(said)) => VolumeUsage::Filesystem {
                stats,
                abnormal: Some(abnormal.map_or(said.clone(), |a| format!("{a}; {said}"))),
            },
            (VolumeUsage::Lost { .. }, Some(said)) => VolumeUsage::Lost { abnormal: said },
            (usage, _) => usage,
        })
    }

    async fn recover(&self) -> Result<()> {
        // Ours: FUSE mounts of our mounters whose credentials file is in our runtime dir.
        let fs_types = [Mounter::S3fs.fs_type(), Mounter::Rclone.fs_type()];
        let mut ours = Vec::new();
        for m in self.host.mounts().await?.iter() {
            if fs_types.contains(&m.fs_type.as_str())
                && self
                    .host
                    .exists(&self.credentials_file_of(&m.mount_point))
                    .await?
            {
                ours.push(m.clone());
            }
        }
        let supervised = match &self.supervisor {
            Some(client) => client.list().await?,
            None => Vec::new(),
        };
        for m in &ours {
            let status = supervised.iter().find(|s| s.target == m.mount_point);
            let serving = self.host.fs_stats(&m.mount_point).await.is_ok();
            tracing::info!(
                backend = %self.name,
                staging = %m.mount_point.display(),
                fs_type = %m.fs_type,
                serving,
                supervised = status.is_some(),
                state = ?status.map(|s| s.state),
                "re-adopted an object volume's FUSE mount"
            );
            if self.supervisor.is_some() && status.is_none() {
                tracing::warn!(staging = %m.mount_point.display(), "this mount's mounter is not supervised (it was mounted without the supervisor); it is restarted only by unstaging and staging the volume again");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use everest_backend::capability::AccessMode;
    use everest_backend::host::FakeHost;
    use everest_backend::paths::AllowedRoot;
    use everest_backend::secrets::Secrets;

    use super::*;

    fn node(host: Arc<FakeHost>) -> ObsNode {
        let table = serde_json::json!({
            "endpoint": "http://127.0.0.1:9000", "runtime_dir": "/run/test-obs",
            "mount_options": ["multipart_size=16"]
        });
        let config = ObsConfig::parse("objects", table.as_object().unwrap()).unwrap();
        ObsNode::new(BackendName::new("objects").unwrap(), config, host)
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

    fn keys() -> Secrets {
        Secrets::new(BTreeMap::from([
            ("access.key".to_owned(), "AK".to_owned()),
            ("secret.key".to_owned(), "hunter2".to_owned()),
        ]))
    }

    fn stage_req(cap: VolumeCapability) -> NodeStage {
        NodeStage {
            native_id: "d~shared/pvc-1".into(),
            publish_context: BTreeMap::new(),
            staging: paths().0,
            capability: cap,
            volume_context: BTreeMap::from([
                (context::BUCKET.to_owned(), "shared".to_owned()),
                (context::PREFIX.to_owned(), "pvc-1".to_owned()),
            ]),
            secrets: keys(),
        }
    }

    #[tokio::test]
    async fn stages_once_publishes_and_cleans_up_the_credentials() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        let req = stage_req(cap(AccessMode::MultiNodeMultiWriter, &["uid=1000"]));
        n.stage(&req).await.unwrap();
        n.stage(&req).await.unwrap();
        let passwd = n.credentials_file(&req.staging);
        assert!(passwd.starts_with("/run/test-obs"));
        let calls = host.calls();
        let fuse: Vec<&String> = calls.iter().filter(|c| c.starts_with("fuse")).collect();
        assert_eq!(fuse.len(), 1, "{calls:?}");
        assert!(
            fuse[0].starts_with("fuse s3fs shared:/pvc-1 /var/lib/kubelet/plugins/x/globalmount -o url=http://127.0.0.1:9000,endpoint=us-east-1,passwd_file=/run/test-obs/"),
            "{}",
            fuse[0]
        );
        assert!(
            fuse[0]
                .ends_with("multipart_size=16,uid=1000 -> /var/lib/kubelet/plugins/x/globalmount"),
            "{}",
            fuse[0]
        );
        assert!(!calls.iter().any(|c| c.contains("hunter2")));
        assert!(host.exists(&passwd).await.unwrap());

        let (staging, target) = paths();
        n.publish(&NodePublish {
            native_id: req.native_id.clone(),
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
            n.stats(&req.native_id, &target).await.unwrap(),
            VolumeUsage::Filesystem { .. }
        ));
        n.unpublish(&req.native_id, &target).await.unwrap();
        n.unstage(&req.native_id, &staging).await.unwrap();
        n.unstage(&req.native_id, &staging).await.unwrap();
        assert!(host.mount_table().is_empty());
        assert!(!host.exists(&passwd).await.unwrap());
        assert!(host.calls().iter().any(|c| c.starts_with("fusermount -u")));
    }

    fn publish_req(stage: &NodeStage) -> NodePublish {
        let (staging, target) = paths();
        NodePublish {
            native_id: stage.native_id.clone(),
            staging: Some(staging),
            target,
            capability: stage.capability.clone(),
            readonly: false,
            publish_context: BTreeMap::new(),
            volume_context: stage.volume_context.clone(),
            secrets: Secrets::default(),
        }
    }

    fn abnormal(usage: VolumeUsage) -> Option<String> {
        match usage {
            VolumeUsage::Filesystem { abnormal, .. } => abnormal,
            VolumeUsage::Lost { abnormal } => Some(abnormal),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dead_mounter_is_reported_and_the_next_stage_repairs_the_pods_bind_too() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        let req = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        let publish = publish_req(&req);
        let (staging, target) = paths();
        n.stage(&req).await.unwrap();
        n.publish(&publish).await.unwrap();
        host.add_path(target.as_path());
        assert_eq!(
            abnormal(n.stats(&req.native_id, &target).await.unwrap()),
            None
        );

        host.kill_fuse_mounter(staging.as_path());
        let said = abnormal(n.stats(&req.native_id, &target).await.unwrap()).unwrap();
        assert!(said.contains("not connected"), "{said}");

        // The next stage mounts anew and binds the new mount over the pod's dead bind, without
        // a publish; the pod's path is stacked (old under new) and says what a container needs.
        n.stage(&req).await.unwrap();
        let at_target = mounts_at(host.as_ref(), target.as_path()).await.unwrap();
        assert_eq!(at_target.len(), 2, "{at_target:?}");
        assert!(host.fs_stats(target.as_path()).await.is_ok());
        let said = abnormal(n.stats(&req.native_id, &target).await.unwrap()).unwrap();
        assert!(said.contains("mountPropagation HostToContainer"), "{said}");
        // The staging path itself serves, with nothing stacked: no note there.
        host.add_path(staging.as_path());
        assert_eq!(
            abnormal(n.stats(&req.native_id, &staging).await.unwrap()),
            None
        );

        // A publish finds the live bind in place; unpublish takes both binds away.
        n.publish(&publish).await.unwrap();
        n.unpublish(&req.native_id, &target).await.unwrap();
        assert!(
            mounts_at(host.as_ref(), target.as_path())
                .await
                .unwrap()
                .is_empty()
        );
        n.unstage(&req.native_id, &staging).await.unwrap();
        assert!(host.mount_table().is_empty(), "{:?}", host.mount_table());
    }

    #[tokio::test]
    async fn read_only_modes_mount_read_only() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        n.stage(&stage_req(cap(AccessMode::MultiNodeReaderOnly, &[])))
            .await
            .unwrap();
        assert!(host.mount_table()[0].is_read_only());
        // The same staging path asked for read-write: a conflict, not a second mount.
        let err = n
            .stage(&stage_req(cap(AccessMode::MultiNodeMultiWriter, &[])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
    }

    #[tokio::test]
    async fn refuses_bad_input_before_touching_the_host() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        let mut no_keys = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        no_keys.secrets = Secrets::default();
        let mut wrong_bucket = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        wrong_bucket
            .volume_context
            .insert(context::BUCKET.into(), "other".into());
        let mut bad_mounter = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        bad_mounter
            .volume_context
            .insert(context::MOUNTER.into(), "goofys".into());
        let mut bad_endpoint = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        bad_endpoint.volume_context.insert(
            context::ENDPOINT.into(),
            "http://h,passwd_file=/etc/shadow".into(),
        );
        let mut block = stage_req(cap(AccessMode::SingleNodeWriter, &[]));
        block.capability.access_type = AccessType::Block;
        for (what, req) in [
            ("no keys", no_keys),
            ("wrong bucket", wrong_bucket),
            ("unknown mounter", bad_mounter),
            ("smuggling endpoint", bad_endpoint),
            ("block", block),
            (
                "smuggled option",
                stage_req(cap(
                    AccessMode::MultiNodeMultiWriter,
                    &["uid=0,passwd_file=/x"],
                )),
            ),
            (
                "reserved option",
                stage_req(cap(AccessMode::MultiNodeMultiWriter, &["url=http://evil"])),
            ),
            (
                "single writer many nodes",
                stage_req(cap(AccessMode::MultiNodeSingleWriter, &[])),
            ),
        ] {
            let err = n.stage(&req).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err}");
            assert!(!err.to_string().contains("hunter2"));
        }
        let mut not_ours = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        not_ours.native_id = "pvc-1".into();
        assert_eq!(
            n.stage(&not_ours).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        host.set_kernel_filesystems(&["ext4"]);
        let err = n
            .stage(&stage_req(cap(AccessMode::MultiNodeMultiWriter, &[])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            !host
                .calls()
                .iter()
                .any(|c| c.starts_with("fuse") || c.starts_with("write-private"))
        );
        assert!(
            !host
                .exists(Path::new("/var/lib/kubelet/plugins/x/globalmount"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_failed_mount_leaves_no_credentials() {
        let host = Arc::new(FakeHost::default());
        let n = node(host.clone());
        host.fail("fuse", "s3fs: bucket not found");
        let req = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));
        let err = n.stage(&req).await.unwrap_err();
        assert!(err.to_string().contains("bucket not found"), "{err}");
        assert!(
            !host
                .exists(&n.credentials_file(&req.staging))
                .await
                .unwrap()
        );
        assert!(host.mount_table().is_empty());
    }

    #[tokio::test]
    async fn with_a_supervisor_the_node_asks_it_to_mount_and_unmount() {
        use crate::supervisor::host::fake::FakeMounterHost;
        use crate::supervisor::{Settings, Supervisor, server};

        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mounter.sock");
        let host = Arc::new(FakeHost::default());
        let table = serde_json::json!({
            "endpoint": "http://127.0.0.1:9000", "runtime_dir": "/run/test-obs",
            "supervisor_socket": socket,
        });
        let config = ObsConfig::parse("objects", table.as_object().unwrap()).unwrap();
        let n = ObsNode::new(BackendName::new("objects").unwrap(), config, host.clone());
        let req = stage_req(cap(AccessMode::MultiNodeMultiWriter, &[]));

        // No supervisor answers: UNAVAILABLE, and no credentials are left behind.
        let err = n.stage(&req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(err.to_string().contains("everest-mounter"), "{err}");
        assert!(
            !host
                .exists(&n.credentials_file(&req.staging))
                .await
                .unwrap()
        );

        let machine = Arc::new(FakeMounterHost::default());
        let mut settings = Settings::new(dir.path().join("state"));
        settings.poll = std::time::Duration::from_millis(10);
        let sup = Supervisor::new(machine.clone(), settings);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn({
            let socket = socket.clone();
            async move {
                server::serve(sup, &socket, async {
                    let _ = stop_rx.await;
                })
                .await
            }
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        n.stage(&req).await.unwrap();
        let spawned = machine.spawned();
        assert_eq!(spawned.len(), 1, "{spawned:?}");
        assert!(
            spawned[0].starts_with("s3fs shared:/pvc-1 /var/lib/kubelet/plugins/x/globalmount -o ")
        );
        assert!(spawned[0].ends_with(" -f") && !spawned[0].contains("hunter2"));
        assert!(
            !host.calls().iter().any(|c| c.starts_with("fuse ")),
            "the node mounted itself"
        );
        assert!(
            host.exists(&n.credentials_file(&req.staging))
                .await
                .unwrap()
        );
        n.recover().await.unwrap();

        n.unstage(&req.native_id, &req.staging).await.unwrap();
        assert!(!machine.is_mounted(req.staging.as_path()));
        assert!(
            !host
                .exists(&n.credentials_file(&req.staging))
                .await
                .unwrap()
        );
        let _ = stop_tx.send(());
        served.await.unwrap().unwrap();
        assert!(!socket.exists());
    }
}
