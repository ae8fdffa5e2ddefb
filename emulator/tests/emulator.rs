//! End-to-end tests against the real `everest-emulator` binary on loopback.

mod common;

use std::path::Path;

use common::{Api, PROJECT, SERVER, World, block_size, can_use_loop_devices};
use serde_json::{Value, json};

const GIB: u64 = 1024 * 1024 * 1024;

async fn create_disk(api: &Api, size: u64) -> String {
    let (code, body) = api
        .call(
            "POST",
            &format!("/v2.1/{PROJECT}/cloudvolumes"),
            Some(json!({"volume": {"availability_zone": "emu-az1", "volume_type": "SSD", "name": "it", "size": size}})),
        )
        .await;
    assert_eq!(code, 200, "create: {body}");
    let id = body["volume_ids"][0]
        .as_str()
        .expect("volume id")
        .to_string();
    let job = api.wait_job(body["job_id"].as_str().expect("job id")).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["entities"]["volume_id"], id.as_str());
    id
}

async fn attach(api: &Api, id: &str) -> Value {
    let (code, body) = api
        .call(
            "POST",
            &format!("/v1/{PROJECT}/cloudservers/{SERVER}/attachvolume"),
            Some(json!({"volumeAttachment": {"volumeId": id}})),
        )
        .await;
    assert_eq!(code, 200, "attach: {body}");
    api.wait_job(body["job_id"].as_str().expect("job id")).await
}

fn link_target(world: &World, id: &str) -> Option<String> {
    let link = world.by_id_dir().join(format!("virtio-{}", &id[..20]));
    std::fs::read_link(link)
        .ok()
        .map(|p| p.display().to_string())
}

#[tokio::test]
async fn full_lifecycle_with_real_loop_devices() {
    if !can_use_loop_devices() {
        return;
    }
    let mut world = World::new();
    world.start(&["--cleanup-on-exit"]);
    let api = world.api();

    let id = create_disk(&api, 10).await;
    let (code, vol) = api.volume(&id).await;
    assert_eq!(code, 200);
    let v = &vol["volume"];
    assert_eq!(
        (v["status"].as_str(), v["size"].as_u64()),
        (Some("available"), Some(10))
    );
    assert_eq!(v["service_type"], "EVS");
    let image = world.state_dir().join("disks").join(format!("{id}.img"));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 10 * GIB);

    let job = attach(&api, &id).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let (_, vol) = api.volume(&id).await;
    assert_eq!(vol["volume"]["status"], "in-use");
    assert_eq!(vol["volume"]["attachments"][0]["server_id"], SERVER);
    assert_eq!(vol["volume"]["attachments"][0]["device"], "/dev/vdb");

    // The server as Nova (v2.1) and as ECS's own API (v1) describe it: Nova's
    // delete_on_termination is a JSON boolean, ECS v1's a string.
    let (code, nova) = api
        .call("GET", &format!("/v2.1/{PROJECT}/servers/{SERVER}"), None)
        .await;
    assert_eq!(code, 200, "{nova}");
    let attached = &nova["server"]["os-extended-volumes:volumes_attached"][0];
    assert_eq!(
        (&attached["id"], &attached["delete_on_termination"]),
        (&json!(id), &json!(false))
    );
    let (code, v1) = api
        .call("GET", &format!("/v1/{PROJECT}/cloudservers/{SERVER}"), None)
        .await;
    assert_eq!(code, 200, "{v1}");
    let attached = &v1["server"]["os-extended-volumes:volumes_attached"][0];
    assert_eq!(attached["delete_on_termination"], "false");
    assert_eq!(attached["device"], "/dev/vdb");
    let (code, list) = api
        .call(
            "GET",
            &format!("/v1/{PROJECT}/cloudservers/{SERVER}/os-volume_attachments"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["volumeAttachments"][0]["volumeId"], id.as_str());
    let (code, one) = api
        .call(
            "GET",
            &format!("/v1/{PROJECT}/cloudservers/{SERVER}/block_device/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["volumeAttachment"]["device"], "/dev/vdb");
    assert_eq!(one["volumeAttachment"]["bus"], "virtio");
    let (code, none) = api
        .call(
            "GET",
            &format!("/v1/{PROJECT}/cloudservers/{SERVER}/block_device/not-attached"),
            None,
        )
        .await;
    assert_eq!(
        (code, none["error"]["code"].as_str()),
        (404, Some("Ecs.0111"))
    );
    let dev = link_target(&world, &id).expect("by-id link exists");
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    assert_eq!(block_size(&dev), 10 * GIB);

    let (code, body) = api
        .call(
            "POST",
            &format!("/v2.1/{PROJECT}/cloudvolumes/{id}/action"),
            Some(json!({"os-extend": {"new_size": 12}})),
        )
        .await;
    assert_eq!(code, 202, "extend: {body}");
    let job = api.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(block_size(&dev), 12 * GIB, "the loop device grew");
    let (_, vol) = api.volume(&id).await;
    assert_eq!(
        (
            vol["volume"]["status"].as_str(),
            vol["volume"]["size"].as_u64()
        ),
        (Some("in-use"), Some(12))
    );

    let (code, body) = api
        .call(
            "DELETE",
            &format!("/v1/{PROJECT}/cloudservers/{SERVER}/detachvolume/{id}?delete_flag=0"),
            None,
        )
        .await;
    assert_eq!(code, 200, "detach: {body}");
    let job = api.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert!(link_target(&world, &id).is_none(), "link removed");
    assert!(world.loops().is_empty(), "loop device detached");

    let (code, body) = api
        .call("DELETE", &format!("/v2/{PROJECT}/cloudvolumes/{id}"), None)
        .await;
    assert_eq!(code, 200, "delete: {body}");
    let job = api.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert!(!image.exists(), "image removed");
    let (code, body) = api.volume(&id).await;
    assert_eq!(code, 404);
    // EVS sends its service code as a string (its API reference types `code` as String).
    assert_eq!(body["itemNotFound"]["code"], "EVS.5404");
}

/// Every response carries `X-Request-Id` (the official SDKs read the request id only from it),
/// and a gateway error body repeats the same id.
#[tokio::test]
async fn every_response_carries_its_request_id() {
    let mut world = World::new();
    world.start(&[]);
    let client = reqwest::Client::new();
    let base = format!("http://{}", world.addr);
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let health = client
        .get(format!("{base}/_emulator/health"))
        .send()
        .await
        .unwrap();
    let first = id_of(&health);
    assert_eq!(first.len(), 32, "{first:?}");
    let unsigned = client
        .get(format!("{base}/v2/{PROJECT}/cloudvolumes/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let header = id_of(&unsigned);
    let body: Value = unsigned.json().await.unwrap();
    assert_eq!(body["error_code"], "APIGW.0301");
    assert_eq!(body["request_id"], header.as_str());
    assert_ne!(header, first, "each response has its own id");
    let (code, _) = world.api().volume("missing").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn restart_keeps_disks_and_attachments() {
    if !can_use_loop_devices() {
        return;
    }
    let mut world = World::new();
    world.start(&["--cleanup-on-exit"]);
    let id = create_disk(&world.api(), 10).await;
    assert_eq!(attach(&world.api(), &id).await["status"], "SUCCESS");
    let dev = link_target(&world, &id).expect("link");

    // A crash leaves the loop device; the restarted emulator adopts it.
    world.stop("-KILL");
    world.start(&["--cleanup-on-exit"]);
    let (code, vol) = world.api().volume(&id).await;
    assert_eq!(code, 200);
    assert_eq!(vol["volume"]["status"], "in-use");
    assert_eq!(link_target(&world, &id).as_deref(), Some(dev.as_str()));
    assert_eq!(world.loops(), vec![dev.clone()]);

    // A clean stop with --cleanup-on-exit removes host effects; a restart re-creates them.
    world.stop("-TERM");
    assert!(
        world.loops().is_empty(),
        "cleanup-on-exit detached the loop device"
    );
    assert!(link_target(&world, &id).is_none());
    world.start(&["--cleanup-on-exit"]);
    let (_, vol) = world.api().volume(&id).await;
    assert_eq!(vol["volume"]["status"], "in-use");
    let dev = link_target(&world, &id).expect("link re-created");
    assert_eq!(world.loops(), vec![dev.clone()]);
    assert_eq!(block_size(&dev), 10 * GIB);
}

#[tokio::test]
async fn injected_errors_have_no_side_effects() {
    let mut world = World::new();
    world.start(&["--fault-error-rate", "1.0"]);
    let api = world.api();
    let create =
        json!({"volume": {"availability_zone": "emu-az1", "volume_type": "SSD", "size": 10}});
    let (code, body) = api
        .call(
            "POST",
            &format!("/v2.1/{PROJECT}/cloudvolumes"),
            Some(create.clone()),
        )
        .await;
    assert_eq!(code, 500);
    assert_eq!(body["error"]["code"], "EVS.5500");

    // Metadata and the control API are never faulted.
    let meta: Value = reqwest::get(format!("{}/openstack/latest/meta_data.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["uuid"], SERVER);
    let client = reqwest::Client::new();
    // PUT /_emulator/faults with these rates and no delay; answers the status code.
    let set_faults = |error_rate: f64, throttle_rate: f64| {
        let req = client
            .put(format!("{}/_emulator/faults", api.base))
            .json(&json!({"error_rate": error_rate, "throttle_rate": throttle_rate, "delay_ms": 0}))
            .send();
        async move { req.await.expect("PUT /_emulator/faults").status() }
    };
    assert_eq!(set_faults(0.0, 0.0).await, 200);

    let (code, body) = api
        .call("GET", &format!("/v2/{PROJECT}/cloudvolumes/detail"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["count"], 0, "the failed create made no disk");
    let images = std::fs::read_dir(world.state_dir().join("disks"))
        .unwrap()
        .count();
    assert_eq!(images, 0);

    assert_eq!(set_faults(0.0, 1.0).await, 200);
    let (code, body) = api
        .call("GET", &format!("/v2/{PROJECT}/cloudvolumes/detail"), None)
        .await;
    assert_eq!(code, 429);
    assert_eq!(body["error_code"], "APIGW.0308");
    assert_eq!(set_faults(2.0, 0.0).await, 400);
}

#[tokio::test]
async fn auth_rejects_bad_signatures_and_accepts_iam_tokens() {
    let mut world = World::new();
    world.start(&[]);
    let api = world.api();
    let url = format!("{}/v2/{PROJECT}/cloudvolumes/detail", api.base);

    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_code"], "APIGW.0301");
    assert!(body["request_id"].is_string());

    // A signature over a different query does not verify.
    let (code, _) = api
        .call_with(
            "GET",
            &format!("/v2/{PROJECT}/cloudvolumes/detail?limit=5"),
            None,
            &[],
        )
        .await;
    assert_eq!(code, 200);
    let forged = reqwest::Client::new()
        .get(format!("{url}?limit=6"))
        .header(
            "x-sdk-date",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        )
        .header(
            "authorization",
            format!(
                "SDK-HMAC-SHA256 Access={}, SignedHeaders=x-sdk-date, Signature={}",
                common::AK,
                "0".repeat(64)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let token_req = |password: &str| {
        json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": "emu-user", "password": password, "domain": {"name": "emu-domain"}}}},
            "scope": {"project": {"id": PROJECT}},
        }})
    };
    let client = reqwest::Client::new();
    let bad = client
        .post(format!("{}/v3/auth/tokens", api.base))
        .json(&token_req("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let ok = client
        .post(format!("{}/v3/auth/tokens", api.base))
        .json(&token_req("emu-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let token = ok.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = ok.json().await.unwrap();
    assert!(body["token"]["expires_at"].is_string());

    let mut with_token = world.api();
    with_token.token = Some(token);
    let (code, body) = with_token
        .call("GET", &format!("/v2/{PROJECT}/cloudvolumes/detail"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    with_token.token = Some("MIInot-a-token".into());
    let (code, _) = with_token
        .call("GET", &format!("/v2/{PROJECT}/cloudvolumes/detail"), None)
        .await;
    assert_eq!(code, 401);

    // The state file never holds a usable token.
    let state = std::fs::read_to_string(Path::new(&world.state_dir()).join("state.json")).unwrap();
    assert!(!state.contains("MII"));
}
