//! `everestctl orphans` with the real emulator behind the real EVS client (through the world's
//! daemon config file) and the cluster faked at its HTTP edge. Volumes are made by the real
//! controller, so their markers are the ones Everest writes: a live volume (its PV exists), a
//! stranded one, a stranded one still attached to a node, and one made by the controller of
//! another cluster sharing the cloud project.

mod common;

use std::path::Path;

use common::{Fake, create, describe, publish, pv, stdout_json};
use everest_testsupport::csi::GIB;
use everest_testsupport::{World, WorldOptions, skip_unless_root_and_loop};
use serde_json::Value;

const OURS: &str = r#"cluster_id = "prod-a""#;
const THEIRS: &str = r#"cluster_id = "prod-b""#;

/// Restarts the world's controller with the cluster ID line `from` replaced by `to`.
async fn switch_cluster(world: &World, from: &str, to: &str) {
    let path = world.config_path();
    let text = std::fs::read_to_string(&path).expect("read the config");
    assert!(text.contains(from), "{text}");
    std::fs::write(&path, text.replace(from, to)).expect("write the config");
    world
        .restart_controller()
        .await
        .expect("restart the controller");
}

/// The listed orphan made for the PV `pv_name`, if listed.
fn orphan<'a>(report: &'a Value, pv_name: &str) -> Option<&'a Value> {
    report["orphans"]
        .as_array()
        .expect("orphans is a list")
        .iter()
        .find(|o| o["pv_name"] == pv_name)
}

/// The PV names of the listed orphans, sorted.
fn listed(report: &Value) -> Vec<String> {
    let mut names: Vec<String> = report["orphans"]
        .as_array()
        .expect("orphans is a list")
        .iter()
        .map(|o| o["pv_name"].as_str().unwrap_or("-").to_owned())
        .collect();
    names.sort();
    names
}

async fn run_orphans(fake: &Fake, config: &Path, extra: &[&str]) -> std::process::Output {
    let config = config.to_str().expect("a UTF-8 path");
    let mut args = vec!["orphans", "--config", config];
    args.extend_from_slice(extra);
    fake.run(&args).await
}

#[tokio::test]
async fn orphans_lists_this_clusters_stranded_volumes_and_deletes_them_only_when_confirmed() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start_with(WorldOptions {
        controller_extra: vec![OURS.into()],
        ..WorldOptions::default()
    })
    .await
    .expect("start the world");
    let fake = Fake::start().await;
    let node_id = world.node_id().await;
    let config = world.config_path();

    let live = create(&world, "pvc-live").await;
    let stranded = create(&world, "pvc-stranded").await;
    let attached = create(&world, "pvc-attached").await;
    publish(&world, &attached, &node_id).await;
    fake.api.put(pv("pvc-live", &live));
    // In use too: a PV written by hand under another name that names the disk, and a PV with
    // the name the marker recorded whose handle was rewritten (an instance renamed).
    let by_handle = create(&world, "pvc-by-handle").await;
    fake.api.put(pv("pv-written-by-hand", &by_handle));
    let by_name = create(&world, "pvc-by-name").await;
    let rewritten = by_name.replace("v1:evs-default:", "v1:evs-renamed:");
    assert_ne!(rewritten, by_name);
    fake.api.put(pv("pvc-by-name", &rewritten));
    // Another cluster's controller, with the same backend instance name and cloud project.
    switch_cluster(&world, OURS, THEIRS).await;
    let theirs = create(&world, "pvc-theirs").await;
    switch_cluster(&world, THEIRS, OURS).await;

    // With the default minimum age (1h) every volume is too young: nothing is listed, and
    // the ones held back are counted.
    let out = run_orphans(&fake, &config, &["-o", "json"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let report = stdout_json(&out);
    assert_eq!(listed(&report), Vec::<String>::new(), "{report:#}");
    assert_eq!(report["min_age_seconds"], 3600);
    assert_eq!(report["held_back"], 2, "{report:#}");
    assert_eq!(report["other_clusters"], 1, "{report:#}");

    // With no minimum age: the two stranded volumes, with size, age and the claim the marker
    // recorded; not the live one, not the other cluster's.
    let out = run_orphans(&fake, &config, &["--min-age", "0", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let report = stdout_json(&out);
    assert_eq!(
        listed(&report),
        ["pvc-attached", "pvc-stranded"],
        "{report:#}"
    );
    assert_eq!(report["cluster_id"], "prod-a");
    assert_eq!(report["other_clusters"], 1);
    let o = orphan(&report, "pvc-stranded").expect("listed");
    assert_eq!(o["volume_handle"], stranded.as_str());
    // The size the cloud gave the disk (EVS rounds a 1 GiB request up to its minimum).
    let disk = world.disk(&stranded).await.expect("the stranded disk");
    let gib = disk["size"].as_i64().expect("a size in GiB");
    assert_eq!(o["size_bytes"], gib * GIB, "{disk:#}");
    let age = o["age_seconds"].as_u64().expect("an age");
    assert!(age < 600, "a volume made during the test: {age}s");
    assert!(o["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(o["pvc_name"], "claim-pvc-stranded");
    assert_eq!(o["pvc_namespace"], "default");
    assert_eq!(o["attached_to"], serde_json::json!([]));
    assert_eq!(
        orphan(&report, "pvc-attached").expect("listed")["attached_to"],
        serde_json::json!([node_id])
    );
    // Every disk of the project is seen (a node's system disk too); five are ours, three of
    // them in use.
    let evs = &report["backends"][0];
    let count = |key: &str| evs[key].as_u64();
    assert_eq!(
        (count("ours"), count("in_use"), count("orphans")),
        (Some(5), Some(3), Some(2)),
        "{report:#}"
    );

    let table = run_orphans(&fake, &config, &["--min-age", "0"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&stranded) && text.contains(&format!("{gib}Gi")),
        "{text}"
    );
    assert!(text.contains("default/claim-pvc-stranded"), "{text}");
    for id in [&live, &by_handle, &by_name, &theirs] {
        assert!(!text.contains(id.as_str()), "{id} listed:\n{text}");
    }
    assert!(
        text.contains("1 volume(s) skipped as other clusters'"),
        "{text}"
    );

    // --delete without a confirmation (stdin is no terminal, no --yes) deletes nothing.
    let out = run_orphans(&fake, &config, &["--min-age", "0", "--delete"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a confirmation"),
        "{}",
        describe(&out)
    );
    assert!(world.disk(&stranded).await.is_some(), "deleted unconfirmed");
    // --yes alone is a command line error.
    let out = run_orphans(&fake, &config, &["--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // Confirmed: the stranded disk goes; the attached one is refused and stays, and so do
    // the live one and the other cluster's.
    let out = run_orphans(
        &fake,
        &config,
        &["--min-age", "0", "--delete", "--yes", "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let report = stdout_json(&out);
    assert_eq!(
        orphan(&report, "pvc-stranded").expect("listed")["outcome"],
        "deleted"
    );
    let refused = orphan(&report, "pvc-attached").expect("listed")["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        refused.starts_with("refused: attached to server(s)") && refused.contains(&node_id),
        "{refused}"
    );
    assert!(
        world.disk(&stranded).await.is_none(),
        "the stranded disk is gone"
    );
    for (what, id) in [
        ("attached", &attached),
        ("live", &live),
        ("by-handle", &by_handle),
        ("by-name", &by_name),
        ("theirs", &theirs),
    ] {
        assert!(world.disk(id).await.is_some(), "the {what} disk must stay");
    }

    // What is left: only the attached one.
    let out = run_orphans(&fake, &config, &["--min-age", "0", "-o", "json"]).await;
    assert_eq!(listed(&stdout_json(&out)), ["pvc-attached"]);
    drop(world);
}
