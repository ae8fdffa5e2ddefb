//! Unit tests of EVS snapshots on the fake host: statuses, copies, restores, the rules that
//! refuse, paging.

use std::collections::BTreeMap;

use crate::config::DEFAULT_PROJECT_ID as P;
use crate::errors::ApiError;
use crate::evs_snapshots::{self as snaps, ListQuery};
use crate::tests::{World, world, world_with};
use crate::{evs, jobs};

fn disk_body(size: u64, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"volume":{{"availability_zone":"emu-az1","volume_type":"SSD","name":"d","size":{size}{extra}}}}}"#
    )
    .into_bytes()
}

fn disk(w: &World, size: u64, extra: &str) -> Result<String, ApiError> {
    let c = evs::create_volume(&w.cloud, P, &disk_body(size, extra), None)?;
    jobs::complete(&w.cloud, &c.job_id);
    Ok(c.volume_ids[0].clone())
}

fn snap_body(volume: &str, extra: &str) -> Vec<u8> {
    format!(r#"{{"snapshot":{{"volume_id":"{volume}","name":"s"{extra}}}}}"#).into_bytes()
}

/// Takes a snapshot and completes it.
fn snapshot(w: &World, volume: &str) -> String {
    let s = snaps::create_snapshot(&w.cloud, P, &snap_body(volume, "")).unwrap();
    snaps::complete(&w.cloud, &s.id);
    s.id
}

fn snap_status(w: &World, id: &str) -> Option<String> {
    w.cloud
        .lock()
        .state
        .snapshots
        .get(id)
        .map(|s| s.status.clone())
}

fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> String {
    r.unwrap_err().code().to_string()
}

#[test]
fn a_snapshot_is_creating_then_available_with_a_copy_of_the_image() {
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    let s = snaps::create_snapshot(&w.cloud, P, &snap_body(&d, "")).unwrap();
    assert_eq!(s.status, "creating");
    assert_eq!((s.size, s.volume_type.as_str()), (10, "SSD"));
    assert!(w.fx.host().copies.is_empty(), "no copy before completion");
    snaps::complete(&w.cloud, &s.id);
    assert_eq!(snap_status(&w, &s.id).as_deref(), Some("available"));
    let host = w.fx.host();
    assert_eq!(
        host.copies,
        [(w.cloud.image_path(&d), w.cloud.snapshot_path(&s.id))]
    );
    assert_eq!(host.images[&w.cloud.snapshot_path(&s.id)], 10 << 30);
}

#[test]
fn a_failed_copy_leaves_the_snapshot_in_error_and_deletable() {
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    w.fx.fail_next_copy();
    let s = snaps::create_snapshot(&w.cloud, P, &snap_body(&d, "")).unwrap();
    snaps::complete(&w.cloud, &s.id);
    assert_eq!(snap_status(&w, &s.id).as_deref(), Some("error"));
    snaps::delete_snapshot(&w.cloud, P, &s.id).unwrap();
    snaps::complete(&w.cloud, &s.id);
    assert_eq!(snap_status(&w, &s.id), None);
}

#[test]
fn create_rules() {
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    assert_eq!(
        code(snaps::create_snapshot(&w.cloud, P, &snap_body("nope", ""))),
        "EVS.5404"
    );
    assert_eq!(
        code(snaps::create_snapshot(&w.cloud, P, b"{\"snapshot\":{}}")),
        "EVS.5400"
    );
    assert_eq!(
        code(snaps::create_snapshot(
            &w.cloud,
            "other",
            &snap_body(&d, "")
        )),
        "EVS.0001"
    );
    // An attached disk needs force.
    w.cloud.lock().state.disks.get_mut(&d).unwrap().status = "in-use".into();
    assert_eq!(
        code(snaps::create_snapshot(&w.cloud, P, &snap_body(&d, ""))),
        "EVS.5400"
    );
    snaps::create_snapshot(&w.cloud, P, &snap_body(&d, r#","force":true"#)).unwrap();
}

#[test]
fn snapshot_quota() {
    let w = world_with(|c| c.max_snapshots = Some(1));
    let d = disk(&w, 10, "").unwrap();
    snapshot(&w, &d);
    assert_eq!(
        code(snaps::create_snapshot(&w.cloud, P, &snap_body(&d, ""))),
        "EVS.5413"
    );
}

#[test]
fn delete_only_from_available_or_error_and_missing_is_404() {
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    let s = snaps::create_snapshot(&w.cloud, P, &snap_body(&d, "")).unwrap();
    assert_eq!(code(snaps::delete_snapshot(&w.cloud, P, &s.id)), "EVS.1047");
    snaps::complete(&w.cloud, &s.id);
    snaps::delete_snapshot(&w.cloud, P, &s.id).unwrap();
    assert_eq!(snap_status(&w, &s.id).as_deref(), Some("deleting"));
    assert_eq!(code(snaps::delete_snapshot(&w.cloud, P, &s.id)), "EVS.1047");
    snaps::complete(&w.cloud, &s.id);
    assert_eq!(snap_status(&w, &s.id), None);
    assert!(
        !w.fx
            .host()
            .images
            .contains_key(&w.cloud.snapshot_path(&s.id))
    );
    let gone = snaps::delete_snapshot(&w.cloud, P, &s.id).unwrap_err();
    assert!(matches!(gone, ApiError::ItemNotFound { .. }), "{gone:?}");
    assert_eq!(gone.code(), "EVS.5404");
}

#[test]
fn a_disk_with_snapshots_cannot_be_deleted_until_they_are_gone() {
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    let s = snapshot(&w, &d);
    let err = evs::delete_volume(&w.cloud, P, &d).unwrap_err();
    assert_eq!(err.code(), "EVS.5400");
    assert!(err.to_string().contains("dependent snapshots"), "{err}");
    assert_eq!(w.cloud.lock().state.disks[&d].status, "available");
    snaps::delete_snapshot(&w.cloud, P, &s).unwrap();
    // Still there while it is being deleted.
    assert_eq!(code(evs::delete_volume(&w.cloud, P, &d)), "EVS.5400");
    snaps::complete(&w.cloud, &s);
    evs::delete_volume(&w.cloud, P, &d).unwrap();
}

#[test]
fn a_disk_from_a_snapshot_starts_with_its_content_grown_to_size() {
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    let s = snapshot(&w, &d);
    let r = disk(&w, 20, &format!(r#","snapshot_id":"{s}""#)).unwrap();
    let host = w.fx.host();
    assert_eq!(
        host.copies.last().unwrap(),
        &(w.cloud.snapshot_path(&s), w.cloud.image_path(&r))
    );
    assert_eq!(host.images[&w.cloud.image_path(&r)], 20 << 30);
    let state = &w.cloud.lock().state;
    assert_eq!(state.disks[&r].snapshot_id.as_deref(), Some(s.as_str()));
    assert_eq!(state.disks[&r].status, "available");
}

#[test]
fn a_disk_from_a_snapshot_follows_the_rules() {
    let w = world();
    let d = disk(&w, 20, "").unwrap();
    let creating = snaps::create_snapshot(&w.cloud, P, &snap_body(&d, "")).unwrap();
    let from = |snap: &str| format!(r#","snapshot_id":"{snap}""#);
    let try_disk = |size: u64, extra: &str| {
        evs::create_volume(&w.cloud, P, &disk_body(size, extra), None).map(|_| ())
    };
    assert_eq!(code(try_disk(20, &from(&creating.id))), "EVS.2043");
    snaps::complete(&w.cloud, &creating.id);
    let s = creating.id;
    assert_eq!(code(try_disk(20, &from("missing"))), "EVS.2045");
    assert_eq!(code(try_disk(10, &from(&s))), "EVS.1010");
    let other_type = format!(
        r#"{{"volume":{{"availability_zone":"emu-az1","volume_type":"SAS","size":20,"snapshot_id":"{s}"}}}}"#
    );
    assert_eq!(
        code(evs::create_volume(&w.cloud, P, other_type.as_bytes(), None)),
        "EVS.2096"
    );
    let other_zone = format!(
        r#"{{"volume":{{"availability_zone":"emu-az2","volume_type":"SSD","size":20,"snapshot_id":"{s}"}}}}"#
    );
    assert_eq!(
        code(evs::create_volume(&w.cloud, P, other_zone.as_bytes(), None)),
        "EVS.2054"
    );
    let scsi = format!(r#"{},"metadata":{{"hw:passthrough":"true"}}"#, from(&s));
    assert_eq!(code(try_disk(20, &scsi)), "EVS.1043");
    try_disk(20, &from(&s)).unwrap();
}

#[test]
fn listing_filters_and_pages_newest_first() {
    let w = world();
    let a = disk(&w, 10, "").unwrap();
    let b = disk(&w, 10, "").unwrap();
    let of_a: Vec<String> = (0..5).map(|_| snapshot(&w, &a)).collect();
    let of_b = snapshot(&w, &b);
    let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let list = |pairs: &[(&str, &str)]| {
        let state = &w.cloud.lock().state;
        let (page, count, more) = ListQuery::parse(&params(pairs))
            .unwrap()
            .apply(state.snapshots.values())
            .unwrap();
        (
            page.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            count,
            more,
        )
    };
    let (all, count, more) = list(&[]);
    assert_eq!((all.len(), count, more), (6, 6, false));
    assert_eq!(all[0], of_b, "newest first");
    let (ids, count, _) = list(&[("volume_id", &a)]);
    assert_eq!(count, 5);
    assert_eq!(ids, of_a.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(list(&[("id", &of_b)]).0, vec![of_b.clone()]);
    // Pages by marker: every snapshot once, in order.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut p = vec![("limit", "2")];
        if let Some(m) = &marker {
            p.push(("marker", m));
        }
        let (page, _, more) = list(&p);
        seen.extend(page.clone());
        if !more {
            break;
        }
        marker = page.last().cloned();
    }
    assert_eq!(seen, all);
    for bad in [
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "x"),
        ("offset", "-1"),
    ] {
        assert!(ListQuery::parse(&params(&[bad])).is_err(), "{bad:?}");
    }
    let state = &w.cloud.lock().state;
    let err = ListQuery::parse(&params(&[("marker", "nope")]))
        .unwrap()
        .apply(state.snapshots.values())
        .unwrap_err();
    assert_eq!(err.code(), "EVS.1024");
}

#[test]
fn the_real_copy_keeps_content_and_holes_and_refuses_to_overwrite() {
    use crate::effects::{Effects, LinuxEffects};
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let fx = LinuxEffects;
    fx.create_image(&src, 1 << 30).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.seek(SeekFrom::Start(512 << 20)).unwrap();
    f.write_all(b"snapshot me").unwrap();
    drop(f);
    fx.copy_image(&src, &dst).unwrap();
    let copy = std::fs::read(&dst).unwrap();
    assert_eq!(copy.len(), 1 << 30);
    assert_eq!(&copy[512 << 20..(512 << 20) + 11], b"snapshot me");
    // Sparse (or shared): far fewer blocks than the nominal gigabyte.
    assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 64 << 20);
    assert!(fx.copy_image(&src, &dst).is_err());
    assert!(
        fx.copy_image(&dir.path().join("missing"), &dir.path().join("c"))
            .is_err()
    );
    assert!(!dir.path().join("c").exists());
}

#[test]
fn retype_and_qos_change_the_disk_when_their_job_completes() {
    use crate::evs_modify::{modify_qos, retype_volume};
    let w = world();
    let d = disk(&w, 10, "").unwrap();
    let retype = |t: &str| format!(r#"{{"os-retype":{{"new_type":"{t}"}}}}"#).into_bytes();
    let job = retype_volume(&w.cloud, P, &d, &retype("ESSD")).unwrap();
    assert_eq!(w.cloud.lock().state.disks[&d].volume_type, "SSD");
    jobs::complete(&w.cloud, &job);
    assert_eq!(w.cloud.lock().state.disks[&d].volume_type, "ESSD");
    assert_eq!(
        code(retype_volume(&w.cloud, P, &d, &retype("ESSD"))),
        "EVS.2088"
    );
    assert_eq!(
        code(retype_volume(&w.cloud, P, &d, &retype("SAS"))),
        "EVS.2087"
    );
    assert_eq!(
        code(retype_volume(&w.cloud, P, &d, &retype("NVME"))),
        "EVS.1020"
    );
    assert_eq!(
        code(retype_volume(&w.cloud, P, &d, &retype("GPSSD2"))),
        "EVS.2088"
    );
    assert_eq!(
        code(retype_volume(&w.cloud, P, "nope", &retype("SSD"))),
        "EVS.5404"
    );
    let to_gp2 = br#"{"os-retype":{"new_type":"GPSSD2","iops":3000,"throughput":125}}"#;
    let job = retype_volume(&w.cloud, P, &d, to_gp2).unwrap();
    // Not GPSSD2 until the job completes: no QoS to change yet.
    let qos = br#"{"qos_modify":{"iops":5000,"throughput":250}}"#;
    assert_eq!(code(modify_qos(&w.cloud, P, &d, qos)), "EVS.2088");
    jobs::complete(&w.cloud, &job);
    let job = modify_qos(&w.cloud, P, &d, qos).unwrap();
    jobs::complete(&w.cloud, &job);
    let state = &w.cloud.lock().state;
    let disk = &state.disks[&d];
    assert_eq!(
        (disk.volume_type.as_str(), disk.iops, disk.throughput),
        ("GPSSD2", Some(5000), Some(250))
    );
}
