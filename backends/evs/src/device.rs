//! Finding an attached disk on the node. A KVM guest shows a virtio disk as
//! `/dev/disk/by-id/virtio-<first 20 characters of the disk ID>` and a SCSI disk as
//! `scsi-3<wwn>` or `wwn-0x<wwn>`; the attach may take a moment to appear, so we poll. Without
//! udev there are no such links: a virtio disk is then found by the serial the kernel shows in
//! `/sys/block/<name>/serial` (the same first 20 characters).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use everest_backend::host::Host;
use everest_backend::{Error, Result};
use tokio::time::Instant;

use crate::controller::WWN_CONTEXT_KEY;

/// The serial a virtio disk shows for the cloud disk `disk_id`.
fn virtio_serial(disk_id: &str) -> String {
    disk_id.chars().take(20).collect()
}

/// The by-id names a disk may appear under, most likely first.
pub fn candidate_links(
    by_id_dir: &Path,
    disk_id: &str,
    publish_context: &BTreeMap<String, String>,
) -> Vec<PathBuf> {
    let serial = virtio_serial(disk_id);
    let mut links = vec![by_id_dir.join(format!("virtio-{serial}"))];
    if let Some(wwn) = publish_context
        .get(WWN_CONTEXT_KEY)
        .filter(|w| !w.is_empty())
    {
        links.push(by_id_dir.join(format!("scsi-3{wwn}")));
        links.push(by_id_dir.join(format!("wwn-0x{wwn}")));
    }
    links
}

/// Resolves the disk's device node, polling (50 ms doubling to 1 s) until `wait` runs out.
pub async fn find_device(
    host: &dyn Host,
    by_id_dir: &Path,
    disk_id: &str,
    publish_context: &BTreeMap<String, String>,
    wait: Duration,
) -> Result<PathBuf> {
    let links = candidate_links(by_id_dir, disk_id, publish_context);
    let deadline = Instant::now() + wait;
    let mut interval = Duration::from_millis(50);
    loop {
        // A link that exists but does not lead to a block device (udev still settling, a stale
        // or foreign link) must neither end the search nor hide the other names: try them all,
        // keep waiting, and report what was wrong if nothing turns up.
        let mut problems = Vec::new();
        for link in &links {
            match host.resolve_device(link).await {
                Ok(Some(device)) => return Ok(device),
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        match by_serial(host, disk_id).await {
            Ok(Some(device)) => return Ok(device),
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
        let now = Instant::now();
        if now >= deadline {
            let mut tried: Vec<String> = links.iter().map(|l| l.display().to_string()).collect();
            tried.push(format!("a disk with serial {}", virtio_serial(disk_id)));
            let problems = if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            };
            // NOT_FOUND is what CSI asks of NodeStage for a volume that does not exist; for one
            // still attaching, the kubelet retries it like any other error.
            return Err(Error::NotFound(format!(
                "disk {disk_id} did not appear on this node within {wait:?} (looked for {}){problems}; is it attached here (ControllerPublishVolume)?",
                tried.join(", ")
            )));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_secs(1));
    }
}

/// The disk whose kernel serial is this disk's virtio serial, if it is a block device.
async fn by_serial(host: &dyn Host, disk_id: &str) -> Result<Option<PathBuf>> {
    let Some(device) = host.device_by_serial(&virtio_serial(disk_id)).await? else {
        return Ok(None);
    };
    Ok(host.is_block_device(&device).await?.then_some(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use everest_backend::host::{FakeDevice, FakeHost};

    #[test]
    fn virtio_serial_is_the_first_20_characters() {
        let links = candidate_links(
            Path::new("/d"),
            "0123456789abcdefghijKLMN",
            &BTreeMap::new(),
        );
        assert_eq!(links, vec![PathBuf::from("/d/virtio-0123456789abcdefghij")]);
        let ctx = BTreeMap::from([(WWN_CONTEXT_KEY.to_string(), "688860300001".to_string())]);
        assert_eq!(candidate_links(Path::new("/d"), "x", &ctx).len(), 3);
    }

    #[tokio::test]
    async fn finds_the_device_or_times_out_with_the_names_tried() {
        let host = FakeHost::default();
        host.add_device(
            Path::new("/d/virtio-abc"),
            Path::new("/dev/loop7"),
            FakeDevice::default(),
        );
        let dev = find_device(
            &host,
            Path::new("/d"),
            "abc",
            &BTreeMap::new(),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(dev, PathBuf::from("/dev/loop7"));
        let err = find_device(
            &host,
            Path::new("/d"),
            "missing",
            &BTreeMap::new(),
            Duration::from_millis(120),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.to_string().contains("/d/virtio-missing"), "{err}");
    }

    #[tokio::test]
    async fn a_link_to_a_non_block_file_neither_ends_the_search_nor_hides_other_names() {
        let host = FakeHost::default();
        host.add_link(Path::new("/d/virtio-abc"), Path::new("/tmp/not-a-device"));
        let ctx = BTreeMap::from([(WWN_CONTEXT_KEY.to_string(), "6888".to_string())]);
        host.add_device(
            Path::new("/d/scsi-36888"),
            Path::new("/dev/sdb"),
            FakeDevice::default(),
        );
        let dev = find_device(&host, Path::new("/d"), "abc", &ctx, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(dev, PathBuf::from("/dev/sdb"));

        let err = find_device(
            &host,
            Path::new("/d"),
            "abc",
            &BTreeMap::new(),
            Duration::from_millis(60),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        assert!(err.to_string().contains("not a block device"), "{err}");
    }

    #[tokio::test]
    async fn without_a_by_id_link_the_disk_is_found_by_its_serial() {
        let host = FakeHost::default();
        let id = "0123456789abcdefghijKLMN";
        host.add_unlinked_device(
            Path::new("/dev/vdc"),
            FakeDevice {
                serial: Some("0123456789abcdefghij".into()),
                ..FakeDevice::default()
            },
        );
        host.add_unlinked_device(
            Path::new("/dev/vdb"),
            FakeDevice {
                serial: Some("another-disk-serial0".into()),
                ..FakeDevice::default()
            },
        );
        let found = find_device(&host, Path::new("/d"), id, &BTreeMap::new(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(found, PathBuf::from("/dev/vdc"));
        let err = find_device(
            &host,
            Path::new("/d"),
            "0123456789abcdefghiX",
            &BTreeMap::new(),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(
            err.to_string().contains("serial 0123456789abcdefghiX"),
            "{err}"
        );
    }
}
