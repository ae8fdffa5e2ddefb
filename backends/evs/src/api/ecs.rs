//! ECS: attaching and detaching disks, and the disks a server holds.

use reqwest::Method;
use serde::Deserialize;

use super::EvsClient;
use super::error::Result;
use super::evs::{JobAccepted, JobId};
use everest_cloud::lenient;
use everest_cloud::{Call, Service};

/// The ECS code for "this disk is not attached to this server".
pub const NOT_ATTACHED_CODE: &str = "Ecs.0111";

/// A disk as the server's `block_device` call describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockDevice {
    /// The attachment id (the disk id).
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub id: String,
    /// The server.
    #[serde(
        rename = "serverId",
        default,
        deserialize_with = "lenient::null_default"
    )]
    pub server_id: String,
    /// The disk.
    #[serde(
        rename = "volumeId",
        default,
        deserialize_with = "lenient::null_default"
    )]
    pub volume_id: String,
    /// The device name the cloud reports.
    #[serde(default)]
    pub device: Option<String>,
    /// `virtio` or `scsi`.
    #[serde(default)]
    pub bus: Option<String>,
    /// The PCI address in the guest.
    #[serde(rename = "pciAddress", default)]
    pub pci_address: Option<String>,
    /// Size in GB.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub size: u64,
}

/// How many more disks a server can take, per bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AttachableQuantity {
    /// Free SCSI slots.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub free_scsi: u64,
    /// Free virtio-blk slots.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub free_blk: u64,
    /// Free slots overall.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub free_disk: u64,
}

/// A server's disks and its remaining slots.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockDevices {
    /// The attached disks.
    #[serde(
        rename = "volumeAttachments",
        default,
        deserialize_with = "lenient::null_default"
    )]
    pub volume_attachments: Vec<BlockDevice>,
    /// Remaining slots, when the cloud reports them.
    #[serde(rename = "attachableQuantity", default)]
    pub attachable_quantity: Option<AttachableQuantity>,
}

impl EvsClient {
    fn cloudservers_path(&self, server_id: &str, rest: &[&str]) -> Vec<String> {
        let mut path = vec![
            "v1".to_owned(),
            self.project_id().to_owned(),
            "cloudservers".to_owned(),
            server_id.to_owned(),
        ];
        path.extend(rest.iter().map(|s| (*s).to_owned()));
        path
    }

    /// Starts attaching a disk to a server.
    pub async fn attach_volume(&self, server_id: &str, volume_id: &str) -> Result<JobId> {
        let body = serde_json::json!({"volumeAttachment": {"volumeId": volume_id}});
        let call = Call::new(
            Service::Ecs,
            "attach_volume",
            Method::POST,
            self.cloudservers_path(server_id, &["attachvolume"]),
        )
        .json(&body)?;
        Ok(self
            .transport()
            .execute(&call)
            .await?
            .json::<JobAccepted>(&call)?
            .job_id)
    }

    /// Starts detaching a disk; `None` when ECS says it is not attached (`Ecs.0111`).
    pub async fn detach_volume(&self, server_id: &str, volume_id: &str) -> Result<Option<JobId>> {
        let mut call = Call::new(
            Service::Ecs,
            "detach_volume",
            Method::DELETE,
            self.cloudservers_path(server_id, &["detachvolume", volume_id]),
        );
        call.query = vec![("delete_flag".into(), "0".into())];
        match self.transport().execute(&call).await {
            Ok(reply) => Ok(Some(reply.json::<JobAccepted>(&call)?.job_id)),
            Err(e)
                if e.code()
                    .is_some_and(|c| c.eq_ignore_ascii_case(NOT_ATTACHED_CODE)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A server's attached disks and remaining attach slots.
    pub async fn block_devices(&self, server_id: &str) -> Result<BlockDevices> {
        let call = Call::new(
            Service::Ecs,
            "block_devices",
            Method::GET,
            self.cloudservers_path(server_id, &["block_device"]),
        );
        self.transport().execute(&call).await?.json(&call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_devices_decode() {
        let b: BlockDevices = serde_json::from_str(
            r#"{"volumeAttachments":[{"id":"v1","serverId":"s1","volumeId":"v1","device":"/dev/vdb",
                "bus":"virtio","pciAddress":"0000:02:01.0","size":40,"bootIndex":null}],
                "attachableQuantity":{"free_scsi":59,"free_blk":22,"free_disk":22}}"#,
        )
        .unwrap();
        assert_eq!(b.volume_attachments[0].volume_id, "v1");
        assert_eq!(b.volume_attachments[0].bus.as_deref(), Some("virtio"));
        assert_eq!(b.attachable_quantity.unwrap().free_disk, 22);
        let empty: BlockDevices = serde_json::from_str("{}").unwrap();
        assert!(empty.volume_attachments.is_empty() && empty.attachable_quantity.is_none());
    }
}
