//! Directory volumes against a real NFS server: nfs-ganesha in a private network namespace
//! (`everest_testsupport::nfs`), the controller's NFSv3 client on a thread inside it. The
//! directories are checked on the server's disk, files are written into them over NFS, and the
//! controller is shown never to mount anything (it speaks NFS from user space).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use everest_backend::BackendName;
use everest_backend::backend::CreateVolume;
use everest_backend::capability::{AccessMode, VolumeCapability};
use everest_backend::marker::{ClusterId, Marker, Owner};
use everest_backend::secrets::Secrets;
use everest_testsupport::nfs::{NfsServer, skip_unless_nfs_server};

const PSEUDO: &str = "/exports";

fn create(name: &str, params: &[(&str, &str)]) -> CreateVolume {
    let cap = VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &[]);
    let mut req = CreateVolume::for_test(name, 1 << 30, cap, params);
    // As csi-provisioner sends it with --extra-create-metadata.
    req.common.k8s.pv_name = Some(name.to_owned());
    req
}

#[test]
fn directories_are_made_written_and_removed_over_nfs_without_a_mount() {
    if skip_unless_nfs_server() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("k8s");
    std::fs::create_dir(&base).unwrap();
    let server = NfsServer::start(root.path(), PSEUDO).expect("start nfs-ganesha");
    let table = serde_json::json!({
        "server": server.address(), "export": PSEUDO, "base_dir": "k8s",
    });
    let controller = everest_sfs::controller_from_config(
        &BackendName::new("nfs-home").unwrap(),
        table.as_object().unwrap(),
    )
    .unwrap();
    // NFS mounts in this process's mount table (other tests may mount loop devices meanwhile).
    let nfs_mounts = || -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(" - nfs"))
            .map(str::to_owned)
            .collect()
    };
    let mounts_before = nfs_mounts();

    let ids = server.block_on_inside(async {
        controller.probe().await.expect("the server answers");
        let made = controller
            .create_volume(&create(
                "pvc-1",
                &[
                    ("everest.io/dir-mode", "0750"),
                    ("everest.io/dir-uid", "1000"),
                    ("everest.io/dir-gid", "2000"),
                ],
            ))
            .await
            .expect("CreateVolume");
        // The same name again, and ten at once: one directory, the same volume.
        let again = controller
            .create_volume(&create(
                "pvc-1",
                &[
                    ("everest.io/dir-mode", "0750"),
                    ("everest.io/dir-uid", "1000"),
                    ("everest.io/dir-gid", "2000"),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(again, made);
        // The same name with other attributes: ALREADY_EXISTS, as CSI asks.
        for other in [
            &[("everest.io/dir-mode", "0700")][..],
            &[
                ("everest.io/dir-mode", "0750"),
                ("everest.io/dir-uid", "1001"),
            ][..],
        ] {
            let err = controller
                .create_volume(&create("pvc-1", other))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::AlreadyExists, "{other:?}: {err}");
        }
        let racing: Vec<_> = (0..10)
            .map(|_| {
                let c = controller.clone();
                tokio::spawn(async move { c.create_volume(&create("pvc-race", &[])).await })
            })
            .collect();
        let mut raced = Vec::new();
        for r in racing {
            raced.push(
                r.await
                    .unwrap()
                    .expect("concurrent CreateVolume of one name"),
            );
        }
        assert!(raced.windows(2).all(|w| w[0] == w[1]));
        let kept = controller
            .create_volume(&create("pvc-kept", &[("everest.io/on-delete", "retain")]))
            .await
            .unwrap();
        let archived = controller
            .create_volume(&create("pvc-old", &[("everest.io/on-delete", "archive")]))
            .await
            .unwrap();
        // A directory someone made by hand under a volume's name is not taken over.
        std::fs::create_dir(base.join("pvc-theirs")).unwrap();
        let err = controller
            .create_volume(&create("pvc-theirs", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(!base.join(".everest/pvc-theirs").exists());
        std::fs::remove_dir(base.join("pvc-theirs")).unwrap();
        for bad in ["../escape", "a/b", ".hidden"] {
            let err = controller
                .create_volume(&create(bad, &[]))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        (made, raced.remove(0), kept, archived)
    });
    let (made, raced, kept, archived) = ids;
    assert_eq!(
        made.context["everest.io/nfs-export"],
        format!("127.0.0.1:{PSEUDO}/k8s/pvc-1")
    );
    let dir = base.join("pvc-1");
    let meta = std::fs::metadata(&dir).expect("the directory is on the server's disk");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!((meta.uid(), meta.gid()), (1000, 2000));
    assert!(!root.path().join("escape").exists() && !base.join("a").exists());

    // The marker is beside the volume, in a private directory no pod mounts, not in the volume.
    let marks = base.join(".everest");
    assert_eq!(
        std::fs::metadata(&marks).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let mark = std::fs::read(marks.join("pvc-1")).expect("the mark of pvc-1");
    let tags = everest_sfs::marks::parse(&mark);
    let Owner::Ours(m) = Marker::owner(
        &tags,
        &ClusterId::default(),
        &BackendName::new("nfs-home").unwrap(),
    ) else {
        panic!("pvc-1 is not marked as this cluster's: {tags:?}");
    };
    assert!(m.is_for_pv("pvc-1"), "{m:?}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the volume's own directory holds nothing of Everest's"
    );

    // A file written into the volume over NFS lands in its directory; a tree under it too.
    let payload = root.path().join("payload.txt");
    std::fs::write(&payload, "written over NFS\n").unwrap();
    server
        .nfs_cp_to(&payload, "k8s/pvc-1/hello.txt")
        .expect("nfs-cp into the volume");
    assert_eq!(
        std::fs::read_to_string(dir.join("hello.txt")).unwrap(),
        "written over NFS\n"
    );
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("sub/deeper/file"), "x").unwrap();

    server.block_on_inside(async {
        for v in [&made, &raced, &kept, &archived] {
            controller
                .delete_volume(&v.native_id, &Secrets::default())
                .await
                .expect("DeleteVolume");
        }
        // Gone already: still success.
        controller
            .delete_volume(&made.native_id, &Secrets::default())
            .await
            .unwrap();
    });
    assert!(!dir.exists(), "delete left the directory");
    assert!(!base.join("pvc-race").exists());
    assert!(
        base.join("pvc-kept").is_dir(),
        "retain removed the directory"
    );
    assert!(base.join("archived-pvc-old").is_dir() && !base.join("pvc-old").exists());
    // Marks go with their directories: removed, kept, or moved with the archive.
    let mut left: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["archived-pvc-old", "pvc-kept"]);
    assert_eq!(nfs_mounts(), mounts_before, "the controller mounted NFS");
    // Where the kernel has no NFS client at all (these machines), working is itself the proof
    // that no kernel mount was involved.
    let kernel_nfs = server.block_on_inside(async {
        use everest_backend::host::{Host, LinuxHost};
        LinuxHost::default().kernel_supports("nfs").await.unwrap()
    });
    eprintln!("kernel NFS client present: {kernel_nfs}");
    assert!(Path::new(server.export_root()).exists());
}
