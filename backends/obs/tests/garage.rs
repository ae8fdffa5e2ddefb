//! Object volumes against Garage (`everest_testsupport::garage`), a full S3 service on
//! loopback that checks signatures for its own region and has no bucket tagging: the
//! controller keeps each bucket's mark in an object of a mark bucket no pod mounts, tells ours
//! from a stranger's by it, and removes it last (also after an interrupted delete); s3fs makes nested directories through the mount that the S3 API
//! sees as Garage keeps them, and objects written through the API show through the mount.
//! Guards unmount and stop everything, also on a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use everest_backend::BackendName;
use everest_backend::backend::{
    ControllerBackend, CreateVolume, NodeBackend, NodePublish, NodeStage,
};
use everest_backend::capability::{AccessMode, VolumeCapability};
use everest_backend::host::LinuxHost;
use everest_backend::secrets::Secrets;
use everest_obs::s3::mark_bucket;
use everest_obs::volume::bucket_for_request;
use everest_obs::{ObsConfig, ObsController, ObsNode};
use everest_testsupport::garage::{GARAGE_ACCESS_KEY, GARAGE_REGION, GARAGE_SECRET_KEY};
use everest_testsupport::{GarageServer, skip_unless_garage, skip_without};
use tonic::Code;

mod common;
use common::{Admin, fuse_unavailable, kubelet_path, shown_by_any_process, write_credentials};

fn secrets() -> Secrets {
    Secrets::new(BTreeMap::from([
        ("access.key".to_owned(), GARAGE_ACCESS_KEY.to_owned()),
        ("secret.key".to_owned(), GARAGE_SECRET_KEY.to_owned()),
    ]))
}

fn create(name: &str) -> CreateVolume {
    let cap = VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &[]);
    CreateVolume::for_test(name, 1 << 30, cap, &[])
}

/// Garage, a controller with a credentials file, and a client to look with.
struct Env {
    dir: tempfile::TempDir,
    controller: ObsController,
    admin: Admin,
    config: ObsConfig,
    // Last: stopped after everything that talks to it.
    _server: GarageServer,
}

impl Env {
    fn start() -> Option<Self> {
        if skip_unless_garage() {
            return None;
        }
        let server = GarageServer::start().expect("start garage");
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("s3.json");
        write_credentials(&creds, GARAGE_ACCESS_KEY, GARAGE_SECRET_KEY);
        let table = serde_json::json!({
            "endpoint": server.endpoint(),
            "region": GARAGE_REGION,
            "runtime_dir": dir.path().join("run").display().to_string(),
            "credentials_file": creds.display().to_string(),
        });
        let config = ObsConfig::parse("objects", table.as_object().unwrap()).unwrap();
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
            config,
            _server: server,
        })
    }

    /// The mark of `bucket` in the mark bucket: its metadata, or `None` when there is none.
    async fn mark(&self, bucket: &str) -> Option<std::collections::HashMap<String, String>> {
        let out = self
            .admin
            .head_object()
            .bucket(mark_bucket("everest"))
            .key(bucket)
            .send()
            .await
            .ok()?;
        Some(out.metadata().cloned().unwrap_or_default())
    }
}

#[tokio::test]
async fn without_bucket_tagging_a_marker_object_tells_our_buckets_from_others() {
    let Some(env) = Env::start() else { return };
    let c = &env.controller;
    let v = c.create_volume(&create("pvc-g1")).await.unwrap();
    let bucket = bucket_for_request("everest", "pvc-g1");
    assert_eq!(v.native_id, format!("d~{bucket}"));
    // Garage answers NotImplemented to bucket tagging: the mark is the metadata of an object
    // named after the bucket in the mark bucket, and nothing is added to the volume's bucket.
    let meta = env.mark(&bucket).await.expect("the mark");
    assert_eq!(
        meta.get("everest-created-by").map(String::as_str),
        Some("everest"),
        "{meta:?}"
    );
    assert_eq!(
        meta.get("everest-capacity").map(String::as_str),
        Some("1073741824")
    );
    // The whole marker is there, under the same keys as bucket tags.
    assert_eq!(
        meta.get("everest-backend").map(String::as_str),
        Some("objects"),
        "{meta:?}"
    );
    assert!(meta.contains_key("everest-cluster"), "{meta:?}");
    assert!(
        env.admin.keys(&bucket, "").await.is_empty(),
        "the volume's bucket is not empty"
    );
    // The same request again is the same volume; expansion rewrites the recorded size.
    assert_eq!(c.create_volume(&create("pvc-g1")).await.unwrap(), v);
    let grown = c
        .expand(
            &v.native_id,
            everest_backend::capacity::CapacityRange::new(2 << 30, 0).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(grown.capacity_bytes, 2 << 30);
    let meta = env.mark(&bucket).await.unwrap();
    assert_eq!(
        meta.get("everest-capacity").map(String::as_str),
        Some("2147483648")
    );

    // A stranger's bucket under the name Everest would pick: no marker, not ours.
    let foreign = bucket_for_request("everest", "pvc-g-foreign");
    env.admin
        .create_bucket()
        .bucket(&foreign)
        .send()
        .await
        .unwrap();
    env.admin.put(&foreign, "theirs.txt", "keep me").await;
    let err = c.create_volume(&create("pvc-g-foreign")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let err = c
        .delete_volume(&format!("d~{foreign}"), &Secrets::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(env.admin.get(&foreign, "theirs.txt").await, "keep me");

    // Delete empties and removes ours, then its mark.
    env.admin.put(&bucket, "dir/f", "x").await;
    c.delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(!env.admin.bucket_exists(&bucket).await);
    assert!(
        env.mark(&bucket).await.is_none(),
        "the mark outlived its bucket"
    );
    c.delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();

    // A delete interrupted after the bucket went (its mark left behind): the retry is OK and
    // takes the mark too.
    let v3 = c.create_volume(&create("pvc-g3")).await.unwrap();
    let b3 = bucket_for_request("everest", "pvc-g3");
    env.admin.delete_bucket().bucket(&b3).send().await.unwrap();
    assert!(env.mark(&b3).await.is_some());
    c.delete_volume(&v3.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(
        env.mark(&b3).await.is_none(),
        "the retried delete left the mark"
    );
}

/// Unmounts, when dropped, whatever is still mounted at these paths (lazily).
struct MountGuard(Vec<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            for _ in 0..4 {
                let done = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(p)
                    .output()
                    .map_or(true, |o| !o.status.success());
                if done {
                    break;
                }
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

#[tokio::test]
async fn s3fs_directories_and_api_objects_meet_on_garage() {
    if skip_without("s3fs", "s3fs") {
        return;
    }
    if let Some(why) = fuse_unavailable() {
        everest_testsupport::skip(why);
        return;
    }
    let Some(env) = Env::start() else { return };
    let v = env
        .controller
        .create_volume(&create("pvc-g2"))
        .await
        .unwrap();
    let bucket = v.context[everest_obs::context::BUCKET].clone();
    let node = ObsNode::new(
        BackendName::new("objects").unwrap(),
        env.config.clone(),
        Arc::new(LinuxHost::default()),
    );
    let staging = kubelet_path(env.dir.path(), "plugins/obs/g2/globalmount");
    let target = kubelet_path(env.dir.path(), "pods/p/volumes/obs/mount");
    let _guard = MountGuard(vec![
        target.as_path().to_owned(),
        staging.as_path().to_owned(),
    ]);
    let cap = VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &[]);
    node.stage(&NodeStage {
        native_id: v.native_id.clone(),
        publish_context: BTreeMap::new(),
        staging: staging.clone(),
        capability: cap.clone(),
        volume_context: v.context.clone(),
        secrets: secrets(),
    })
    .await
    .unwrap();
    node.publish(&NodePublish {
        native_id: v.native_id.clone(),
        staging: Some(staging.clone()),
        target: target.clone(),
        capability: cap,
        readonly: false,
        publish_context: BTreeMap::new(),
        volume_context: v.context.clone(),
        secrets: Secrets::default(),
    })
    .await
    .unwrap();

    if let Some(place) = shown_by_any_process(GARAGE_SECRET_KEY) {
        panic!("the secret key shows in {place}");
    }

    // The volume starts empty: Everest's mark is not in it.
    let root_entries: Vec<_> = std::fs::read_dir(target.as_path()).unwrap().collect();
    assert!(root_entries.is_empty(), "{root_entries:?}");

    // Nested directories and a file through the mount; S3 sees the file and the directory
    // objects s3fs makes.
    let root = target.as_path();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/file.txt"), "through the mount").unwrap();
    assert_eq!(
        env.admin.get(&bucket, "a/b/c/file.txt").await,
        "through the mount"
    );
    let keys = env.admin.keys(&bucket, "").await;
    for dir in ["a/", "a/b/", "a/b/c/"] {
        assert!(
            keys.iter().any(|k| k == dir),
            "no directory object {dir}: {keys:?}"
        );
    }
    let listed: Vec<String> = std::fs::read_dir(root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["b"]);

    // An object written through the API, in a directory s3fs never made: seen through the mount.
    env.admin
        .put(&bucket, "from-api/x.txt", "through the API")
        .await;
    assert_eq!(
        std::fs::read_to_string(root.join("from-api/x.txt")).unwrap(),
        "through the API"
    );
    // Renames and removals go through to the bucket.
    std::fs::rename(root.join("a/b/c/file.txt"), root.join("a/moved.txt")).unwrap();
    std::fs::remove_dir(root.join("a/b/c")).unwrap();
    let keys = env.admin.keys(&bucket, "").await;
    assert!(keys.iter().any(|k| k == "a/moved.txt"), "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("a/b/c")), "{keys:?}");

    node.unpublish(&v.native_id, &target).await.unwrap();
    node.unstage(&v.native_id, &staging).await.unwrap();
    assert!(!mounted(staging.as_path()) && !mounted(target.as_path()));
    env.controller
        .delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
    assert!(!env.admin.bucket_exists(&bucket).await);
}
