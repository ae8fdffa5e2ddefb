//! `everestctl migrate flexvolume` against the fake API server: the plan of a recorded CCE
//! cluster, applying it per kind, resuming after the API server dies at every write, refusing
//! claims in use, and never deleting a PV whose policy is still Delete.

mod common;

use common::{Fake, describe, recorded_cluster, stdout_json};
use serde_json::{Value, json};

const EVS_PV: &str = "pvc-5c1f0d2e-7b1a-11eb-9a3c-fa163e1d2a01";
const EVS_CLAIM_UID: &str = "5c1f0d2e-7b1a-11eb-9a3c-fa163e1d2a01";
const SFS_PV: &str = "pvc-7d2e1a30-7b1a-11eb-9a3c-fa163e1d2a02";
const TURBO_PV: &str = "pvc-9e3f2b41-7b1a-11eb-9a3c-fa163e1d2a03";
const TURBO_CLAIM_UID: &str = "9e3f2b41-7b1a-11eb-9a3c-fa163e1d2a03";
const OBS_PV: &str = "pvc-af403c52-7b1a-11eb-9a3c-fa163e1d2a04";
const OBS_CLAIM_UID: &str = "af403c52-7b1a-11eb-9a3c-fa163e1d2a04";
const RELEASED_PV: &str = "pvc-b0514d63-7b1a-11eb-9a3c-fa163e1d2a05";

const ALL_STEPS: [&str; 5] = ["retain", "record", "delete-old", "create-new", "finish"];

fn flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        "migrate",
        "flexvolume",
        "--backend",
        "evs=evs-default,sfs=sfs-turbo,obs=obs-main",
        "--obs-secret",
        "kube-system/obs-keys",
        "-o",
        "json",
    ];
    v.extend_from_slice(extra);
    v
}

/// `(claim, volume, driver, handle, state, steps)` of each plan entry.
fn summary(plan: &Value) -> Vec<(String, String, String, String, String, Vec<String>)> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    plan["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|e| {
            (
                text(&e["claim"]),
                text(&e["persistent_volume"]),
                text(&e["driver"]),
                text(&e["volume_handle"]),
                text(&e["state"]),
                e["steps"].as_array().unwrap().iter().map(text).collect(),
            )
        })
        .collect()
}

fn entry<'a>(plan: &'a Value, pv: &str) -> &'a Value {
    plan["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["persistent_volume"] == pv)
        .unwrap_or_else(|| panic!("no entry for {pv} in {plan:#}"))
}

fn steps(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn dry_run_of_a_recorded_cce_cluster_prints_the_complete_plan() {
    let fake = Fake::start().await;
    fake.load(&recorded_cluster());
    let out = fake.run(&flags(&[])).await;
    assert!(out.status.success(), "{}", describe(&out));
    let plan = stdout_json(&out);
    let s = |x: &str| x.to_owned();
    assert_eq!(
        summary(&plan),
        vec![
            (
                s("analytics/reports"),
                s(OBS_PV),
                s("huawei.com/fuxiobs"),
                format!("v1:obs-main:r~{OBS_PV}"),
                s("ready"),
                steps(&ALL_STEPS)
            ),
            (
                s("analytics/warehouse"),
                s(TURBO_PV),
                s("huawei.com/fuxiefs"),
                s("v1:sfs-turbo:sr~8962a2a2-a583-4b7f-bb74-fe76712d8414"),
                s("ready"),
                steps(&ALL_STEPS)
            ),
            (
                s("shop/mysql-data"),
                s(EVS_PV),
                s("huawei.com/fuxivol"),
                s("v1:evs-default:0992dbda-6340-470e-a74e-4f0db288ed82"),
                s("in-use"),
                steps(&ALL_STEPS)
            ),
            (
                s("shop/old-cache"),
                s(RELEASED_PV),
                s("huawei.com/fuxivol"),
                s("-"),
                s("skipped"),
                vec![]
            ),
            (
                s("shop/uploads"),
                s(SFS_PV),
                s("huawei.com/fuxinfs"),
                s("-"),
                s("skipped"),
                vec![]
            ),
        ],
        "{plan:#}"
    );
    assert_eq!(entry(&plan, EVS_PV)["pods"], json!(["shop/mysql-0"]));
    assert!(
        entry(&plan, RELEASED_PV)["reason"]
            .as_str()
            .unwrap()
            .contains("not bound to this volume")
    );
    assert!(
        entry(&plan, SFS_PV)["reason"]
            .as_str()
            .unwrap()
            .contains("SFS Turbo")
    );

    // The CSI PVs to be created: same name, size, modes, class and claim; Retain; the
    // translated source with what each node needs.
    let evs = &entry(&plan, EVS_PV)["new_volume"];
    assert_eq!(evs["metadata"]["name"], EVS_PV);
    assert_eq!(
        evs["metadata"]["labels"]["failure-domain.beta.kubernetes.io/zone"],
        "eu-de-01"
    );
    assert_eq!(
        evs["metadata"]["annotations"]["everest.io/migrated-from"],
        "huawei.com/fuxivol"
    );
    assert_eq!(
        evs["metadata"]["annotations"]["everest.io/flexvolume-reclaim-policy"],
        "Delete"
    );
    assert_eq!(
        evs["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "everest.csi.io"
    );
    assert_eq!(
        evs["spec"],
        json!({
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "10Gi"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "shop",
                         "name": "mysql-data", "uid": EVS_CLAIM_UID},
            "csi": {"driver": "everest.csi.io", "fsType": "ext4",
                    "volumeAttributes": {"csi.storage.k8s.io/fstype": "ext4"},
                    "volumeHandle": "v1:evs-default:0992dbda-6340-470e-a74e-4f0db288ed82"},
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "sas",
            "volumeMode": "Filesystem"
        })
    );
    let turbo = &entry(&plan, TURBO_PV)["new_volume"]["spec"];
    assert_eq!(
        turbo["csi"]["volumeAttributes"],
        json!({"everest.io/nfs-export": "192.168.0.169:/"})
    );
    assert_eq!(turbo["capacity"]["storage"], "500Gi");
    assert_eq!(turbo["accessModes"], json!(["ReadWriteMany"]));
    assert_eq!(turbo["claimRef"]["uid"], TURBO_CLAIM_UID);
    let obs = &entry(&plan, OBS_PV)["new_volume"]["spec"];
    assert_eq!(
        obs["csi"]["volumeAttributes"],
        json!({"everest.io/obs-bucket": OBS_PV, "everest.io/obs-region": "eu-de"})
    );
    assert_eq!(
        obs["csi"]["nodeStageSecretRef"],
        json!({"name": "obs-keys", "namespace": "kube-system"})
    );
    assert_eq!(obs["claimRef"]["uid"], OBS_CLAIM_UID);

    assert_eq!(
        fake.writes(),
        Vec::<String>::new(),
        "a dry run writes nothing"
    );

    // The table says the same to a person.
    let table_args: Vec<&str> = flags(&[])
        .into_iter()
        .filter(|a| !matches!(*a, "-o" | "json"))
        .collect();
    let table = fake.run(&table_args).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("in use by shop/mysql-0"), "{text}");
    assert!(
        text.contains("ready: retain, record, delete-old, create-new, finish"),
        "{text}"
    );
}

#[tokio::test]
async fn broken_input_makes_the_plan_say_why() {
    // Without a backend for a kind, its volumes wait for one.
    let fake = Fake::start().await;
    fake.load(&recorded_cluster());
    let out = fake
        .run(&[
            "migrate",
            "flexvolume",
            "--backend",
            "evs=evs-default,sfs=sfs-turbo",
            "-o",
            "json",
        ])
        .await;
    assert!(out.status.success(), "{}", describe(&out));
    let plan = stdout_json(&out);
    let obs = entry(&plan, OBS_PV);
    assert_eq!(obs["state"], "skipped");
    assert!(
        obs["reason"].as_str().unwrap().contains("--backend obs="),
        "{obs:#}"
    );

    // An object volume without the keys its node needs.
    let out = fake
        .run(&[
            "migrate",
            "flexvolume",
            "--backend",
            "obs=obs-main",
            "-o",
            "json",
        ])
        .await;
    let obs = entry(&stdout_json(&out), OBS_PV).clone();
    assert!(
        obs["reason"].as_str().unwrap().contains("--obs-secret"),
        "{obs:#}"
    );

    // A PV whose driver options lost the disk ID.
    let mut cluster = recorded_cluster();
    for item in cluster["items"].as_array_mut().unwrap() {
        if item["metadata"]["name"] == EVS_PV {
            item["spec"]["flexVolume"]["options"]
                .as_object_mut()
                .unwrap()
                .remove("volumeID");
        }
    }
    let broken = Fake::start().await;
    broken.load(&cluster);
    let plan = stdout_json(&broken.run(&flags(&[])).await);
    let evs = entry(&plan, EVS_PV);
    assert_eq!(evs["state"], "skipped");
    assert!(
        evs["reason"]
            .as_str()
            .unwrap()
            .contains("options.volumeID is missing"),
        "{evs:#}"
    );

    // A claim name or kind the command line gets wrong is refused before anything is read.
    let bad = fake
        .run(&["migrate", "flexvolume", "--backend", "disk=x"])
        .await;
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    let twice = fake
        .run(&["migrate", "flexvolume", "--backend", "evs=a,evs=b"])
        .await;
    assert_eq!(twice.status.code(), Some(1), "{}", describe(&twice));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("more than once"));
}

/// [`assert_migrated`] for the one EVS volume of [`one_evs_volume`].
fn assert_evs_migrated(fake: &Fake) {
    assert_migrated(
        fake,
        EVS_PV,
        "shop",
        "mysql-data",
        EVS_CLAIM_UID,
        EVS_HANDLE,
    );
}

/// Asserts the PV `name` is the migrated CSI PV bound to claim `uid`, and the claim is as
/// it was but for the record, which is gone.
fn assert_migrated(fake: &Fake, name: &str, namespace: &str, claim: &str, uid: &str, handle: &str) {
    let pv = fake.pv(name).unwrap_or_else(|| panic!("PV {name} is gone"));
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], handle, "{pv:#}");
    assert_eq!(pv["spec"]["csi"]["driver"], "everest.csi.io");
    assert!(pv["spec"]["flexVolume"].is_null());
    assert_eq!(pv["spec"]["claimRef"]["uid"], uid);
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    let c = fake.claim(namespace, claim).expect("the claim is there");
    assert_eq!(c["metadata"]["uid"], uid);
    assert_eq!(c["spec"]["volumeName"], name);
    assert!(
        c["metadata"]["annotations"]["everest.io/flexvolume-migration"].is_null(),
        "the record is left on {c:#}"
    );
}

/// Every PV a DELETE reached had reclaim policy Retain at that moment.
fn assert_only_retain_deleted(fake: &Fake) {
    for pv in fake.api.deleted() {
        assert_eq!(
            pv["spec"]["persistentVolumeReclaimPolicy"], "Retain",
            "a PV was deleted while not Retain: {pv:#}"
        );
    }
}

#[tokio::test]
async fn apply_migrates_each_kind_and_keeps_claims_bound() {
    let fake = Fake::start().await;
    fake.load(&recorded_cluster());
    let out = fake.run(&flags(&["--apply"])).await;
    // Some volumes were not migrated (in use, skipped): the command says so with status 3.
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("[1/2] analytics/reports"), "{progress}");
    assert!(progress.contains("migrated 2 volume(s)"), "{progress}");
    assert_migrated(
        &fake,
        OBS_PV,
        "analytics",
        "reports",
        OBS_CLAIM_UID,
        &format!("v1:obs-main:r~{OBS_PV}"),
    );
    assert_migrated(
        &fake,
        TURBO_PV,
        "analytics",
        "warehouse",
        TURBO_CLAIM_UID,
        "v1:sfs-turbo:sr~8962a2a2-a583-4b7f-bb74-fe76712d8414",
    );
    assert_only_retain_deleted(&fake);
    let deleted: Vec<Value> = fake
        .api
        .deleted()
        .iter()
        .map(|pv| pv["metadata"]["name"].clone())
        .collect();
    assert_eq!(deleted, vec![json!(OBS_PV), json!(TURBO_PV)]);
    // In use, not CCE's or not migratable: untouched.
    let evs = fake.pv(EVS_PV).unwrap();
    assert_eq!(evs["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert!(!evs["spec"]["flexVolume"].is_null());
    for name in [SFS_PV, RELEASED_PV, "local-logs"] {
        assert!(fake.pv(name).is_some(), "{name} was touched");
    }
    let plan = stdout_json(&out);
    assert_eq!(entry(&plan, OBS_PV)["state"], "done");
    assert_eq!(entry(&plan, TURBO_PV)["state"], "done");

    // Again: nothing left to do for them, nothing written.
    let writes = fake.writes().len();
    let again = fake.run(&flags(&["--apply"])).await;
    assert_eq!(again.status.code(), Some(3), "{}", describe(&again));
    assert_eq!(
        fake.writes().len(),
        writes,
        "a second run wrote: {:?}",
        fake.writes()
    );

    // Forced, the claim in use moves too.
    let forced = fake.run(&flags(&["--apply", "--force-in-use"])).await;
    assert_eq!(forced.status.code(), Some(3), "{}", describe(&forced));
    assert_evs_migrated(&fake);
    assert_only_retain_deleted(&fake);
    let migrated = fake.pv(EVS_PV).unwrap();
    assert_eq!(
        migrated["metadata"]["annotations"]["everest.io/flexvolume-reclaim-policy"],
        "Delete"
    );
    assert_eq!(migrated["spec"]["storageClassName"], "sas");
}

/// The recorded cluster cut down to the EVS PV and its claim, with `pod_phase` for a pod
/// using the claim, if any.
fn one_evs_volume(pod_phase: Option<&str>) -> Value {
    let mut cluster = recorded_cluster();
    let items = cluster["items"].as_array_mut().unwrap();
    items.retain(|i| {
        i["metadata"]["name"] == EVS_PV
            || i["metadata"]["name"] == "mysql-data"
            || (i["metadata"]["name"] == "mysql-0" && pod_phase.is_some())
    });
    for i in items.iter_mut() {
        if let (Some(phase), true) = (pod_phase, i["kind"] == "Pod") {
            i["status"]["phase"] = json!(phase);
        }
    }
    cluster
}

const EVS_HANDLE: &str = "v1:evs-default:0992dbda-6340-470e-a74e-4f0db288ed82";

#[tokio::test]
async fn apply_resumes_after_the_api_server_dies_at_any_write() {
    // A whole migration of one volume is six writes: retain, record, delete, release the
    // finalizer, create, finish. Cut it off before each of them in turn.
    for cut in 0..6 {
        let fake = Fake::start().await;
        fake.load(&one_evs_volume(None));
        fake.api.fail_writes_after(Some(cut));
        let out = fake.run(&flags(&["--apply"])).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "cut at write {cut}: {}",
            describe(&out)
        );
        assert_only_retain_deleted(&fake);
        // At no point is the claim left with neither a volume nor a record of the new one.
        let claim = fake.claim("shop", "mysql-data").unwrap();
        if fake.pv(EVS_PV).is_none() {
            assert!(
                !claim["metadata"]["annotations"]["everest.io/flexvolume-migration"].is_null(),
                "cut at write {cut}: the PV is gone and the claim has no record"
            );
        }
        // The plan of the half-done cluster names what is left.
        fake.api.fail_writes_after(None);
        let plan = stdout_json(&fake.run(&flags(&[])).await);
        let left = entry(&plan, EVS_PV);
        assert_eq!(left["state"], "ready", "cut at write {cut}: {plan:#}");
        assert_eq!(left["volume_handle"], EVS_HANDLE);

        let resumed = fake.run(&flags(&["--apply"])).await;
        assert!(
            resumed.status.success(),
            "cut at write {cut}, resumed: {}",
            describe(&resumed)
        );
        assert_evs_migrated(&fake);
        assert_only_retain_deleted(&fake);
        let writes = fake.writes().len();
        let done = fake.run(&flags(&["--apply"])).await;
        assert!(done.status.success(), "{}", describe(&done));
        assert_eq!(
            fake.writes().len(),
            writes,
            "cut at write {cut}: a finished migration wrote again"
        );
    }
    // Uncut, the same six writes finish it at once.
    let fake = Fake::start().await;
    fake.load(&one_evs_volume(None));
    fake.api.fail_writes_after(Some(6));
    let out = fake.run(&flags(&["--apply"])).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_evs_migrated(&fake);
}

#[tokio::test]
async fn claims_in_use_by_running_pods_are_refused() {
    for phase in ["Running", "Pending"] {
        let fake = Fake::start().await;
        fake.load(&one_evs_volume(Some(phase)));
        let out = fake.run(&flags(&["--apply"])).await;
        assert_eq!(out.status.code(), Some(3), "{phase}: {}", describe(&out));
        assert_eq!(entry(&stdout_json(&out), EVS_PV)["state"], "in-use");
        assert_eq!(
            fake.writes(),
            Vec::<String>::new(),
            "{phase}: a claim in use was touched"
        );
    }
    // A running pod in another namespace names a claim of the same name, not this one.
    let fake = Fake::start().await;
    let mut cluster = one_evs_volume(Some("Running"));
    for item in cluster["items"].as_array_mut().unwrap() {
        if item["kind"] == "Pod" {
            item["metadata"]["namespace"] = json!("other-team");
        }
    }
    fake.load(&cluster);
    let out = fake.run(&flags(&["--apply"])).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_evs_migrated(&fake);

    // A pod that finished holds nothing.
    for phase in ["Succeeded", "Failed"] {
        let fake = Fake::start().await;
        fake.load(&one_evs_volume(Some(phase)));
        let out = fake.run(&flags(&["--apply"])).await;
        assert!(out.status.success(), "{phase}: {}", describe(&out));
        assert_evs_migrated(&fake);
    }
}

#[tokio::test]
async fn a_pv_whose_policy_stays_delete_is_never_deleted() {
    // An admission webhook (played by the fake) accepts the change to Retain and drops it.
    let fake = Fake::start().await;
    fake.load(&one_evs_volume(None));
    fake.api.freeze("v1", "PersistentVolume", None, EVS_PV);
    let out = fake.run(&flags(&["--apply"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("Retain"),
        "{stderr}"
    );
    assert!(
        fake.api.deleted().is_empty(),
        "a Delete PV was deleted: {:?}",
        fake.api.deleted()
    );
    let pv = fake.pv(EVS_PV).unwrap();
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert!(!pv["spec"]["flexVolume"].is_null());
    let claim = fake.claim("shop", "mysql-data").unwrap();
    assert!(claim["metadata"]["annotations"]["everest.io/flexvolume-migration"].is_null());

    // The same cluster without the webhook: deleted, and only once Retain.
    let fake = Fake::start().await;
    fake.load(&one_evs_volume(None));
    let out = fake.run(&flags(&["--apply"])).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fake.api.deleted().len(), 1);
    assert_only_retain_deleted(&fake);
}
