//! Wire compatibility: a CSI client generated from the official spec (not from this repo's
//! csi.proto) calls Identity, Controller and Node on the real daemons. It is Python's grpcio
//! (gRPC core), left to send the `:authority` it chooses for a unix socket (the percent-encoded
//! path, which tonic's HTTP/2 stack alone would refuse), so it also proves that non-Go clients
//! get in. `scripts/test.sh` prepares the client and sets `EVEREST_OFFICIAL_CLIENT_DIR`; without
//! it the test skips (and fails under `CI=true`).

use std::path::PathBuf;
use std::process::Command;

use everest_testsupport::{Daemon, World};

#[tokio::test]
async fn official_spec_client_talks_to_both_daemons() {
    let Some(dir) = std::env::var_os("EVEREST_OFFICIAL_CLIENT_DIR").map(PathBuf::from) else {
        everest_testsupport::skip(
            "EVEREST_OFFICIAL_CLIENT_DIR is not set (scripts/test.sh prepares the client with \
             proto/tests/official_client/setup.sh)",
        );
        return;
    };
    let python = dir.join("venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run setup.sh",
        python.display()
    );
    let probe = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/tests/official_client/csi_probe.py");
    let world = World::start().await;
    let mut plugin_caps = Vec::new();
    for (daemon, services) in [
        (Daemon::Controller, ["identity", "controller"]),
        (Daemon::Node, ["identity", "node"]),
    ] {
        for service in services {
            let out = Command::new(&python)
                .arg(&probe)
                .arg("--stubs")
                .arg(dir.join("stubs"))
                .arg("--socket")
                .arg(world.socket(daemon))
                .arg("--service")
                .arg(service)
                .output()
                .expect("run csi_probe.py");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "official client, {daemon:?} {service}: {}\n{stdout}\n{stderr}",
                out.status
            );
            assert!(
                stdout.contains(everest_testsupport::DRIVER_NAME),
                "GetPluginInfo did not name the driver: {stdout}"
            );
            let answer: serde_json::Value =
                serde_json::from_str(&stdout).expect("csi_probe.py prints JSON");
            plugin_caps.push((daemon, answer["responses"]["GetPluginCapabilities"].clone()));
        }
    }
    // Clients read plugin capabilities from whichever socket they hold: both describe one plugin.
    let (_, first) = &plugin_caps[0];
    for (daemon, caps) in &plugin_caps {
        assert_eq!(caps, first, "{daemon:?} describes another plugin");
    }
    let text = first.to_string();
    for cap in [
        "CONTROLLER_SERVICE",
        "VOLUME_ACCESSIBILITY_CONSTRAINTS",
        "ONLINE",
    ] {
        assert!(
            text.contains(cap),
            "GetPluginCapabilities lacks {cap}: {text}"
        );
    }
}
