//! What the kernel's `/sys/block` tells about disks, for when udev is missing or slow: a disk's
//! serial (a virtio disk's is the first 20 characters of the cloud's disk ID) and the SCSI
//! rescan that makes a guest see a disk's new size.

use std::path::{Path, PathBuf};

use super::HostError;

fn io_err(what: &str, p: &Path, e: std::io::Error) -> HostError {
    HostError::new(format!("{what} {}", p.display()), e.to_string())
}

/// Asks the kernel to re-read the size of `device` (`/sys/block/<name>/device/rescan`, which
/// only SCSI disks have). `Ok(false)` when the device has no such file: a virtio disk learns its
/// new size by itself.
pub async fn rescan(sysfs_root: &Path, device: &Path) -> Result<bool, HostError> {
    // The kernel's name of the disk: a by-id link or a /dev path resolve to /dev/<name>.
    let resolved = tokio::fs::canonicalize(device)
        .await
        .unwrap_or_else(|_| device.to_owned());
    let Some(name) = resolved.file_name() else {
        return Ok(false);
    };
    let file = sysfs_root
        .join("block")
        .join(name)
        .join("device")
        .join("rescan");
    match tokio::fs::metadata(&file).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("stat", &file, e)),
    }
    tokio::fs::write(&file, b"1")
        .await
        .map_err(|e| io_err("write", &file, e))?;
    Ok(true)
}

/// The disk whose `/sys/block/<name>/serial` is `serial`, as `<dev_root>/<name>`.
pub async fn device_by_serial(
    sysfs_root: &Path,
    dev_root: &Path,
    serial: &str,
) -> Result<Option<PathBuf>, HostError> {
    let block = sysfs_root.join("block");
    let mut entries = match tokio::fs::read_dir(&block).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("list", &block, e)),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| io_err("list", &block, e))?
    {
        // Only virtio disks have this file; others (loop, SCSI) lack it, which is fine.
        let Ok(found) = tokio::fs::read_to_string(entry.path().join("serial")).await else {
            continue;
        };
        if !serial.is_empty() && found.trim() == serial {
            return Ok(Some(dev_root.join(entry.file_name())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(root: &Path, name: &str, serial: Option<&str>, scsi: bool) {
        let dir = root.join("block").join(name);
        std::fs::create_dir_all(dir.join("device")).unwrap();
        if let Some(s) = serial {
            std::fs::write(dir.join("serial"), format!("{s}\n")).unwrap();
        }
        if scsi {
            std::fs::write(dir.join("device/rescan"), b"").unwrap();
        }
    }

    #[tokio::test]
    async fn finds_a_disk_by_its_serial_only() {
        let sys = tempfile::tempdir().unwrap();
        disk(sys.path(), "vda", Some("system-disk-serial00"), false);
        disk(sys.path(), "vdb", Some("0123456789abcdefghij"), false);
        disk(sys.path(), "loop0", None, false);
        let dev = Path::new("/dev");
        assert_eq!(
            device_by_serial(sys.path(), dev, "0123456789abcdefghij")
                .await
                .unwrap(),
            Some(PathBuf::from("/dev/vdb"))
        );
        assert_eq!(
            device_by_serial(sys.path(), dev, "0123456789abcdefghiX")
                .await
                .unwrap(),
            None
        );
        assert_eq!(device_by_serial(sys.path(), dev, "").await.unwrap(), None);
        let missing = sys.path().join("nothing");
        assert_eq!(device_by_serial(&missing, dev, "x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn rescans_scsi_disks_and_leaves_virtio_alone() {
        let sys = tempfile::tempdir().unwrap();
        disk(sys.path(), "sdb", None, true);
        disk(sys.path(), "vdb", Some("abc"), false);
        assert!(
            rescan(sys.path(), Path::new("/nonexistent/sdb"))
                .await
                .unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(sys.path().join("block/sdb/device/rescan")).unwrap(),
            "1"
        );
        assert!(
            !rescan(sys.path(), Path::new("/nonexistent/vdb"))
                .await
                .unwrap()
        );
        assert!(!sys.path().join("block/vdb/device/rescan").exists());
    }
}
