//! SFS Turbo end to end: the real emulator runs inside the network namespace of a real
//! nfs-ganesha (testsupport's `NfsServer`) that exports the emulator's share root. A share made
//! through the signed API is a real NFS export: a file written into it over NFSv3 by a
//! user-space client (`nfs-cp`, inside the namespace) is read back from the share's directory on
//! disk; once deleted, its directory is gone and it can no longer be mounted. Nothing is left
//! behind (namespace, processes, directories), also when the test fails: every piece is owned
//! by a value whose `Drop` removes it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Api, PROJECT, World};
use everest_testsupport::NfsServer;
use everest_testsupport::nfs::{netns_named, skip_unless_nfs_server};
use serde_json::{Value, json};

const PSEUDO: &str = "/sfs-turbo";

fn shares() -> String {
    format!("/v1/{PROJECT}/sfs-turbo/shares")
}

fn create_body(name: &str) -> Value {
    json!({"share": {
        "name": name, "share_proto": "NFS", "share_type": "STANDARD", "size": 500,
        "availability_zone": "emu-az1", "vpc_id": "vpc-1", "subnet_id": "subnet-1",
        "security_group_id": "sg-1",
    }})
}

/// Polls the share until `done` holds for its body (or it is gone, when `done` accepts 404).
async fn wait_share(api: &Api, id: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = api.call("GET", &format!("{}/{id}", shares()), None).await;
        if done(code, &body) {
            return (code, body);
        }
        assert!(Instant::now() < deadline, "share {id} stuck: {code} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_world(server: &NfsServer) -> World {
    let mut world = World::new();
    let root = server.export_root().display().to_string();
    world.start_cmd(
        server.command(env!("CARGO_BIN_EXE_everest-emulator")),
        &[
            "--cleanup-on-exit",
            "--nfs-export-root",
            &root,
            "--nfs-export-path",
            PSEUDO,
        ],
    );
    world
}

#[test]
fn a_share_is_a_real_nfs_export_from_create_to_delete() {
    if skip_unless_nfs_server() {
        return;
    }
    let root = tempfile::tempdir().expect("share root");
    let server = NfsServer::start(root.path(), PSEUDO).expect("start nfs-ganesha");
    let ns = server.netns().to_string();
    let world = start_world(&server);
    let payload = world.dir.path().join("payload.txt");
    std::fs::write(&payload, "written over NFS\n").unwrap();

    server.block_on_inside(async {
        let api = world.api();
        let (code, created) = api
            .call("POST", &shares(), Some(create_body("it-share")))
            .await;
        assert_eq!(code, 202, "{created}");
        assert_eq!(created["status"], "100");
        let id = created["id"].as_str().expect("id").to_string();
        let (_, share) = wait_share(&api, &id, |_, b| b["status"] != "100").await;
        assert_eq!(share["status"], "200", "{share}");
        assert_eq!(share["size"], "500.00");
        let location = share["export_location"].as_str().expect("export_location");
        assert_eq!(location, format!("127.0.0.1:{PSEUDO}/{id}"));
        let dir = root.path().join(&id);
        assert!(dir.is_dir(), "the share's directory exists");

        // Write over NFSv3 at the export location, read back from the directory on disk.
        let (host, path) = location.split_once(':').expect("host:path");
        let url = format!("nfs://{host}{path}/hello.txt?version=3");
        let out = server
            .command("nfs-cp")
            .arg(&payload)
            .arg(&url)
            .output()
            .expect("run nfs-cp");
        assert!(out.status.success(), "nfs-cp to {url}: {out:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("hello.txt")).unwrap(),
            "written over NFS\n"
        );

        // Expand: 121 while it runs, then 221 and the new size.
        let grow = json!({"extend": {"new_size": 600}});
        let (code, body) = api
            .call("POST", &format!("{}/{id}/action", shares()), Some(grow))
            .await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body, json!({"id": id, "name": "it-share"}));
        let (_, share) = wait_share(&api, &id, |_, b| b["sub_status"] == "221").await;
        assert_eq!(share["size"], "600.00");
        let (code, list) = api
            .call(
                "GET",
                &format!("{}/detail?limit=10&offset=0", shares()),
                None,
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(list["count"], 1);
        assert_eq!(list["shares"][0]["id"], id.as_str());

        // A second share of the same name is refused.
        let (code, body) = api
            .call("POST", &shares(), Some(create_body("it-share")))
            .await;
        assert_eq!(
            (code, body["errCode"].as_str()),
            (409, Some("SFS.TURBO.0009"))
        );

        // Delete: 202, then 404 in SFS Turbo's shape; directory and export gone.
        let (code, _) = api
            .call("DELETE", &format!("{}/{id}", shares()), None)
            .await;
        assert_eq!(code, 202);
        let (_, gone) = wait_share(&api, &id, |c, _| c == 404).await;
        assert_eq!(gone["errCode"], "SFS.TURBO.0002", "{gone}");
        assert!(!dir.exists(), "the share's directory is removed");
        let ls = server
            .command("nfs-ls")
            .arg(format!("nfs://{host}{path}?version=3"))
            .output()
            .expect("run nfs-ls");
        assert!(!ls.status.success(), "a deleted share still mounts: {ls:?}");
        let (code, body) = api
            .call("DELETE", &format!("{}/{id}", shares()), None)
            .await;
        assert_eq!(
            (code, body["errCode"].as_str()),
            (404, Some("SFS.TURBO.0002"))
        );
    });

    drop(world);
    drop(server);
    assert!(
        !netns_named(&ns).contains(&ns),
        "namespace {ns} left behind"
    );
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

/// Needs no NFS server: the share's directory is made by the emulator either way.
#[tokio::test]
async fn a_creation_in_flight_when_the_emulator_stops_completes_after_a_restart() {
    let mut world = World::new();
    world.start(&["--job-latency-ms", "60000"]);
    let (code, created) = world
        .api()
        .call("POST", &shares(), Some(create_body("restarted")))
        .await;
    assert_eq!(code, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    world.stop("-TERM");
    let dir = world.state_dir().join("shares").join(&id);
    assert!(!dir.exists(), "created before the restart");
    world.start(&[]);
    let api = world.api();
    let (_, share) = wait_share(&api, &id, |_, b| b["status"] != "100").await;
    assert_eq!(share["status"], "200", "{share}");
    assert!(
        dir.is_dir(),
        "the share's directory exists after the restart"
    );
}

#[test]
fn injected_faults_reach_the_share_api_in_its_own_shape() {
    if skip_unless_nfs_server() {
        return;
    }
    let root = tempfile::tempdir().expect("share root");
    let server = NfsServer::start(root.path(), PSEUDO).expect("start nfs-ganesha");
    let world = start_world(&server);
    server.block_on_inside(async {
        let api = world.api();
        let faults = |v: Value| {
            let url = format!("{}/_emulator/faults", api.base);
            let client = api.client.clone();
            async move {
                let resp = client.put(url).json(&v).send().await.expect("PUT faults");
                assert!(resp.status().is_success());
            }
        };
        faults(json!({"error_rate": 1.0})).await;
        let (code, body) = api
            .call("POST", &shares(), Some(create_body("faulty")))
            .await;
        assert_eq!(
            (code, body["errCode"].as_str()),
            (500, Some("SFS.TURBO.0005")),
            "{body}"
        );
        faults(json!({"throttle_rate": 1.0})).await;
        let (code, body) = api.call("GET", &format!("{}/detail", shares()), None).await;
        assert_eq!(
            (code, body["error_code"].as_str()),
            (429, Some("APIGW.0308")),
            "{body}"
        );
        // A failed call had no effect.
        faults(json!({})).await;
        let (_, list) = api.call("GET", &format!("{}/detail", shares()), None).await;
        assert_eq!(list["count"], 0, "{list}");

        // An accepted creation that fails later: status 303, no directory, deletable.
        faults(json!({"share_create_fail_rate": 1.0})).await;
        let (code, created) = api
            .call("POST", &shares(), Some(create_body("doomed")))
            .await;
        assert_eq!(code, 202, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let (_, share) = wait_share(&api, &id, |_, b| b["status"] != "100").await;
        assert_eq!(share["status"], "303", "{share}");
        assert!(!Path::new(&root.path().join(&id)).exists());
        let (code, _) = api
            .call("DELETE", &format!("{}/{id}", shares()), None)
            .await;
        assert_eq!(code, 202);
        wait_share(&api, &id, |c, _| c == 404).await;
    });
}
