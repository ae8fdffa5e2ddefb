//! Object volumes against a real S3 server (moto on loopback, `everest_testsupport::s3`): the
//! controller's buckets and prefixes are checked through the S3 API, and the node mounts them
//! through a real s3fs FUSE mount, writes a file there and reads it back through the API.
//! Every test starts its own server; guards unmount and stop everything, also on a panic.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use everest_backend::BackendName;
use everest_backend::backend::{
    ControllerBackend, CreateVolume, NodeBackend, NodePublish, NodeStage, Volume, VolumeUsage,
};
use everest_backend::capability::{AccessMode, AccessType, VolumeCapability};
use everest_backend::capacity::CapacityRange;
use everest_backend::host::LinuxHost;
use everest_backend::marker::{self, ClusterId, Marker, Owner};
use everest_backend::params::K8sMeta;
use everest_backend::secrets::Secrets;
use everest_obs::volume::bucket_for_request;
use everest_obs::{ObsConfig, ObsController, ObsNode, context};
use everest_testsupport::{S3Server, skip_unless_s3_server, skip_without};
use tonic::Code;

mod common;
use common::{Admin, fuse_unavailable, kubelet_path, shown_by_any_process, write_credentials};

const AK: &str = "AKIAEVERESTTEST";
/// Looked for in every process's command line and in every error: it must show nowhere.
const SK: &str = "sk-never-shown-4f1d2c";

fn secrets() -> Secrets {
    Secrets::new(BTreeMap::from([
        ("access.key".to_owned(), AK.to_owned()),
        ("secret.key".to_owned(), SK.to_owned()),
    ]))
}

fn cap(mode: AccessMode, flags: &[&str]) -> VolumeCapability {
    VolumeCapability::mount(mode, flags)
}

fn create(name: &str, params: &[(&str, &str)]) -> CreateVolume {
    let cap = cap(AccessMode::MultiNodeMultiWriter, &[]);
    CreateVolume::for_test(name, 1 << 30, cap, params)
}

/// A moto server, a controller with a credentials file, and a client to look with.
struct Env {
    dir: tempfile::TempDir,
    controller: ObsController,
    admin: Admin,
    // Last: stopped after everything that talks to it.
    server: S3Server,
}

impl Env {
    fn start() -> Option<Self> {
        if skip_unless_s3_server() {
            return None;
        }
        let server = S3Server::start().expect("start moto");
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("s3.json");
        write_credentials(&creds, AK, SK);
        let config = config(&server, &dir, Some(&creds));
        let controller =
            ObsController::new(BackendName::new("objects").unwrap(), config.clone()).unwrap();
        let admin = Admin(
            everest_obs::s3::S3::new("objects", &config)
                .unwrap()
                .client(None)
                .unwrap(),
        );
        Some(Env {
            dir,
            controller,
            admin,
            server,
        })
    }

    /// Starts the world for a test that mounts with `mounter` (`None` when it must skip).
    fn start_for_mounts(mounter: &str) -> Option<Self> {
        if skip_without(mounter, mounter) {
            return None;
        }
        if let Some(why) = fuse_unavailable() {
            everest_testsupport::skip(why);
            return None;
        }
        Self::start()
    }

    fn node(&self) -> ObsNode {
        ObsNode::new(
            BackendName::new("objects").unwrap(),
            config(&self.server, &self.dir, None),
            Arc::new(LinuxHost::default()),
        )
    }
}

fn config(server: &S3Server, dir: &tempfile::TempDir, creds: Option<&Path>) -> ObsConfig {
    let mut table = serde_json::json!({
        "endpoint": server.endpoint(),
        "runtime_dir": dir.path().join("run").display().to_string(),
    });
    if let Some(c) = creds {
        table["credentials_file"] = c.display().to_string().into();
    }
    ObsConfig::parse("objects", table.as_object().unwrap()).unwrap()
}

fn assert_code<T: std::fmt::Debug>(r: everest_backend::Result<T>, code: Code, needle: &str) {
    let err = r.expect_err("an error");
    assert_eq!(err.code(), code, "{err}");
    let text = err.to_string();
    assert!(text.contains(needle), "{needle:?} not in {text}");
    assert!(!text.contains(SK), "the secret shows in {text}");
}

#[tokio::test]
async fn bucket_volumes_are_made_once_and_only_ours_are_deleted() {
    let Some(env) = Env::start() else { return };
    let c = &env.controller;
    let v = c.create_volume(&create("pvc-1", &[])).await.unwrap();
    let bucket = bucket_for_request("everest", "pvc-1");
    assert_eq!(v.native_id, format!("d~{bucket}"));
    assert_eq!(v.capacity_bytes, 1 << 30);
    assert_eq!(v.context[context::BUCKET], bucket);
    assert_eq!(v.context[context::ENDPOINT], env.server.endpoint());
    assert_eq!(v.context[context::MOUNTER], "s3fs");
    assert!(!v.context.contains_key(context::PREFIX));
    assert!(env.admin.bucket_exists(&bucket).await);
    // The same request again: the same volume.
    assert_eq!(c.create_volume(&create("pvc-1", &[])).await.unwrap(), v);
    // The same name with other parameters, or a size the recorded one does not satisfy.
    assert_code(
        c.create_volume(&create("pvc-1", &[("everest.io/on-delete", "retain")]))
            .await,
        Code::AlreadyExists,
        "other parameters",
    );
    let mut bigger = create("pvc-1", &[]);
    bigger.capacity = CapacityRange::new(2 << 30, 0).unwrap();
    assert_code(
        c.create_volume(&bigger).await,
        Code::AlreadyExists,
        "capacity",
    );
    // Expansion records the new size (nothing grows); then the bigger request matches.
    let grown = c
        .expand(&v.native_id, CapacityRange::new(2 << 30, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (2 << 30, false)
    );
    assert_eq!(
        c.create_volume(&bigger).await.unwrap().capacity_bytes,
        2 << 30
    );
    let same = c
        .expand(&v.native_id, CapacityRange::new(1 << 30, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(same.capacity_bytes, 2 << 30, "never shrunk");
    assert_code(
        c.expand("nope", CapacityRange::new(1 << 30, 0).unwrap())
            .await,
        Code::NotFound,
        "nope",
    );

    // A bucket under the name Everest would pick, made by someone else: not ours.
    let foreign = bucket_for_request("everest", "pvc-foreign");
    env.admin
        .create_bucket()
        .bucket(&foreign)
        .send()
        .await
        .unwrap();
    env.admin.put(&foreign, "theirs.txt", "keep me").await;
    assert_code(
        c.create_volume(&create("pvc-foreign", &[])).await,
        Code::AlreadyExists,
        "not made by Everest",
    );
    // Deleting it through a hand-written handle is refused; its data stays.
    assert_code(
        c.delete_volume(&format!("d~{foreign}"), &Secrets::default())
            .await,
        Code::FailedPrecondition,
        "not deleted",
    );
    assert_eq!(env.admin.get(&foreign, "theirs.txt").await, "keep me");

    // Delete empties and removes ours; again, or an ID that is not ours, is success.
    for i in 0..3 {
        env.admin.put(&bucket, &format!("dir/f{i}"), "x").await;
    }
    c.delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(!env.admin.bucket_exists(&bucket).await);
    c.delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
    c.delete_volume("not-ours", &Secrets::default())
        .await
        .unwrap();

    // Retain keeps the bucket and its data.
    let kept = c
        .create_volume(&create("pvc-2", &[("everest.io/on-delete", "retain")]))
        .await
        .unwrap();
    assert!(kept.native_id.starts_with("r~"), "{}", kept.native_id);
    let kept_bucket = &kept.context[context::BUCKET];
    env.admin.put(kept_bucket, "data", "x").await;
    c.delete_volume(&kept.native_id, &Secrets::default())
        .await
        .unwrap();
    assert_eq!(env.admin.keys(kept_bucket, "").await, ["data"]);

    // Per-volume secrets work in place of the backend's file.
    let mut with_secrets = create("pvc-3", &[]);
    with_secrets.secrets = secrets();
    let v3 = c.create_volume(&with_secrets).await.unwrap();
    c.delete_volume(&v3.native_id, &secrets()).await.unwrap();
}

#[tokio::test]
async fn prefix_volumes_share_a_bucket_without_touching_each_other() {
    let Some(env) = Env::start() else { return };
    let c = &env.controller;
    let shared = [
        ("everest.io/obs-mode", "prefix"),
        ("everest.io/obs-bucket", "shared-data"),
    ];
    // The shared bucket must exist first.
    assert_code(
        c.create_volume(&create("pvc-a", &shared)).await,
        Code::FailedPrecondition,
        "shared-data",
    );
    env.admin
        .create_bucket()
        .bucket("shared-data")
        .send()
        .await
        .unwrap();
    let a = c.create_volume(&create("pvc-a", &shared)).await.unwrap();
    let b = c.create_volume(&create("pvc-b", &shared)).await.unwrap();
    assert_eq!(a.native_id, "d~shared-data/pvc-a");
    assert_eq!(a.context[context::PREFIX], "pvc-a");
    assert_eq!(c.create_volume(&create("pvc-a", &shared)).await.unwrap(), a);
    let mut retain = shared.to_vec();
    retain.push(("everest.io/on-delete", "retain"));
    assert_code(
        c.create_volume(&create("pvc-a", &retain)).await,
        Code::AlreadyExists,
        "other parameters",
    );
    env.admin.put("shared-data", "pvc-a/one", "1").await;
    env.admin.put("shared-data", "pvc-b/two", "2").await;
    env.admin.put("shared-data", "outside", "3").await;

    // A prefix someone else filled: not ours, never deleted.
    env.admin.put("shared-data", "pvc-c/theirs", "4").await;
    assert_code(
        c.create_volume(&create("pvc-c", &shared)).await,
        Code::AlreadyExists,
        "not made by Everest",
    );
    assert_code(
        c.delete_volume("d~shared-data/pvc-c", &Secrets::default())
            .await,
        Code::FailedPrecondition,
        "not deleted",
    );

    c.delete_volume(&a.native_id, &Secrets::default())
        .await
        .unwrap();
    c.delete_volume(&a.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(env.admin.keys("shared-data", "pvc-a/").await.is_empty());
    assert_eq!(
        env.admin.keys("shared-data", "pvc-b/").await,
        ["pvc-b/", "pvc-b/two"]
    );
    assert_eq!(
        env.admin.keys("shared-data", "pvc-c/").await,
        ["pvc-c/theirs"]
    );
    assert_eq!(env.admin.get("shared-data", "outside").await, "3");
    let grown = c
        .expand(&b.native_id, CapacityRange::new(5 << 30, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(grown.capacity_bytes, 5 << 30);
    let mut bigger = create("pvc-b", &shared);
    bigger.capacity = CapacityRange::new(5 << 30, 0).unwrap();
    assert_eq!(
        c.create_volume(&bigger).await.unwrap().native_id,
        b.native_id
    );
    c.delete_volume(&b.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(
        env.admin.bucket_exists("shared-data").await,
        "the shared bucket is not ours"
    );
}

#[tokio::test]
async fn bad_requests_get_the_codes_the_spec_asks_for() {
    let Some(env) = Env::start() else { return };
    let c = &env.controller;
    for params in [
        &[("everest.io/obs-mode", "share")][..],
        &[("everest.io/obs-mode", "prefix")],
        &[
            ("everest.io/obs-mode", "prefix"),
            ("everest.io/obs-bucket", "Not_A_Bucket"),
        ],
        &[("everest.io/obs-mounter", "goofys")],
        &[("everest.io/typo", "x")],
    ] {
        assert_code(
            c.create_volume(&create("pvc-x", params)).await,
            Code::InvalidArgument,
            "",
        );
    }
    let mut block = create("pvc-x", &[]);
    block.capabilities[0].access_type = AccessType::Block;
    assert_code(
        c.create_volume(&block).await,
        Code::InvalidArgument,
        "block",
    );
    let mut half = create("pvc-x", &[]);
    half.secrets = Secrets::new(BTreeMap::from([("access.key".to_owned(), AK.to_owned())]));
    assert_code(
        c.create_volume(&half).await,
        Code::InvalidArgument,
        "secret.key",
    );
    // Without any credentials at all.
    let bare = ObsController::new(
        BackendName::new("objects").unwrap(),
        config(&env.server, &env.dir, None),
    )
    .unwrap();
    assert_code(
        bare.create_volume(&create("pvc-x", &[])).await,
        Code::InvalidArgument,
        "credentials",
    );
    // ControllerPublish of an ID that is not ours names no volume.
    let publish = everest_backend::backend::ControllerPublish {
        native_id: "nope".into(),
        node_id: "n".into(),
        capability: cap(AccessMode::MultiNodeMultiWriter, &[]),
        readonly: false,
        context: BTreeMap::new(),
        secrets: Secrets::default(),
    };
    assert_code(c.publish(&publish).await, Code::NotFound, "nope");
    // A static handle publishes at once, and its delete (r~) keeps everything.
    env.admin
        .create_bucket()
        .bucket("team-data")
        .send()
        .await
        .unwrap();
    env.admin.put("team-data", "k", "v").await;
    let static_publish = everest_backend::backend::ControllerPublish {
        native_id: "r~team-data".into(),
        ..publish
    };
    assert!(c.publish(&static_publish).await.unwrap().is_empty());
    c.delete_volume("r~team-data", &Secrets::default())
        .await
        .unwrap();
    assert_eq!(env.admin.get("team-data", "k").await, "v");
    c.probe().await.unwrap();
}

/// Unmounts whatever is left at the paths when dropped (a failed test), lazily, so nothing
/// outlives the test; then the temp dirs can go.
struct MountGuard(Vec<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            for _ in 0..4 {
                if !mounted(p) {
                    break;
                }
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(p)
                    .status();
            }
        }
    }
}

fn mounted(p: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.display().to_string();
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// The s3fs process whose command line names `mount_point` (the test's own mount).
fn s3fs_serving(mount_point: &Path) -> Option<rustix::process::Pid> {
    let wanted = mount_point.display().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_s3fs = args.first()?.ends_with(b"s3fs");
            (is_s3fs && args.contains(&wanted.as_bytes()))
                .then(|| rustix::process::Pid::from_raw(pid))
                .flatten()
        })
}

#[tokio::test]
async fn the_node_mounts_through_s3fs_and_leaves_nothing_behind() {
    let Some(env) = Env::start_for_mounts("s3fs") else {
        return;
    };
    let v: Volume = env
        .controller
        .create_volume(&create("pvc-node", &[]))
        .await
        .unwrap();
    let bucket = v.context[context::BUCKET].clone();
    let node = env.node();
    let staging = kubelet_path(env.dir.path(), "plugins/obs/globalmount");
    let target = kubelet_path(env.dir.path(), "pods/p1/volumes/v/mount");
    let ro_target = kubelet_path(env.dir.path(), "pods/p2/volumes/v/mount");
    let _guard = MountGuard(vec![
        target.as_path().to_owned(),
        ro_target.as_path().to_owned(),
        staging.as_path().to_owned(),
    ]);
    let stage = NodeStage {
        native_id: v.native_id.clone(),
        publish_context: BTreeMap::new(),
        staging: staging.clone(),
        capability: cap(AccessMode::MultiNodeMultiWriter, &["uid=1000", "gid=1000"]),
        volume_context: v.context.clone(),
        secrets: secrets(),
    };

    // Refused before anything happens: a smuggled option, missing keys, an ID that is not ours.
    let mut smuggled = stage.clone();
    smuggled.capability = cap(
        AccessMode::MultiNodeMultiWriter,
        &["uid=0,passwd_file=/etc/shadow"],
    );
    assert_code(node.stage(&smuggled).await, Code::InvalidArgument, "comma");
    let mut reserved = stage.clone();
    reserved.capability = cap(
        AccessMode::MultiNodeMultiWriter,
        &["url=http://127.0.0.2:1"],
    );
    assert_code(
        node.stage(&reserved).await,
        Code::InvalidArgument,
        "set by Everest",
    );
    let mut no_keys = stage.clone();
    no_keys.secrets = Secrets::default();
    assert_code(
        node.stage(&no_keys).await,
        Code::InvalidArgument,
        "access.key",
    );
    let mut foreign = stage.clone();
    foreign.native_id = "nope".into();
    assert_code(node.stage(&foreign).await, Code::NotFound, "nope");
    assert!(!mounted(staging.as_path()));
    assert!(!node.credentials_file(&staging).exists());

    node.stage(&stage).await.unwrap();
    node.stage(&stage).await.unwrap();
    assert!(mounted(staging.as_path()));
    let passwd = node.credentials_file(&staging);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&passwd), 0o600);
    assert_eq!(mode(passwd.parent().unwrap()), 0o700);
    if let Some(place) = shown_by_any_process(SK) {
        panic!("the secret key shows in {place}");
    }

    let publish = NodePublish {
        native_id: v.native_id.clone(),
        staging: Some(staging.clone()),
        target: target.clone(),
        capability: stage.capability.clone(),
        readonly: false,
        publish_context: BTreeMap::new(),
        volume_context: v.context.clone(),
        secrets: Secrets::default(),
    };
    node.publish(&publish).await.unwrap();
    node.publish(&publish).await.unwrap();
    // Written through the pod's mount, read through the S3 API.
    std::fs::write(target.as_path().join("hello.txt"), "hello from a pod").unwrap();
    assert_eq!(
        env.admin.get(&bucket, "hello.txt").await,
        "hello from a pod"
    );
    // A directory made through the mount is a key prefix in the bucket.
    std::fs::create_dir(target.as_path().join("sub")).unwrap();
    std::fs::write(target.as_path().join("sub/inner.txt"), "nested").unwrap();
    assert_eq!(env.admin.get(&bucket, "sub/inner.txt").await, "nested");
    // Written through the API, read through the mount.
    env.admin
        .put(&bucket, "from-api.txt", "hello from the API")
        .await;
    assert_eq!(
        std::fs::read_to_string(target.as_path().join("from-api.txt")).unwrap(),
        "hello from the API"
    );
    let ro = NodePublish {
        target: ro_target.clone(),
        readonly: true,
        ..publish.clone()
    };
    node.publish(&ro).await.unwrap();
    let err = std::fs::write(ro_target.as_path().join("nope.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    assert!(matches!(
        node.stats(&v.native_id, &target).await.unwrap(),
        VolumeUsage::Filesystem { abnormal: None, .. }
    ));

    // The mounter dies: the volume turns abnormal, and the next stage and publish repair it.
    let pid = s3fs_serving(staging.as_path()).expect("the s3fs process of the staged volume");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(staging.as_path()).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount outlived its mounter"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(matches!(
        node.stats(&v.native_id, &target).await.unwrap(),
        VolumeUsage::Lost { .. }
    ));
    node.stage(&stage).await.unwrap();
    node.publish(&publish).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(target.as_path().join("hello.txt")).unwrap(),
        "hello from a pod"
    );
    if let Some(place) = shown_by_any_process(SK) {
        panic!("the secret key shows in {place}");
    }

    for t in [&target, &ro_target] {
        node.unpublish(&v.native_id, t).await.unwrap();
        node.unpublish(&v.native_id, t).await.unwrap();
        assert!(!mounted(t.as_path()) && !t.as_path().exists());
    }
    assert_code(
        node.stats(&v.native_id, &target).await,
        Code::NotFound,
        "does not exist",
    );
    // A file still open on the node makes the mount busy: fusermount -u refuses, and the
    // lazy fallback detaches it anyway.
    let busy = std::fs::File::open(staging.as_path().join("hello.txt")).unwrap();
    node.unstage(&v.native_id, &staging).await.unwrap();
    node.unstage(&v.native_id, &staging).await.unwrap();
    assert!(!mounted(staging.as_path()));
    assert!(!passwd.exists(), "the credentials file outlived the mount");
    drop(busy);

    env.controller
        .delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(!env.admin.bucket_exists(&bucket).await);
}

/// EROFS, without a libc dependency for one number.
fn libc_erofs() -> i32 {
    30
}

#[tokio::test]
async fn prefix_volumes_mount_only_their_own_keys() {
    let Some(env) = Env::start_for_mounts("s3fs") else {
        return;
    };
    env.admin
        .create_bucket()
        .bucket("shared-data")
        .send()
        .await
        .unwrap();
    let shared = [
        ("everest.io/obs-mode", "prefix"),
        ("everest.io/obs-bucket", "shared-data"),
    ];
    let a = env
        .controller
        .create_volume(&create("pvc-a", &shared))
        .await
        .unwrap();
    let b = env
        .controller
        .create_volume(&create("pvc-b", &shared))
        .await
        .unwrap();
    env.admin.put("shared-data", "pvc-b/b-only.txt", "b").await;
    let node = env.node();
    let staging = kubelet_path(env.dir.path(), "plugins/obs/a/globalmount");
    let _guard = MountGuard(vec![staging.as_path().to_owned()]);
    node.stage(&NodeStage {
        native_id: a.native_id.clone(),
        publish_context: BTreeMap::new(),
        staging: staging.clone(),
        capability: cap(AccessMode::MultiNodeMultiWriter, &[]),
        volume_context: a.context.clone(),
        secrets: secrets(),
    })
    .await
    .unwrap();
    std::fs::write(staging.as_path().join("a.txt"), "a").unwrap();
    let seen: Vec<String> = std::fs::read_dir(staging.as_path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(seen, ["a.txt"], "volume a sees only its own prefix");
    assert_eq!(env.admin.get("shared-data", "pvc-a/a.txt").await, "a");
    node.unstage(&a.native_id, &staging).await.unwrap();
    assert!(!mounted(staging.as_path()));

    // A hand-written handle for b's prefix, with no volume context at all: the node takes the
    // endpoint from its backend table, and sees what is there.
    let static_staging = kubelet_path(env.dir.path(), "plugins/obs/static/globalmount");
    let _static_guard = MountGuard(vec![static_staging.as_path().to_owned()]);
    node.stage(&NodeStage {
        native_id: "r~shared-data/pvc-b".into(),
        publish_context: BTreeMap::new(),
        staging: static_staging.clone(),
        capability: cap(AccessMode::MultiNodeReaderOnly, &[]),
        volume_context: BTreeMap::new(),
        secrets: secrets(),
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(static_staging.as_path().join("b-only.txt")).unwrap(),
        "b"
    );
    assert!(
        std::fs::write(static_staging.as_path().join("new.txt"), "x").is_err(),
        "read-only"
    );
    node.unstage("r~shared-data/pvc-b", &static_staging)
        .await
        .unwrap();
    assert!(!mounted(static_staging.as_path()));
    for v in [&a, &b] {
        env.controller
            .delete_volume(&v.native_id, &Secrets::default())
            .await
            .unwrap();
    }
    assert!(env.admin.keys("shared-data", "").await.is_empty());
}

#[tokio::test]
async fn rclone_mounts_a_volume_and_leaves_nothing_behind() {
    let Some(env) = Env::start_for_mounts("rclone") else {
        return;
    };
    let v = env
        .controller
        .create_volume(&create("pvc-rc", &[("everest.io/obs-mounter", "rclone")]))
        .await
        .unwrap();
    assert_eq!(v.context[context::MOUNTER], "rclone");
    let bucket = v.context[context::BUCKET].clone();
    let node = env.node();
    let staging = kubelet_path(env.dir.path(), "plugins/obs/rc/globalmount");
    let _guard = MountGuard(vec![staging.as_path().to_owned()]);
    let stage = NodeStage {
        native_id: v.native_id.clone(),
        publish_context: BTreeMap::new(),
        staging: staging.clone(),
        capability: cap(AccessMode::MultiNodeMultiWriter, &["dir-cache-time=1s"]),
        volume_context: v.context.clone(),
        secrets: secrets(),
    };
    let mut s3fs_only = stage.clone();
    s3fs_only.capability = cap(AccessMode::MultiNodeMultiWriter, &["multipart_size=64"]);
    assert_code(
        node.stage(&s3fs_only).await,
        Code::InvalidArgument,
        "rclone",
    );
    node.stage(&stage).await.unwrap();
    node.stage(&stage).await.unwrap();
    let creds = node.credentials_file(&staging);
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    if let Some(place) = shown_by_any_process(SK) {
        panic!("the secret key shows in {place}");
    }
    std::fs::write(staging.as_path().join("rc.txt"), "written by rclone").unwrap();
    assert_eq!(env.admin.get(&bucket, "rc.txt").await, "written by rclone");
    env.admin.put(&bucket, "api.txt", "from the API").await;
    // rclone lists a directory again after dir-cache-time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let read = loop {
        if let Ok(text) = std::fs::read_to_string(staging.as_path().join("api.txt")) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "api.txt never showed in the mount"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(read, "from the API");
    node.unstage(&v.native_id, &staging).await.unwrap();
    node.unstage(&v.native_id, &staging).await.unwrap();
    assert!(!mounted(staging.as_path()));
    let left: Vec<_> = std::fs::read_dir(creds.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the runtime dir: {left:?}");
    env.controller
        .delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
}

/// Every option the allowlists let through is one the installed mounter knows: an option it
/// does not would pass the check and then fail the mount with the mounter's own message.
/// (`uid`, `gid`, `ro` and `allow_other` are FUSE's own, which s3fs's help does not list.)
#[test]
fn the_allowlists_name_only_options_the_installed_mounters_know() {
    use everest_obs::mounter::Mounter;
    // rclone lists the mount's own flags under `mount --help`, the S3 ones under `help flags`.
    for (mounter, program, helps) in [
        (Mounter::S3fs, "s3fs", &[&["--help"][..]][..]),
        (
            Mounter::Rclone,
            "rclone",
            &[&["mount", "--help"][..], &["help", "flags"]],
        ),
    ] {
        if skip_without(program, program) {
            continue;
        }
        let mut help = String::new();
        for args in helps {
            let out = std::process::Command::new(program)
                .args(*args)
                .output()
                .unwrap();
            help += &String::from_utf8_lossy(&out.stdout);
            help += &String::from_utf8_lossy(&out.stderr);
        }
        let unknown: Vec<&str> = mounter
            .allowed_option_names()
            .into_iter()
            .filter(|o| !["uid", "gid", "ro", "allow_other"].contains(o))
            .filter(|o| !names_option(&help, mounter, o))
            .collect();
        assert!(
            unknown.is_empty(),
            "{program} does not know the allowed options {unknown:?}"
        );
    }
}

/// Whether help text lists option `o`: s3fs indents `name` (or `name=…`, `name (…)`) at the
/// start of a line, rclone writes `--name` in a flag list.
fn names_option(help: &str, mounter: everest_obs::mounter::Mounter, o: &str) -> bool {
    let ends_name = |rest: &str| {
        rest.chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    };
    help.lines().any(|line| match mounter {
        everest_obs::mounter::Mounter::S3fs => {
            line.trim_start().strip_prefix(o).is_some_and(ends_name)
        }
        everest_obs::mounter::Mounter::Rclone => line
            .match_indices(&format!("--{o}"))
            .any(|(i, m)| ends_name(&line[i + m.len()..])),
    })
}

/// A request as csi-provisioner sends it with `--extra-create-metadata`, from cluster `prod`.
fn create_for_claim(name: &str, params: &[(&str, &str)]) -> CreateVolume {
    let mut req = create(name, params);
    req.cluster = ClusterId::new("prod").unwrap();
    req.common.k8s = K8sMeta {
        pv_name: Some(name.to_owned()),
        pvc_name: Some(format!("claim.{name}")),
        pvc_namespace: Some("shop".to_owned()),
    };
    req
}

#[tokio::test]
async fn buckets_and_prefixes_carry_the_marker_and_another_clusters_are_refused() {
    let Some(env) = Env::start() else { return };
    let c = &env.controller;
    let backend = BackendName::new("objects").unwrap();
    let prod = ClusterId::new("prod").unwrap();

    // Mode bucket: the marker is in the bucket's tags.
    c.create_volume(&create_for_claim("pvc-m1", &[]))
        .await
        .unwrap();
    let bucket = bucket_for_request("everest", "pvc-m1");
    let tags: BTreeMap<String, String> = env
        .admin
        .get_bucket_tagging()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    let Owner::Ours(mark) = Marker::owner(&tags, &prod, &backend) else {
        panic!("bucket {bucket} is not marked as prod's: {tags:?}");
    };
    assert!(mark.is_for_pv("pvc-m1"));
    assert_eq!(mark.pvc_name, Some(marker::encode("claim.pvc-m1")));
    assert_eq!(mark.pvc_namespace.as_deref(), Some("shop"));

    // Mode prefix: the marker is the metadata of the prefix's marker object.
    env.admin
        .create_bucket()
        .bucket("shared-marks")
        .send()
        .await
        .unwrap();
    let shared = [
        ("everest.io/obs-mode", "prefix"),
        ("everest.io/obs-bucket", "shared-marks"),
    ];
    c.create_volume(&create_for_claim("pvc-m2", &shared))
        .await
        .unwrap();
    let meta: BTreeMap<String, String> = env
        .admin
        .head_object()
        .bucket("shared-marks")
        .key("pvc-m2/")
        .send()
        .await
        .unwrap()
        .metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let Owner::Ours(mark) = Marker::owner(&meta, &prod, &backend) else {
        panic!("prefix pvc-m2/ is not marked as prod's: {meta:?}");
    };
    assert!(mark.is_for_pv("pvc-m2"));

    // The same name from another cluster (one cloud account, two clusters, one bucket_prefix)
    // is not taken over: ALREADY_EXISTS naming whose it is.
    for (name, params) in [("pvc-m1", &[][..]), ("pvc-m2", &shared[..])] {
        let mut other = create_for_claim(name, params);
        other.cluster = ClusterId::new("staging").unwrap();
        assert_code(
            c.create_volume(&other).await,
            Code::AlreadyExists,
            "of cluster prod",
        );
    }
}
