//! Unit tests of the API logic and state transitions, on the fake host.

use std::sync::Arc;

use crate::auth::Credentials;
use crate::cloud::Cloud;
use crate::config::{Config, DEFAULT_PROJECT_ID as P, DEFAULT_SERVER_ID as S};
use crate::effects::FakeEffects;
use crate::errors::ApiError;
use crate::state::JobStatus;
use crate::{ecs, evs, jobs};

/// The cloud on the fake host, in a temp dir: what every unit test of the API logic starts from.
pub(crate) struct World {
    pub(crate) cloud: Cloud,
    pub(crate) fx: Arc<FakeEffects>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn world_with(edit: impl FnOnce(&mut Config)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_dirs(
        dir.path().join("state"),
        dir.path().join("by-id"),
        dir.path().join("creds.json"),
    );
    edit(&mut cfg);
    let fx = Arc::new(FakeEffects::default());
    let cloud = Cloud::new(cfg, Credentials::default(), fx.clone()).unwrap();
    World {
        cloud,
        fx,
        _dir: dir,
    }
}

pub(crate) fn world() -> World {
    world_with(|_| {})
}

fn body(size: u64) -> Vec<u8> {
    format!(r#"{{"volume":{{"availability_zone":"emu-az1","volume_type":"SSD","name":"v","size":{size},"metadata":{{"pvc":"a"}}}}}}"#)
        .into_bytes()
}

fn status(w: &World, id: &str) -> String {
    w.cloud.lock().state.disks[id].status.clone()
}

fn job_status(w: &World, job: &str) -> JobStatus {
    w.cloud.lock().state.jobs[job].status
}

/// Creates a disk and completes its job.
fn available_disk(w: &World) -> String {
    let c = evs::create_volume(&w.cloud, P, &body(10), None).unwrap();
    jobs::complete(&w.cloud, &c.job_id);
    c.volume_ids[0].clone()
}

fn err_code(r: Result<impl std::fmt::Debug, ApiError>) -> String {
    r.unwrap_err().code().to_string()
}

#[test]
fn create_is_creating_then_available_with_a_sparse_image() {
    let w = world();
    let c = evs::create_volume(&w.cloud, P, &body(10), None).unwrap();
    let id = &c.volume_ids[0];
    assert_eq!(status(&w, id), "creating");
    assert_eq!(job_status(&w, &c.job_id), JobStatus::Init);
    assert!(w.fx.host().images.is_empty());
    jobs::complete(&w.cloud, &c.job_id);
    assert_eq!(status(&w, id), "available");
    assert_eq!(job_status(&w, &c.job_id), JobStatus::Success);
    assert_eq!(
        w.fx.host().images[&w.cloud.image_path(id)],
        10 * 1024 * 1024 * 1024
    );
    // The state on disk matches memory.
    let again = Cloud::new(w.cloud.cfg.clone(), Credentials::default(), w.fx.clone()).unwrap();
    assert_eq!(again.lock().state, w.cloud.lock().state);
}

#[test]
fn create_validation_rejects_bad_requests() {
    let w = world();
    let cases: &[(&str, &str)] = &[
        (
            r#"{"volume":{"availability_zone":"emu-az1","volume_type":"SSD","size":9}}"#,
            "EVS.1010",
        ),
        (
            r#"{"volume":{"availability_zone":"emu-az1","volume_type":"SSD","size":32769}}"#,
            "EVS.1010",
        ),
        (
            r#"{"volume":{"availability_zone":"emu-az1","volume_type":"NVME","size":10}}"#,
            "EVS.1020",
        ),
        (
            r#"{"volume":{"availability_zone":"mars-1","volume_type":"SSD","size":10}}"#,
            "EVS.1036",
        ),
        (
            r#"{"volume":{"availability_zone":"emu-az1","volume_type":"SSD","size":10,"snapshot_id":"a","backup_id":"b"}}"#,
            "EVS.1009",
        ),
        (
            r#"{"volume":{"availability_zone":"emu-az1","volume_type":"GPSSD2","size":10,"iops":3000}}"#,
            "EVS.1009",
        ),
        (
            r#"{"volume":{"availability_zone":"emu-az1","volume_type":"ESSD2","size":10}}"#,
            "EVS.1009",
        ),
        (r#"{"volume":"#, "EVS.1009"),
    ];
    for (b, code) in cases {
        let got = err_code(evs::create_volume(&w.cloud, P, b.as_bytes(), None));
        assert_eq!(&got, code, "body {b}");
    }
    assert_eq!(
        err_code(evs::create_volume(&w.cloud, "other", &body(10), None)),
        "EVS.0001"
    );
    let ok = r#"{"volume":{"availability_zone":"emu-az2","volume_type":"GPSSD2","size":10,"iops":3000,"throughput":125}}"#;
    assert!(evs::create_volume(&w.cloud, P, ok.as_bytes(), None).is_ok());
    assert_eq!(
        w.cloud.lock().state.disks.len(),
        1,
        "failed creates leave nothing behind"
    );
}

#[test]
fn tags_are_kept_and_their_limits_enforced() {
    let w = world();
    let with_tags = |tags: &str| {
        format!(
            r#"{{"volume":{{"availability_zone":"emu-az1","volume_type":"SSD","size":10,"tags":{tags}}}}}"#
        )
    };
    let ok = with_tags(r#"{"everest-pvc-name":"data","team":"a_b-1"}"#);
    let c = evs::create_volume(&w.cloud, P, ok.as_bytes(), None).unwrap();
    let view = evs::view(&w.cloud.lock().state.disks[&c.volume_ids[0]], "");
    assert_eq!(view["tags"]["everest-pvc-name"], "data", "{view}");
    assert_eq!(view["tags"]["team"], "a_b-1");
    let eleven: Vec<String> = (0..11).map(|i| format!(r#""k{i}":"v""#)).collect();
    for bad in [
        // 37-character key, 44-character value, '/' and '.' in a key, '.' in a value, 11 tags.
        with_tags(&format!(r#"{{"{}":"v"}}"#, "k".repeat(37))),
        with_tags(&format!(r#"{{"k":"{}"}}"#, "v".repeat(44))),
        with_tags(r#"{"kubernetes.io/created-for/pv/name":"v"}"#),
        with_tags(r#"{"k":"web.data"}"#),
        with_tags(r#"{"":"v"}"#),
        with_tags(&format!("{{{}}}", eleven.join(","))),
    ] {
        assert_eq!(
            err_code(evs::create_volume(&w.cloud, P, bad.as_bytes(), None)),
            "EVS.1009",
            "{bad}"
        );
    }
    let edge = with_tags(&format!(r#"{{"{}":"{}"}}"#, "k".repeat(36), "v".repeat(43)));
    assert!(evs::create_volume(&w.cloud, P, edge.as_bytes(), None).is_ok());
}

#[test]
fn quota_and_client_token() {
    let w = world_with(|c| c.max_disks = Some(1));
    let token = "8d3f0a52-3c1e-4b6a-9f1e-0a1b2c3d4e5f";
    let a = evs::create_volume(&w.cloud, P, &body(10), Some(token)).unwrap();
    let b = evs::create_volume(&w.cloud, P, &body(10), Some(token)).unwrap();
    assert_eq!(
        (a.job_id.clone(), a.volume_ids.clone()),
        (b.job_id, b.volume_ids)
    );
    assert!(b.replayed);
    assert_eq!(
        err_code(evs::create_volume(&w.cloud, P, &body(20), Some(token))),
        "EVS.2219"
    );
    assert_eq!(
        err_code(evs::create_volume(&w.cloud, P, &body(10), Some("nope"))),
        "EVS.2218"
    );
    assert_eq!(
        err_code(evs::create_volume(&w.cloud, P, &body(10), None)),
        "EVS.1034"
    );
}

#[test]
fn extend_rules_and_effect() {
    let w = world();
    let id = available_disk(&w);
    let grow = |n: u64| format!(r#"{{"os-extend":{{"new_size":{n}}}}}"#).into_bytes();
    assert_eq!(
        err_code(evs::extend_volume(&w.cloud, P, &id, &grow(10))),
        "EVS.1015"
    );
    let job = evs::extend_volume(&w.cloud, P, &id, &grow(20)).unwrap();
    assert_eq!(status(&w, &id), "extending");
    assert_eq!(
        err_code(evs::extend_volume(&w.cloud, P, &id, &grow(30))),
        "EVS.1064"
    );
    jobs::complete(&w.cloud, &job);
    assert_eq!(status(&w, &id), "available");
    assert_eq!(w.cloud.lock().state.disks[&id].size, 20);
    assert_eq!(w.fx.host().images[&w.cloud.image_path(&id)], 20 << 30);
    assert_eq!(
        err_code(evs::extend_volume(&w.cloud, P, "missing", &grow(30))),
        "EVS.5404"
    );
}

#[test]
fn attach_extend_detach_delete_with_effects() {
    let w = world();
    let id = available_disk(&w);
    let attach = format!(r#"{{"volumeAttachment":{{"volumeId":"{id}"}}}}"#);
    let job = ecs::attach_volume(&w.cloud, P, S, attach.as_bytes()).unwrap();
    assert_eq!(status(&w, &id), "attaching");
    assert_eq!(err_code(evs::delete_volume(&w.cloud, P, &id)), "EVS.1046");
    jobs::complete(&w.cloud, &job);
    assert_eq!(status(&w, &id), "in-use");
    let host = w.fx.host();
    let link = w.cloud.link_path(&id);
    assert!(link.ends_with(format!("virtio-{}", &id[..20])));
    let dev = host.links[&link].clone();
    assert_eq!(host.loops[&dev], w.cloud.image_path(&id));
    let att = w.cloud.lock().state.disks[&id].attachment.clone().unwrap();
    assert_eq!(
        (att.device.as_str(), att.server_id.as_str()),
        ("/dev/vdb", S)
    );
    assert_eq!(
        err_code(ecs::attach_volume(&w.cloud, P, S, attach.as_bytes())),
        "Ecs.0057"
    );

    // Extending an attached disk refreshes its loop device and returns to in-use.
    let job = evs::extend_volume(&w.cloud, P, &id, br#"{"os-extend":{"new_size":11}}"#).unwrap();
    jobs::complete(&w.cloud, &job);
    assert_eq!(status(&w, &id), "in-use");
    assert_eq!(w.fx.host().refreshed, vec![dev.clone()]);

    let job = ecs::detach_volume(&w.cloud, P, S, &id).unwrap();
    assert_eq!(status(&w, &id), "detaching");
    jobs::complete(&w.cloud, &job);
    assert_eq!(status(&w, &id), "available");
    assert!(w.fx.host().loops.is_empty() && w.fx.host().links.is_empty());
    assert_eq!(
        err_code(ecs::detach_volume(&w.cloud, P, S, &id)),
        "Ecs.0111"
    );

    let job = evs::delete_volume(&w.cloud, P, &id).unwrap();
    assert_eq!(status(&w, &id), "deleting");
    jobs::complete(&w.cloud, &job);
    assert!(!w.cloud.lock().state.disks.contains_key(&id));
    assert!(w.fx.host().images.is_empty());
    assert_eq!(job_status(&w, &job), JobStatus::Success);
}

#[test]
fn attach_errors() {
    let w = world();
    let id = available_disk(&w);
    let attach = format!(r#"{{"volumeAttachment":{{"volumeId":"{id}"}}}}"#);
    assert_eq!(
        err_code(ecs::attach_volume(
            &w.cloud,
            P,
            "no-such-server",
            attach.as_bytes()
        )),
        "Ecs.0114"
    );
    let creating = evs::create_volume(&w.cloud, P, &body(10), None).unwrap();
    let b = format!(
        r#"{{"volumeAttachment":{{"volumeId":"{}"}}}}"#,
        creating.volume_ids[0]
    );
    assert_eq!(
        err_code(ecs::attach_volume(&w.cloud, P, S, b.as_bytes())),
        "Ecs.0103"
    );

    // A failed host attach fails the job and leaves the disk available.
    w.fx.fail_next_attach();
    let job = ecs::attach_volume(&w.cloud, P, S, attach.as_bytes()).unwrap();
    jobs::complete(&w.cloud, &job);
    assert_eq!(job_status(&w, &job), JobStatus::Fail);
    assert_eq!(status(&w, &id), "available");
    let view = jobs::view(&w.cloud.lock().state.jobs[&job]);
    assert_eq!(view["status"], "FAIL");
    assert!(view["fail_reason"].as_str().is_some());
}

#[test]
fn a_server_holds_at_most_24_disks() {
    let w = world();
    for i in 0..25 {
        let id = available_disk(&w);
        let attach = format!(r#"{{"volumeAttachment":{{"volumeId":"{id}"}}}}"#);
        let r = ecs::attach_volume(&w.cloud, P, S, attach.as_bytes());
        if i < 24 {
            jobs::complete(&w.cloud, &r.unwrap());
        } else {
            assert_eq!(err_code(r), "Ecs.0104");
        }
    }
    let devices = w.cloud.lock().state.devices_in_use(S);
    assert_eq!(devices.len(), 24);
    assert!(devices.contains(&"/dev/vdy".to_string()));
}

#[test]
fn reconcile_recreates_missing_loop_and_link() {
    let w = world();
    let id = available_disk(&w);
    let attach = format!(r#"{{"volumeAttachment":{{"volumeId":"{id}"}}}}"#);
    jobs::complete(
        &w.cloud,
        &ecs::attach_volume(&w.cloud, P, S, attach.as_bytes()).unwrap(),
    );
    w.cloud.cleanup_host();
    assert!(w.fx.host().loops.is_empty() && w.fx.host().links.is_empty());
    assert_eq!(status(&w, &id), "in-use", "cleanup keeps the cloud's view");
    // A restart over the same state re-creates both.
    let again = Cloud::new(w.cloud.cfg.clone(), Credentials::default(), w.fx.clone()).unwrap();
    again.reconcile_attachments().unwrap();
    let host = w.fx.host();
    assert_eq!(host.loops.len(), 1);
    assert_eq!(host.links.len(), 1);
    let dev = host.links[&again.link_path(&id)].clone();
    assert_eq!(
        again.lock().state.disks[&id]
            .attachment
            .as_ref()
            .unwrap()
            .loop_device,
        Some(dev)
    );
}

#[test]
fn listing_filters_and_pages() {
    use crate::evs_list::ListQuery;
    use std::collections::BTreeMap;
    let w = world();
    let ids: Vec<String> = (0..5).map(|_| available_disk(&w)).collect();
    let inner = w.cloud.lock();
    let q = |pairs: &[(&str, &str)]| {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListQuery::parse(&m)
    };
    let all = |q: ListQuery| {
        let (page, count, more) = q.apply(inner.state.disks.values()).unwrap();
        (
            page.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            count,
            more,
        )
    };
    let (page, count, more) = all(q(&[("limit", "2"), ("sort_dir", "asc")]).unwrap());
    assert_eq!((page, count, more), (ids[..2].to_vec(), 5, true));
    let (page, _, more) =
        all(q(&[("limit", "2"), ("sort_dir", "asc"), ("marker", &ids[3])]).unwrap());
    assert_eq!((page, more), (vec![ids[4].clone()], false));
    let list = format!("['{}','{}']", ids[1], ids[3]);
    let (page, count, _) = all(q(&[("ids", &list)]).unwrap());
    assert_eq!((page, count), (vec![ids[3].clone(), ids[1].clone()], 2));
    assert_eq!(all(q(&[("metadata", r#"{"pvc":"a"}"#)]).unwrap()).1, 5);
    assert_eq!(all(q(&[("metadata", r#"{"pvc":"b"}"#)]).unwrap()).1, 0);
    assert_eq!(all(q(&[("status", "in-use")]).unwrap()).1, 0);
    // `id` names one disk (it used to be ignored, listing them all).
    let (page, count, _) = all(q(&[("id", &ids[2])]).unwrap());
    assert_eq!((page, count), (vec![ids[2].clone()], 1));
    assert_eq!(all(q(&[("id", "no-such-disk")]).unwrap()).1, 0);
    assert_eq!(q(&[("limit", "0")]).unwrap_err().code(), "EVS.2001");
    assert!(q(&[("limit", "0")]).is_err());
    assert!(q(&[("limit", "1001")]).is_err());
    // Up to 60 ids, as the client's batched polls send them; one more is refused.
    let sixty = format!("[{}]", vec!["'x'"; 60].join(","));
    assert_eq!(all(q(&[("ids", &sixty)]).unwrap()).1, 0);
    let many = format!("[{}]", vec!["'x'"; 61].join(","));
    assert_eq!(q(&[("ids", &many)]).unwrap_err().code(), "EVS.2228");
}

/// ECS jobs have the shape of ECS's job API (the official SDK's `JobEntities`/`SubJob`): the
/// server, the sub-job count, sub-jobs naming the server; no disk id anywhere.
#[test]
fn ecs_jobs_have_the_ecs_shape() {
    let w = world();
    let id = available_disk(&w);
    let attach = format!(r#"{{"volumeAttachment":{{"volumeId":"{id}"}}}}"#);
    let job_id = ecs::attach_volume(&w.cloud, P, S, attach.as_bytes()).unwrap();
    let view = jobs::view(&w.cloud.lock().state.jobs[&job_id]);
    let e = &view["entities"];
    assert_eq!(e["server_id"], S);
    assert_eq!(e["sub_jobs_total"], 1);
    assert_eq!(e["sub_jobs"][0]["entities"]["server_id"], S);
    assert_eq!(e["sub_jobs"][0]["status"], "INIT");
    assert_eq!(e["sub_jobs"][0]["end_time"], "");
    let text = view.to_string();
    assert!(!text.contains("volume_id") && !text.contains(&id), "{text}");

    // A failed ECS job explains itself in the sub-job's `errorcode_message`.
    w.fx.fail_next_attach();
    jobs::complete(&w.cloud, &job_id);
    let view = jobs::view(&w.cloud.lock().state.jobs[&job_id]);
    let sub = &view["entities"]["sub_jobs"][0];
    assert_eq!(view["status"], "FAIL");
    assert_eq!(sub["status"], "FAIL");
    assert_eq!(sub["error_code"], "Ecs.0001");
    assert!(sub["entities"]["errorcode_message"].is_string(), "{sub}");

    // EVS jobs still name the disk.
    let c = evs::create_volume(&w.cloud, P, &body(10), None).unwrap();
    let view = jobs::view(&w.cloud.lock().state.jobs[&c.job_id]);
    assert_eq!(view["entities"]["volume_id"], c.volume_ids[0].as_str());
}

/// An extendVolume job reports the size the disk grows to, not the old one.
#[test]
fn extend_job_reports_the_new_size() {
    let w = world();
    let id = available_disk(&w);
    let job_id = evs::extend_volume(&w.cloud, P, &id, br#"{"os-extend":{"new_size":25}}"#).unwrap();
    let view = jobs::view(&w.cloud.lock().state.jobs[&job_id]);
    assert_eq!(view["entities"]["size"], 25);
}

/// Volume details carry the fields the official SDK's `VolumeDetail` models, typed as it says.
#[test]
fn volume_view_has_the_sdk_fields() {
    let w = world();
    let b = br#"{"volume":{"availability_zone":"emu-az1","volume_type":"GPSSD2","size":10,"iops":3000,"throughput":125}}"#;
    let c = evs::create_volume(&w.cloud, P, b, None).unwrap();
    let id = c.volume_ids[0].clone();
    let v = evs::view(&w.cloud.lock().state.disks[&id], "http://h");
    for key in [
        "os-vol-host-attr:host",
        "user_id",
        "enterprise_project_id",
        "serial_number",
    ] {
        assert!(v[key].is_string(), "{key}: {v}");
    }
    assert!(v["volume_image_metadata"].is_object(), "{v}");
    assert_eq!(v["serial_number"], &id[..20]);
    assert!(v["multiattach"].is_boolean() && v["encrypted"].is_boolean());
    // The SDK's Iops/Throughput models: {frozened, id, total_val}.
    assert_eq!(v["iops"]["total_val"], 3000);
    assert_eq!(v["iops"]["id"], id.as_str());
    assert_eq!(v["throughput"]["total_val"], 125);
    assert!(v["iops"].get("volume_id").is_none(), "{v}");
}

#[test]
fn credentials_rotate_on_reload_and_a_bad_file_keeps_the_old_ones() {
    let w = world();
    let file = w._dir.path().join("creds.json");
    std::fs::write(&file, r#"{"access_keys":[{"ak":"OLD","sk":"s1"}]}"#).unwrap();
    w.cloud.reload_credentials().unwrap();
    assert!(w.cloud.creds().secret_key("OLD").is_some());
    std::fs::write(&file, r#"{"access_keys":[{"ak":"NEW","sk":"s2"}]}"#).unwrap();
    w.cloud.reload_credentials().unwrap();
    assert!(w.cloud.creds().secret_key("OLD").is_none());
    assert!(w.cloud.creds().secret_key("NEW").is_some());
    std::fs::write(&file, "{broken").unwrap();
    assert!(w.cloud.reload_credentials().is_err());
    assert!(w.cloud.creds().secret_key("NEW").is_some());
}

/// A remote server is another machine of the zone: disks attach to it and detach from it as
/// the cloud sees it, with no loop device or link on this host, and its own 24-disk limit.
#[test]
fn remote_servers_take_disks_without_host_effects() {
    const R: &str = "7d0e4a1c-0b9f-4c55-8e21-5a6f3c2d9e10";
    let w = world_with(|c| c.remote_servers = vec![R.to_owned()]);
    let ids: Vec<String> = (0..25).map(|_| available_disk(&w)).collect();
    let attach = |id: &str| format!(r#"{{"volumeAttachment":{{"volumeId":"{id}"}}}}"#);
    for id in &ids[..24] {
        let job = ecs::attach_volume(&w.cloud, P, R, attach(id).as_bytes()).unwrap();
        jobs::complete(&w.cloud, &job);
        assert_eq!(job_status(&w, &job), JobStatus::Success);
        assert_eq!(status(&w, id), "in-use");
    }
    assert!(w.fx.host().loops.is_empty() && w.fx.host().links.is_empty());
    let att = w.cloud.lock().state.disks[&ids[0]]
        .attachment
        .clone()
        .unwrap();
    assert_eq!((att.server_id.as_str(), att.loop_device), (R, None));
    assert_eq!(
        err_code(ecs::attach_volume(
            &w.cloud,
            P,
            R,
            attach(&ids[24]).as_bytes()
        )),
        "Ecs.0104"
    );
    // This machine's server has slots of its own, and its attaches have effects.
    let job = ecs::attach_volume(&w.cloud, P, S, attach(&ids[24]).as_bytes()).unwrap();
    jobs::complete(&w.cloud, &job);
    assert_eq!(w.fx.host().loops.len(), 1);
    // Restarting re-creates this machine's attachments only.
    w.cloud.reconcile_attachments().unwrap();
    assert_eq!(w.fx.host().loops.len(), 1);

    let job = ecs::detach_volume(&w.cloud, P, R, &ids[0]).unwrap();
    jobs::complete(&w.cloud, &job);
    assert_eq!(job_status(&w, &job), JobStatus::Success);
    assert_eq!(status(&w, &ids[0]), "available");
    assert_eq!(w.fx.host().loops.len(), 1);
    assert_eq!(
        err_code(ecs::attach_volume(
            &w.cloud,
            P,
            "not-a-server",
            attach(&ids[0]).as_bytes()
        )),
        "Ecs.0114"
    );
}
