//! What the `everestctl` tests share: the fake API server with a kubeconfig for it, the
//! recorded cluster, and running the real binary.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Output;

use everest_testsupport::csi::{GIB, create_request, mount_cap};
use everest_testsupport::proto as csi;
use everest_testsupport::{DRIVER_NAME, KubeApi, World};
use serde_json::{Value, json};

use csi::volume_capability::access_mode::Mode;

/// The fake API server and a kubeconfig pointing at it (in a temp dir removed on drop).
pub struct Fake {
    pub api: KubeApi,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fake {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("everest-test-ctl-")
            .tempdir()
            .expect("temp dir");
        let api = KubeApi::start()
            .await
            .expect("start the fake Kubernetes API");
        let kubeconfig = api.write_kubeconfig(dir.path()).expect("write kubeconfig");
        Self {
            api,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Stores every item of the recorded cluster.
    pub fn load(&self, cluster: &Value) {
        for item in cluster["items"].as_array().expect("a List") {
            self.api.put(item.clone());
        }
    }

    /// Runs `everestctl <args>` against the fake.
    pub async fn run(&self, args: &[&str]) -> Output {
        run_with(&self.kubeconfig, args).await
    }

    /// The writes (non-GET requests) received so far.
    pub fn writes(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect()
    }

    pub fn pv(&self, name: &str) -> Option<Value> {
        self.api.get("v1", "PersistentVolume", None, name)
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<Value> {
        self.api
            .get("v1", "PersistentVolumeClaim", Some(namespace), name)
    }
}

pub async fn run_with(kubeconfig: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_everestctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("EVEREST_CONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run everestctl")
}

/// The recorded CCE cluster.
pub fn recorded_cluster() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cce-flexvolume-cluster.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read the fixture"))
        .expect("fixture is JSON")
}

pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An Everest PV as csi-provisioner writes it, bound, for the volume `handle`.
pub fn pv(name: &str, handle: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER_NAME},
            "finalizers": ["kubernetes.io/pv-protection", "external-attacher/everest-csi-io"]
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "csi": {"driver": DRIVER_NAME, "volumeHandle": handle, "fsType": "ext4"},
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "everest-ssd",
            "volumeMode": "Filesystem"
        },
        "status": {"phase": "Bound"}
    })
}

/// Creates a 1 GiB ext4 volume through the world's controller; its volume ID.
pub async fn create(world: &World, name: &str) -> String {
    let mut c = world.controller().await;
    c.create_volume(create_request(
        name,
        GIB,
        mount_cap("ext4", Mode::SingleNodeWriter),
        &[],
    ))
    .await
    .unwrap_or_else(|e| panic!("create {name}: {e}"))
    .into_inner()
    .volume
    .expect("a volume")
    .volume_id
}

/// Attaches a volume to a node through the world's controller.
pub async fn publish(world: &World, volume_id: &str, node_id: &str) {
    let mut c = world.controller().await;
    c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: node_id.into(),
        volume_capability: Some(mount_cap("ext4", Mode::SingleNodeWriter)),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("publish {volume_id}: {e}"));
}
