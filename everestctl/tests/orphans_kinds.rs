//! `everestctl orphans` for file and object volumes, against real servers: nfs-ganesha in a
//! private network namespace (directory volumes, and the emulator's SFS Turbo shares, which
//! are directories of its export) and moto's S3 server (bucket and prefix volumes). Volumes are
//! made by the real controller sides built from the same configuration file `everestctl`
//! reads, so their markers are the ones Everest writes; the cluster is the fake Kubernetes
//! API. Each world holds, per kind: a live volume (its PV exists), stranded volumes of every
//! delete policy, one whose marker predates the policy key, and another cluster's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Fake, describe, stdout_json};
use everest_backend::backend::{ControllerBackend, CreateVolume};
use everest_backend::capability::{AccessMode, VolumeCapability};
use everest_backend::capacity::GIB;
use everest_backend::marker::{ClusterId, ON_DELETE_KEY};
use everest_backend::params::K8sMeta;
use everest_backend::secrets::Secrets;
use everest_testsupport::nfs::{NfsServer, ShareCloud, skip_unless_nfs_server};
use everest_testsupport::s3::{S3Server, skip_unless_s3_server};
use serde_json::{Value, json};

const OURS: &str = "prod-a";
const THEIRS: &str = "prod-b";
const PSEUDO: &str = "/sfs-turbo";

/// A daemon configuration file with `[controller] cluster_id = OURS` and one
/// `[backends.<name>]` table per entry (the JSON object written as TOML).
fn write_config(dir: &Path, backends: &[(&str, &str, Value)]) -> PathBuf {
    let mut toml =
        format!("driver_name = \"everest.csi.io\"\n\n[controller]\ncluster_id = \"{OURS}\"\n");
    for (name, kind, table) in backends {
        toml.push_str(&format!("\n[backends.{name}]\nkind = \"{kind}\"\n"));
        for (key, value) in table.as_object().expect("a table") {
            // JSON strings, numbers and booleans are TOML values as they are written.
            toml.push_str(&format!("{key} = {value}\n"));
        }
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write the config");
    path
}

/// Every controller side the configuration at `path` describes, built as the daemon builds it.
fn controllers(path: &Path) -> BTreeMap<String, Arc<dyn ControllerBackend>> {
    let config = everestctl::cloud::load_config(path).expect("load the config");
    config
        .backends()
        .expect("backend tables")
        .into_iter()
        .map(|(name, table)| {
            let c = everest_backends::controller(&name, table).expect("a controller side");
            (name.to_string(), c)
        })
        .collect()
}

/// A CreateVolume as csi-provisioner sends it for the PV `name`, from `cluster`.
fn request(name: &str, cluster: &str, gib: u64, params: &[(&str, &str)]) -> CreateVolume {
    let cap = VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &[]);
    let mut req = CreateVolume::for_test(name, gib * GIB, cap, params);
    req.cluster = ClusterId::new(cluster).expect("a cluster ID");
    req.common.k8s = K8sMeta {
        pv_name: Some(name.to_owned()),
        pvc_name: Some(format!("claim-{name}")),
        pvc_namespace: Some("shop".to_owned()),
    };
    req
}

async fn make(c: &Arc<dyn ControllerBackend>, req: CreateVolume) -> String {
    let name = req.name.clone();
    c.create_volume(&req)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .native_id
}

/// A PV of the volume `native` of `backend`.
fn pv(name: &str, backend: &str, native: &str) -> Value {
    common::pv(name, &format!("v1:{backend}:{native}"))
}

fn orphans(report: &Value) -> &Vec<Value> {
    report["orphans"].as_array().expect("orphans is a list")
}

/// The listed orphan made for the PV `pv_name`.
fn orphan<'a>(report: &'a Value, pv_name: &str) -> &'a Value {
    orphans(report)
        .iter()
        .find(|o| o["pv_name"] == pv_name)
        .unwrap_or_else(|| panic!("{pv_name} is not listed: {report:#}"))
}

/// The PV names of the listed orphans of `backend`, sorted.
fn listed(report: &Value, backend: &str) -> Vec<String> {
    let mut names: Vec<String> = orphans(report)
        .iter()
        .filter(|o| o["backend"] == backend)
        .map(|o| o["pv_name"].as_str().unwrap_or("-").to_owned())
        .collect();
    names.sort();
    names
}

fn backend_row<'a>(report: &'a Value, backend: &str) -> &'a Value {
    report["backends"]
        .as_array()
        .expect("backends is a list")
        .iter()
        .find(|b| b["backend"] == backend)
        .unwrap_or_else(|| panic!("no row for {backend}: {report:#}"))
}

async fn run(fake: &Fake, config: &Path, extra: &[&str]) -> std::process::Output {
    let config = config.to_str().expect("a UTF-8 path");
    let mut args = vec!["orphans", "--config", config];
    args.extend_from_slice(extra);
    fake.run(&args).await
}

/// `orphans --delete --yes` of every listed volume; the report. It exits 3: the volume whose
/// marker records no policy is always left.
async fn delete_all(fake: &Fake, config: &Path) -> Value {
    let args = ["--min-age", "0", "--delete", "--yes", "-o", "json"];
    let out = run(fake, config, &args).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "the unknown one is left: {}",
        describe(&out)
    );
    stdout_json(&out)
}

/// What `--delete` did with the volume made for `pv`.
fn outcome_of(report: &Value, pv: &str) -> String {
    orphan(report, pv)["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Rewrites a subdir mark as a controller before the policy key wrote it.
fn strip_policy_line(mark: &Path) {
    let text = std::fs::read_to_string(mark).expect("read the mark");
    assert!(text.contains(ON_DELETE_KEY), "{text}");
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with(ON_DELETE_KEY))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(mark, old).expect("write the mark");
}

#[test]
fn file_orphans_are_listed_and_deleted_archived_or_kept_by_their_recorded_policy() {
    if skip_unless_nfs_server() {
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let base = root.path().join("k8s");
    std::fs::create_dir(&base).expect("base dir");
    let server = NfsServer::start(root.path(), PSEUDO).expect("start nfs-ganesha");
    let cloud = ShareCloud::start(&server, &["--job-latency-ms", "20"]).expect("the emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &[
            (
                "files",
                "sfs",
                json!({"server": server.address(), "export": PSEUDO, "base_dir": "k8s"}),
            ),
            ("turbo", "sfs", cloud.share_table()),
        ],
    );
    let c = controllers(&config);
    let (files, turbo) = (&c["files"], &c["turbo"]);
    let share_dirs = || -> Vec<String> {
        let mut d: Vec<String> = std::fs::read_dir(root.path())
            .expect("the export root")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != "k8s")
            .collect();
        d.sort();
        d
    };

    server.block_on_inside(async {
        let fake = Fake::start().await;
        let dir_req = |name: &str, cluster: &str, policy: &str| {
            request(name, cluster, 1, &[("everest.io/on-delete", policy)])
        };
        let live = make(files, dir_req("pvc-live", OURS, "delete")).await;
        make(files, dir_req("pvc-del", OURS, "delete")).await;
        make(files, dir_req("pvc-keep", OURS, "retain")).await;
        make(files, dir_req("pvc-arch", OURS, "archive")).await;
        make(files, dir_req("pvc-old", OURS, "delete")).await;
        make(files, dir_req("pvc-theirs", THEIRS, "delete")).await;
        // Data in the volumes whose policy keeps it.
        for name in ["pvc-keep", "pvc-arch", "pvc-old"] {
            std::fs::write(base.join(name).join("data"), name).expect("write data");
        }
        strip_policy_line(&base.join(".everest/pvc-old"));
        fake.api.put(pv("pvc-live", "files", &live));
        let share = |name: &str, cluster: &str, policy: &str| {
            request(
                name,
                cluster,
                500,
                &[
                    ("everest.io/sfs-mode", "share"),
                    ("everest.io/on-delete", policy),
                ],
            )
        };
        let share_live = make(turbo, share("pvc-s-live", OURS, "delete")).await;
        // A static PV written by hand with the keeping form of the handle still holds it.
        let share_static = make(turbo, share("pvc-s-static", OURS, "delete")).await;
        let share_del = make(turbo, share("pvc-s-del", OURS, "delete")).await;
        let share_keep = make(turbo, share("pvc-s-keep", OURS, "retain")).await;
        make(turbo, share("pvc-s-theirs", THEIRS, "delete")).await;
        fake.api.put(pv("pvc-s-live", "turbo", &share_live));
        let kept_form = share_static.replacen("sd~", "sr~", 1);
        assert_ne!(kept_form, share_static);
        fake.api.put(pv("hand-written", "turbo", &kept_form));
        assert_eq!(share_dirs().len(), 5, "{:?}", share_dirs());

        // The default minimum age holds every new volume back, counted.
        let out = run(&fake, &config, &["-o", "json"]).await;
        assert!(out.status.success(), "{}", describe(&out));
        let report = stdout_json(&out);
        assert!(orphans(&report).is_empty(), "{report:#}");
        assert_eq!(report["held_back"], 6, "{report:#}");

        let out = run(&fake, &config, &["--min-age", "0", "-o", "json"]).await;
        assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        let report = stdout_json(&out);
        assert_eq!(
            listed(&report, "files"),
            ["pvc-arch", "pvc-del", "pvc-keep", "pvc-old"],
            "{report:#}"
        );
        assert_eq!(
            listed(&report, "turbo"),
            ["pvc-s-del", "pvc-s-keep"],
            "{report:#}"
        );
        // One of each instance is another cluster's.
        assert_eq!(report["other_clusters"], 2, "{report:#}");
        for (backend, ours, in_use) in [("files", 5, 1), ("turbo", 4, 2)] {
            let row = backend_row(&report, backend);
            assert_eq!(row["checked"], true, "{row:#}");
            assert_eq!(
                (row["ours"].as_u64(), row["in_use"].as_u64()),
                (Some(ours), Some(in_use)),
                "{row:#}"
            );
        }
        let d = orphan(&report, "pvc-del");
        assert_eq!(d["kind"], "sfs");
        assert_eq!(d["volume_handle"], "v1:files:d~pvc-del");
        assert_eq!(d["on_delete"], "delete");
        assert_eq!(d["size_bytes"], Value::Null, "a directory has no size");
        assert!(d["age_seconds"].as_u64().is_some_and(|a| a < 600), "{d:#}");
        assert_eq!(d["pvc_name"], "claim-pvc-del");
        assert_eq!(orphan(&report, "pvc-keep")["on_delete"], "retain");
        assert_eq!(
            orphan(&report, "pvc-arch")["volume_handle"],
            "v1:files:a~pvc-arch"
        );
        // Unknown policy: listed under the handle that deletes nothing.
        let old = orphan(&report, "pvc-old");
        assert_eq!(
            (&old["on_delete"], &old["volume_handle"]),
            (&Value::Null, &json!("v1:files:r~pvc-old"))
        );
        let s = orphan(&report, "pvc-s-del");
        assert_eq!(s["volume_handle"], format!("v1:turbo:{share_del}"));
        assert_eq!(s["size_bytes"], 500 * GIB, "{s:#}");
        assert!(
            s["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{s:#}"
        );
        assert!(s["age_seconds"].as_u64().is_some_and(|a| a < 600), "{s:#}");
        assert_eq!(
            orphan(&report, "pvc-s-keep")["volume_handle"],
            format!("v1:turbo:{share_keep}")
        );

        let table = run(&fake, &config, &["--min-age", "0"]).await;
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains("ON DELETE") && text.contains("unknown"),
            "{text}"
        );
        assert!(
            text.contains("v1:files:d~pvc-del") && text.contains("500Gi"),
            "{text}"
        );
        assert!(
            !text.contains("pvc-live") && !text.contains("pvc-theirs"),
            "{text}"
        );
        assert!(
            text.contains("2 volume(s) skipped as other clusters'"),
            "{text}"
        );

        let report = delete_all(&fake, &config).await;
        let outcome = |pv: &str| outcome_of(&report, pv);
        assert_eq!(outcome("pvc-del"), "deleted");
        assert_eq!(outcome("pvc-arch"), "archived");
        assert!(
            outcome("pvc-keep").starts_with("retained, not deleted"),
            "{}",
            outcome("pvc-keep")
        );
        assert!(
            outcome("pvc-old").starts_with("refused: its marker records no delete policy"),
            "{}",
            outcome("pvc-old")
        );
        assert_eq!(outcome("pvc-s-del"), "deleted");
        assert!(
            outcome("pvc-s-keep").starts_with("retained"),
            "{}",
            outcome("pvc-s-keep")
        );

        // On the server's disk: what the policies say, and nothing else touched.
        assert!(!base.join("pvc-del").exists() && !base.join(".everest/pvc-del").exists());
        assert!(!base.join("pvc-arch").exists());
        assert_eq!(
            std::fs::read_to_string(base.join("archived-pvc-arch/data")).expect("archived data"),
            "pvc-arch"
        );
        assert!(
            base.join(".everest/archived-pvc-arch").exists(),
            "the mark moved with it"
        );
        for kept in ["pvc-keep", "pvc-old"] {
            assert_eq!(
                std::fs::read_to_string(base.join(kept).join("data")).expect("kept data"),
                kept
            );
        }
        for untouched in ["pvc-live", "pvc-theirs"] {
            assert!(base.join(untouched).is_dir(), "{untouched} must stay");
        }
        // The deleted share is gone; the live, hand-written, kept and other cluster's stay.
        assert_eq!(share_dirs().len(), 4, "{:?}", share_dirs());

        // Left: the kept, the archived (kept from now on, never archived again) and the
        // unknown one. A second --delete changes nothing on disk.
        let out = run(
            &fake,
            &config,
            &["--min-age", "0", "--delete", "--yes", "-o", "json"],
        )
        .await;
        let report = stdout_json(&out);
        assert_eq!(
            listed(&report, "files"),
            ["pvc-arch", "pvc-keep", "pvc-old"],
            "{report:#}"
        );
        let archived = orphan(&report, "pvc-arch");
        assert_eq!(archived["volume_handle"], "v1:files:r~archived-pvc-arch");
        assert!(
            archived["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("retained")),
            "{archived:#}"
        );
        assert!(base.join("archived-pvc-arch/data").exists());
        assert_eq!(listed(&report, "turbo"), ["pvc-s-keep"], "{report:#}");

        // The PV check is what keeps a live volume: without its PV it is listed.
        fake.api.remove("v1", "PersistentVolume", None, "pvc-live");
        let out = run(&fake, &config, &["--min-age", "0", "-o", "json"]).await;
        assert!(listed(&stdout_json(&out), "files").contains(&"pvc-live".to_owned()));

        // Clean up what the test made in the emulator (its shares are directories of root).
        for id in [share_live, share_static, share_keep] {
            let _ = turbo
                .delete_volume(&id.replacen("sr~", "sd~", 1), &Secrets::default())
                .await;
        }
    });
    drop(cloud);
    drop(server);
}

#[tokio::test]
async fn object_orphans_are_listed_and_deleted_or_kept_by_their_recorded_policy() {
    if skip_unless_s3_server() {
        return;
    }
    let s3 = S3Server::start().expect("start the S3 server");
    let dir = tempfile::tempdir().expect("temp dir");
    let credentials = dir.path().join("s3-credentials.json");
    std::fs::write(
        &credentials,
        r#"{"access_key":"AKTEST","secret_key":"secret"}"#,
    )
    .expect("keys");
    let mut perms = std::fs::metadata(&credentials).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&credentials, perms).expect("chmod");
    let table = json!({
        "endpoint": s3.endpoint(),
        "region": "us-east-1",
        "credentials_file": credentials,
        "bucket_prefix": "everest",
    });
    let config = write_config(dir.path(), &[("objects", "obs", table.clone())]);
    let c = controllers(&config);
    let objects = &c["objects"];
    // The backend's own S3 calls, to look at and change what the controller left.
    let obs = everest_obs::ObsConfig::parse("objects", table.as_object().expect("a table"))
        .expect("the obs table");
    let api = everest_obs::s3::S3::new("objects", &obs).expect("the S3 client");
    let client = api.client(None).expect("a client");
    api.create_bucket(&client, "shared-data")
        .await
        .expect("the shared bucket");

    let fake = Fake::start().await;
    let bucket = |name: &str, cluster: &str, policy: &str| {
        request(
            name,
            cluster,
            1,
            &[
                ("everest.io/obs-mode", "bucket"),
                ("everest.io/on-delete", policy),
            ],
        )
    };
    let prefix = |name: &str, policy: &str| {
        request(
            name,
            OURS,
            1,
            &[
                ("everest.io/obs-mode", "prefix"),
                ("everest.io/obs-bucket", "shared-data"),
                ("everest.io/on-delete", policy),
            ],
        )
    };
    let live = make(objects, bucket("pvc-live", OURS, "delete")).await;
    let del = make(objects, bucket("pvc-del", OURS, "delete")).await;
    let keep = make(objects, bucket("pvc-keep", OURS, "retain")).await;
    let old = make(objects, bucket("pvc-old", OURS, "delete")).await;
    make(objects, bucket("pvc-theirs", THEIRS, "delete")).await;
    let p_del = make(objects, prefix("pvc-p-del", "delete")).await;
    let p_keep = make(objects, prefix("pvc-p-keep", "retain")).await;
    fake.api.put(pv("pvc-live", "objects", &live));
    let name_of = |native: &str| native.split_once('~').expect("a policy").1.to_owned();
    // Data in each volume.
    let empty = BTreeMap::new();
    for native in [&del, &keep, &old] {
        api.put_marker(&client, &name_of(native), "data", &empty)
            .await
            .expect("write data");
    }
    for p in ["pvc-p-del", "pvc-p-keep"] {
        api.put_marker(&client, "shared-data", &format!("{p}/data"), &empty)
            .await
            .expect("write data");
    }
    // pvc-old's bucket as a controller before the policy key marked it.
    let old_bucket = name_of(&old);
    let mut mark = api
        .bucket_mark(&client, &old_bucket)
        .await
        .expect("the mark");
    assert!(mark.remove(ON_DELETE_KEY).is_some(), "{mark:?}");
    api.put_bucket_mark(&client, &old_bucket, &mark)
        .await
        .expect("rewrite the mark");

    let out = run(&fake, &config, &["--min-age", "0", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let report = stdout_json(&out);
    assert_eq!(
        listed(&report, "objects"),
        ["pvc-del", "pvc-keep", "pvc-old", "pvc-p-del", "pvc-p-keep"],
        "{report:#}"
    );
    assert_eq!(report["other_clusters"], 1, "{report:#}");
    let row = backend_row(&report, "objects");
    assert_eq!(
        (row["ours"].as_u64(), row["in_use"].as_u64()),
        (Some(6), Some(1)),
        "{row:#}"
    );
    let b = orphan(&report, "pvc-del");
    assert_eq!(
        (&b["kind"], &b["on_delete"]),
        (&json!("obs"), &json!("delete"))
    );
    assert_eq!(b["volume_handle"], format!("v1:objects:{del}"));
    assert_eq!(b["size_bytes"], Value::Null, "S3 has no size");
    assert!(b["age_seconds"].as_u64().is_some_and(|a| a < 600), "{b:#}");
    let p = orphan(&report, "pvc-p-del");
    assert_eq!(p["volume_handle"], format!("v1:objects:{p_del}"));
    assert_eq!(p["name"], "shared-data/pvc-p-del");
    assert!(p["age_seconds"].as_u64().is_some_and(|a| a < 600), "{p:#}");
    assert_eq!(
        orphan(&report, "pvc-p-keep")["volume_handle"],
        format!("v1:objects:{p_keep}")
    );
    let o = orphan(&report, "pvc-old");
    assert_eq!(
        (&o["on_delete"], &o["volume_handle"]),
        (&Value::Null, &json!(format!("v1:objects:r~{old_bucket}")))
    );

    let report = delete_all(&fake, &config).await;
    let outcome = |pv: &str| outcome_of(&report, pv);
    assert_eq!(outcome("pvc-del"), "deleted");
    assert_eq!(outcome("pvc-p-del"), "deleted");
    assert!(
        outcome("pvc-keep").starts_with("retained"),
        "{}",
        outcome("pvc-keep")
    );
    assert!(
        outcome("pvc-p-keep").starts_with("retained"),
        "{}",
        outcome("pvc-p-keep")
    );
    assert!(
        outcome("pvc-old").starts_with("refused: its marker records no delete policy"),
        "{}",
        outcome("pvc-old")
    );

    // In the S3 service: what the policies say, and nothing else touched.
    assert!(
        !api.bucket_exists(&client, &name_of(&del))
            .await
            .expect("HeadBucket")
    );
    assert!(
        !api.has_objects(&client, "shared-data", "pvc-p-del/")
            .await
            .expect("list")
    );
    for native in [&keep, &old, &live] {
        assert!(
            api.bucket_exists(&client, &name_of(native))
                .await
                .expect("HeadBucket"),
            "{native} must stay"
        );
    }
    for kept in [&keep, &old] {
        assert!(
            api.object_metadata(&client, &name_of(kept), "data")
                .await
                .expect("HeadObject")
                .is_some()
        );
    }
    assert!(
        api.object_metadata(&client, "shared-data", "pvc-p-keep/data")
            .await
            .expect("HeadObject")
            .is_some()
    );

    let out = run(&fake, &config, &["--min-age", "0", "-o", "json"]).await;
    assert_eq!(
        listed(&stdout_json(&out), "objects"),
        ["pvc-keep", "pvc-old", "pvc-p-keep"]
    );
    drop(s3);
}
