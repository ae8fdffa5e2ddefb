//! Unit tests of the SFS Turbo API logic and share state transitions, on the fake host.

use std::collections::HashMap;

use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::auth::Credentials;
use crate::cloud::Cloud;
use crate::config::DEFAULT_PROJECT_ID as P;
use crate::errors::ApiError;
use crate::sfs;
use crate::state::ShareOp;
use crate::tests::{World, world, world_with};

fn body_named(name: &str, size: u64) -> Vec<u8> {
    json!({"share": {
        "name": name, "share_proto": "NFS", "share_type": "STANDARD", "size": size,
        "availability_zone": "emu-az1", "vpc_id": "vpc-1", "subnet_id": "subnet-1",
        "security_group_id": "sg-1", "metadata": {"expand_type": "bandwidth"},
    }})
    .to_string()
    .into_bytes()
}

fn err_code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> String {
    r.unwrap_err().code().to_string()
}

fn get(w: &World, id: &str) -> Value {
    let inner = w.cloud.lock();
    sfs::view(&w.cloud, inner.state.project_share(P, id).expect("share"))
}

/// Creates a share and completes its creation.
fn available_share(w: &World, name: &str) -> String {
    let s = sfs::create_share(&w.cloud, P, &body_named(name, 500)).unwrap();
    sfs::complete(&w.cloud, &s.id);
    s.id
}

#[test]
fn create_is_100_then_200_with_a_directory_and_an_export_location() {
    let w = world();
    let s = sfs::create_share(&w.cloud, P, &body_named("share-a", 500)).unwrap();
    let v = get(&w, &s.id);
    assert_eq!(v["status"], "100");
    assert_eq!(v["action_progress"]["CREATING"], "50%");
    assert!(
        w.fx.host().share_dirs.is_empty(),
        "no directory before completion"
    );
    sfs::complete(&w.cloud, &s.id);
    let v = get(&w, &s.id);
    assert_eq!(v["status"], "200");
    assert!(v.get("sub_status").is_none(), "{v}");
    assert!(v.get("action_progress").is_none(), "{v}");
    assert_eq!(v["size"], "500.00");
    assert_eq!(v["share_proto"], "NFS");
    assert_eq!(v["expand_type"], "bandwidth");
    let dir = w.cloud.share_dir(&s.id);
    assert!(w.fx.host().share_dirs.contains(&dir));
    assert_eq!(
        v["export_location"],
        format!("127.0.0.1:{}", dir.display()),
        "by default clients mount the export root's own path"
    );
    // The state on disk matches memory.
    let again = Cloud::new(w.cloud.cfg.clone(), Credentials::default(), w.fx.clone()).unwrap();
    assert_eq!(again.lock().state, w.cloud.lock().state);
}

#[test]
fn export_location_uses_the_configured_address_and_path() {
    let w = world_with(|c| {
        c.nfs_export_address = "10.1.2.3".into();
        c.nfs_export_path = Some("/sfs-turbo/".into());
    });
    let id = available_share(&w, "share-a");
    assert_eq!(
        get(&w, &id)["export_location"],
        format!("10.1.2.3:/sfs-turbo/{id}")
    );
}

#[test]
fn create_validation_rejects_bad_requests_with_sfs_codes() {
    let w = world();
    let base = |edit: &dyn Fn(&mut Value)| {
        let mut b: Value = serde_json::from_slice(&body_named("share-a", 500)).unwrap();
        edit(&mut b["share"]);
        b.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (base(&|s| s["name"] = json!("abc")), "SFS.TURBO.0003"),
        (base(&|s| s["name"] = json!("1abc")), "SFS.TURBO.0003"),
        (base(&|s| s["name"] = json!("ab/../cd")), "SFS.TURBO.0003"),
        (
            base(&|s| s["name"] = json!("a".repeat(65))),
            "SFS.TURBO.0003",
        ),
        (base(&|s| s["name"] = json!(null)), "SFS.TURBO.0001"),
        (
            base(&|s| s["share_proto"] = json!("CIFS")),
            "SFS.TURBO.0001",
        ),
        (base(&|s| s["share_type"] = json!("HPC")), "SFS.TURBO.0007"),
        (base(&|s| s["size"] = json!(499)), "SFS.TURBO.0008"),
        (base(&|s| s["size"] = json!(32769)), "SFS.TURBO.0008"),
        (
            base(&|s| s["availability_zone"] = json!("mars-1")),
            "SFS.TURBO.0001",
        ),
        (base(&|s| s["vpc_id"] = json!("")), "SFS.TURBO.0004"),
        (base(&|s| s["subnet_id"] = json!(null)), "SFS.TURBO.0006"),
        (
            base(&|s| s["security_group_id"] = json!(null)),
            "SFS.TURBO.0001",
        ),
        (r#"{"share":"#.to_string(), "SFS.TURBO.0001"),
    ];
    for (b, code) in &cases {
        let got = err_code(sfs::create_share(&w.cloud, P, b.as_bytes()));
        assert_eq!(&got, code, "body {b}");
    }
    assert!(w.cloud.lock().state.shares.is_empty());
    // The boundaries themselves are accepted.
    for (i, size) in [500, 32768].into_iter().enumerate() {
        sfs::create_share(&w.cloud, P, &body_named(&format!("edge{i}-a"), size)).unwrap();
    }
    sfs::create_share(
        &w.cloud,
        P,
        &body_named(&format!("a{}", "b".repeat(63)), 500),
    )
    .unwrap();
}

#[test]
fn another_project_is_a_parameter_error() {
    let w = world();
    let other = "ffffffffffffffffffffffffffffffff";
    assert_eq!(
        err_code(sfs::create_share(
            &w.cloud,
            other,
            &body_named("share-a", 500)
        )),
        "SFS.TURBO.0001"
    );
}

#[test]
fn a_taken_name_is_409_and_the_quota_is_enforced() {
    let w = world_with(|c| c.max_shares = Some(2));
    available_share(&w, "share-a");
    let e = sfs::create_share(&w.cloud, P, &body_named("share-a", 600)).unwrap_err();
    assert_eq!(e.code(), "SFS.TURBO.0009");
    assert!(
        matches!(e, ApiError::Sfs { status, .. } if status == 409),
        "{e:?}"
    );
    sfs::create_share(&w.cloud, P, &body_named("share-b", 500)).unwrap();
    assert_eq!(
        err_code(sfs::create_share(&w.cloud, P, &body_named("share-c", 500))),
        "SFS.TURBO.0010"
    );
}

#[test]
fn concurrent_creates_of_one_name_make_one_share() {
    let w = world();
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    sfs::create_share(&w.cloud, P, &body_named("same-name", 500))
                        .map(|share| share.id)
                        .map_err(|e| e.code().to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|c| c == "SFS.TURBO.0009"),
        "{results:?}"
    );
    assert_eq!(w.cloud.lock().state.shares.len(), 1);
}

#[test]
fn extend_needs_an_available_share_and_the_minimum_step() {
    let w = world();
    let creating = sfs::create_share(&w.cloud, P, &body_named("share-a", 500)).unwrap();
    let grow = |n: u64| json!({"extend": {"new_size": n}}).to_string().into_bytes();
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, &creating.id, &grow(600))),
        "SFS.TURBO.0011"
    );
    sfs::complete(&w.cloud, &creating.id);
    let id = creating.id;
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, &id, &grow(599))),
        "SFS.TURBO.0008"
    );
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, &id, &grow(400))),
        "SFS.TURBO.0008"
    );
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, &id, &grow(32769))),
        "SFS.TURBO.0008"
    );
    assert_eq!(
        err_code(sfs::extend_share(
            &w.cloud,
            P,
            &id,
            br#"{"shrink":{"new_size":1}}"#
        )),
        "SFS.TURBO.0001"
    );
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, "nope", &grow(600))),
        "SFS.TURBO.0002"
    );
    sfs::extend_share(&w.cloud, P, &id, &grow(600)).unwrap();
    let v = get(&w, &id);
    assert_eq!(
        (v["status"].as_str(), v["sub_status"].as_str()),
        (Some("200"), Some("121"))
    );
    assert_eq!(
        v["size"], "500.00",
        "the new size shows once the expansion is done"
    );
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, &id, &grow(800))),
        "SFS.TURBO.0011"
    );
    assert_eq!(
        err_code(sfs::delete_share(&w.cloud, P, &id)),
        "SFS.TURBO.0011"
    );
    sfs::complete(&w.cloud, &id);
    let v = get(&w, &id);
    assert_eq!(
        (v["size"].as_str(), v["sub_status"].as_str()),
        (Some("600.00"), Some("221"))
    );
    sfs::extend_share(&w.cloud, P, &id, &grow(700)).unwrap();
}

#[test]
fn delete_is_accepted_again_while_running_then_the_share_and_its_directory_are_gone() {
    let w = world();
    assert_eq!(
        err_code(sfs::delete_share(&w.cloud, P, "nope")),
        "SFS.TURBO.0002"
    );
    let creating = sfs::create_share(&w.cloud, P, &body_named("share-a", 500)).unwrap();
    assert_eq!(
        err_code(sfs::delete_share(&w.cloud, P, &creating.id)),
        "SFS.TURBO.0011"
    );
    sfs::complete(&w.cloud, &creating.id);
    let id = creating.id;
    let dir = w.cloud.share_dir(&id);
    assert!(sfs::delete_share(&w.cloud, P, &id).unwrap());
    assert!(
        !sfs::delete_share(&w.cloud, P, &id).unwrap(),
        "a retried delete starts nothing"
    );
    assert_eq!(
        get(&w, &id)["status"],
        "200",
        "visible until the deletion completes"
    );
    sfs::complete(&w.cloud, &id);
    assert!(w.cloud.lock().state.shares.is_empty());
    assert!(!w.fx.host().share_dirs.contains(&dir));
    assert_eq!(
        err_code(sfs::delete_share(&w.cloud, P, &id)),
        "SFS.TURBO.0002"
    );
    // The name is free again.
    sfs::create_share(&w.cloud, P, &body_named("share-a", 500)).unwrap();
}

#[test]
fn an_injected_creation_failure_is_303_and_the_share_can_be_deleted() {
    let w = world();
    w.cloud.faults.lock().unwrap().share_create_fail_rate = 1.0;
    let s = sfs::create_share(&w.cloud, P, &body_named("share-a", 500)).unwrap();
    sfs::complete(&w.cloud, &s.id);
    assert_eq!(get(&w, &s.id)["status"], "303");
    assert!(w.fx.host().share_dirs.is_empty());
    let grow = json!({"extend": {"new_size": 600}})
        .to_string()
        .into_bytes();
    assert_eq!(
        err_code(sfs::extend_share(&w.cloud, P, &s.id, &grow)),
        "SFS.TURBO.0011"
    );
    assert!(sfs::delete_share(&w.cloud, P, &s.id).unwrap());
    sfs::complete(&w.cloud, &s.id);
    assert!(w.cloud.lock().state.shares.is_empty());
}

#[test]
fn a_pending_operation_survives_a_restart_and_completes_after_it() {
    let w = world();
    let s = sfs::create_share(&w.cloud, P, &body_named("share-a", 500)).unwrap();
    let again = Cloud::new(w.cloud.cfg.clone(), Credentials::default(), w.fx.clone()).unwrap();
    assert_eq!(
        again.lock().state.shares[&s.id].pending,
        Some(ShareOp::Create)
    );
    sfs::complete(&again, &s.id);
    assert_eq!(again.lock().state.shares[&s.id].status, "200");
    assert_eq!(again.lock().state.shares[&s.id].pending, None);
}

#[test]
fn list_pages_by_limit_and_offset_with_the_total_count() {
    let w = world();
    let ids: Vec<String> = (0..3)
        .map(|i| available_share(&w, &format!("share-{i}")))
        .collect();
    let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let page = |pairs: &[(&str, &str)]| -> Vec<String> {
        let v = sfs::list_shares(&w.cloud, P, &q(pairs)).unwrap();
        assert_eq!(v["count"], 3, "{v}");
        v["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(page(&[]), ids);
    assert_eq!(page(&[("limit", "2")]), ids[..2]);
    assert_eq!(page(&[("limit", "2"), ("offset", "2")]), ids[2..]);
    assert!(page(&[("offset", "5")]).is_empty());
    for bad in [("limit", "0"), ("limit", "-1"), ("offset", "x")] {
        assert_eq!(
            err_code(sfs::list_shares(&w.cloud, P, &q(&[bad]))),
            "SFS.TURBO.0001",
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn sfs_errors_have_the_errcode_errmsg_body() {
    let resp =
        ApiError::sfs(axum::http::StatusCode::NOT_FOUND, "SFS.TURBO.0002", "gone").into_response();
    assert_eq!(resp.status(), 404);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v, json!({"errCode": "SFS.TURBO.0002", "errMsg": "gone"}));
}
