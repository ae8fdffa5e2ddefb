//! The Linux host against real files, tools and processes.

use super::*;

#[test]
fn reads_numbers_from_tool_output() {
    let dumpe2fs = "Block count:              2621440\nBlock size:               4096\n";
    assert_eq!(number_after(dumpe2fs, "Block count"), Some(2_621_440));
    assert_eq!(number_after(dumpe2fs, "Block size"), Some(4096));
    let xfs_db = "dblocks = 2621440\nblocksize = 4096\n";
    assert_eq!(number_after(xfs_db, "dblocks"), Some(2_621_440));
    assert_eq!(number_after(xfs_db, "blocksize"), Some(4096));
    let dump_super = "csum\t\t\t0x1\ntotal_bytes\t\t629145600\nbytes_used\t\t147456\ndev_item.total_bytes\t629145600\n";
    assert_eq!(number_after(dump_super, "total_bytes"), Some(629_145_600));
    let xfs_info = "meta-data=/dev/loop0             isize=512    agcount=4, agsize=19200 blks\n         =                       sectsz=512   attr=2, projid32bit=1\ndata     =                       bsize=4096   blocks=153600, imaxpct=25\n         =                       sunit=0      swidth=0 blks\nnaming   =version 2              bsize=4096   ascii-ci=0, ftype=1\nlog      =internal log           bsize=4096   blocks=16384, version=2\n";
    assert_eq!(xfs_info_data_bytes(xfs_info), Some(153_600 * 4096));
    assert_eq!(xfs_info_data_bytes("naming =version 2 bsize=4096\n"), None);
}

#[tokio::test]
async fn statvfs_of_root_is_sane() {
    let s = LinuxHost::default().fs_stats(Path::new("/")).await.unwrap();
    assert!(s.total_bytes > 0 && s.used_bytes <= s.total_bytes);
}

#[tokio::test]
async fn an_unreadable_device_is_an_error_never_blank() {
    if std::process::Command::new("blkid")
        .arg("-V")
        .output()
        .is_err()
    {
        everest_testsupport::skip("blkid is not installed (apt-get install -y util-linux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    assert_eq!(
        LinuxHost::default().filesystem_of(&blank).await.unwrap(),
        None
    );
    // blkid exits 2 for these too, as it does for a blank device.
    assert!(
        LinuxHost::default()
            .filesystem_of(&dir.path().join("missing"))
            .await
            .is_err()
    );
    assert!(
        LinuxHost::default()
            .filesystem_of(dir.path())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn wiping_signatures_makes_a_formatted_image_blank_again() {
    if std::process::Command::new("wipefs")
        .arg("-V")
        .output()
        .is_err()
    {
        everest_testsupport::skip("wipefs is not installed (apt-get install -y util-linux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 8 << 20]).unwrap();
    let host = LinuxHost::default();
    host.mkfs(&image, "ext4").await.unwrap();
    assert_eq!(
        host.filesystem_of(&image).await.unwrap().as_deref(),
        Some("ext4")
    );
    host.wipe_signatures(&image).await.unwrap();
    assert_eq!(host.filesystem_of(&image).await.unwrap(), None);
}

#[tokio::test]
async fn device_number_is_the_rdev_of_a_block_device_only() {
    assert!(
        LinuxHost::default()
            .device_number(Path::new("/dev/null"))
            .await
            .is_err()
    );
    let Ok(meta) = std::fs::metadata("/dev/loop0") else {
        everest_testsupport::skip("the block device half needs /dev/loop0");
        return;
    };
    if meta.file_type().is_block_device() {
        assert_eq!(
            LinuxHost::default()
                .device_number(Path::new("/dev/loop0"))
                .await
                .unwrap(),
            "7:0"
        );
    }
}

#[tokio::test]
async fn make_and_remove_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a/b/block-target");
    LinuxHost::default().make_file(&file).await.unwrap();
    assert!(LinuxHost::default().exists(&file).await.unwrap());
    LinuxHost::default().remove_path(&file).await.unwrap();
    LinuxHost::default().remove_path(&file).await.unwrap();
    assert!(!LinuxHost::default().exists(&file).await.unwrap());
    assert_eq!(
        LinuxHost::default()
            .resolve_device(&dir.path().join("missing"))
            .await
            .unwrap(),
        None
    );
    assert!(
        LinuxHost::default()
            .resolve_device(dir.path())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn kernel_filesystems_come_from_proc_and_a_kernel_without_nfs_is_refused_before_mounting() {
    let host = LinuxHost::default();
    let listed = std::fs::read_to_string("/proc/filesystems").unwrap();
    let has = |fs: &str| {
        listed
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    for fs in ["ext4", "nfs", "proc", "no-such-filesystem"] {
        assert_eq!(host.kernel_supports(fs).await.unwrap(), has(fs), "{fs}");
    }
    if has("nfs") {
        // This kernel can mount NFS: the refusal below cannot happen here.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = crate::paths::AllowedRoot::new(dir.path()).unwrap();
    let staging = root
        .check(
            &dir.path().join("plugins/x/globalmount").to_string_lossy(),
            "staging",
        )
        .unwrap();
    let export: crate::nfs::NfsExport = "127.0.0.1:/export/pvc-1".parse().unwrap();
    let opts = crate::nfs::mount_options(&[], false).unwrap();
    let err = crate::nfs::stage(&host, "pvc-1", &export, &staging, &opts)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("no NFS client"), "{err}");
    assert!(
        !staging.as_path().exists(),
        "a refused stage made the staging directory"
    );
}

#[tokio::test]
async fn binds_unmounts_and_the_mount_table_follow_the_kernel() {
    if rustix::process::geteuid().as_raw() != 0 {
        everest_testsupport::skip("not root: bind mounts need root");
        return;
    }
    let host = LinuxHost::default();
    let dir = tempfile::tempdir().unwrap();
    let (source, target, link) = (
        dir.path().join("source"),
        dir.path().join("target"),
        dir.path().join("link"),
    );
    for d in [&source, &target] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(source.join("file"), b"x").unwrap();
    let before = host.mounts().await.unwrap();
    assert!(before.newest_at(&target).is_none());
    // Asked again with no change in between, the same table comes back.
    assert_eq!(host.mounts().await.unwrap(), before);

    host.bind_mount(&source, &target, true).await.unwrap();
    // The bind shows at once: the table is read again after a change.
    let table = host.mounts().await.unwrap();
    let bound = table
        .newest_at(&target)
        .expect("the bind shows in the table");
    assert!(bound.is_read_only());
    assert!(host.fs_stats(&target).await.unwrap().read_only);
    assert!(std::fs::write(target.join("other"), b"y").is_err());
    assert!(target.join("file").exists());

    // A symlink at the path is never followed: nothing is mounted at the link itself.
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(!host.unmount(&link).await.unwrap());
    assert!(host.mounts().await.unwrap().newest_at(&target).is_some());

    // Stacked binds come off one by one; then nothing is mounted, also for a missing path.
    host.bind_mount(&source, &target, false).await.unwrap();
    assert_eq!(host.mounts().await.unwrap().at(&target).count(), 2);
    assert!(host.unmount(&target).await.unwrap());
    assert!(host.unmount(&target).await.unwrap());
    assert!(!host.unmount(&target).await.unwrap());
    assert!(!host.unmount(&dir.path().join("missing")).await.unwrap());
    assert!(host.mounts().await.unwrap().newest_at(&target).is_none());
    assert!(!target.join("file").exists());
}

#[tokio::test]
async fn a_read_only_bind_keeps_its_source_nosuid_nodev_noexec() {
    if rustix::process::geteuid().as_raw() != 0 {
        everest_testsupport::skip("not root: mounts need root");
        return;
    }
    let host = LinuxHost::default();
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    for d in [&source, &target] {
        std::fs::create_dir(d).unwrap();
    }
    let opts = ["nosuid", "nodev", "noexec"].map(str::to_owned);
    host.mount(Path::new("tmpfs"), &source, "tmpfs", &opts)
        .await
        .unwrap();
    host.bind_mount(&source, &target, true).await.unwrap();
    let flags = rustix::fs::statvfs(&target).unwrap().f_flag;
    use rustix::fs::StatVfsMountFlags as F;
    let kept = F::RDONLY | F::NOSUID | F::NODEV | F::NOEXEC;
    let ok = flags.contains(kept);
    assert!(host.unmount(&target).await.unwrap());
    assert!(host.unmount(&source).await.unwrap());
    assert!(ok, "{flags:?}");
}
