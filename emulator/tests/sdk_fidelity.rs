//! Fidelity: Huawei Cloud's official Python SDK (pinned, see `sdk_fidelity/setup.sh`) drives the
//! real emulator through every EVS and ECS call our client makes and the SFS Turbo calls of the
//! file backend; `sdk_fidelity/driver.py`
//! reports each deviation with the call, the field and the body.
//!
//! `scripts/test.sh` prepares the SDK and sets `EVEREST_SDK_VENV`; without it these tests print
//! why they skip, and with `CI=true` that skip is a failure.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{AK, PROJECT, SERVER, SK, World, can_use_loop_devices};

/// The venv's python, or `None` (with the reason printed) when the SDK is not prepared.
fn sdk_python() -> Option<PathBuf> {
    let Some(venv) = std::env::var_os("EVEREST_SDK_VENV").map(PathBuf::from) else {
        let why = "EVEREST_SDK_VENV is not set (scripts/test.sh prepares the SDK with \
                   emulator/tests/sdk_fidelity/setup.sh DIR and sets it to DIR/venv)";
        everest_testsupport::skip(why);
        return None;
    };
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} missing: run emulator/tests/sdk_fidelity/setup.sh",
        python.display()
    );
    Some(python)
}

/// Runs the driver against a fresh emulator.
fn drive(python: &PathBuf, extra: &[&str]) -> Output {
    let mut world = World::new();
    world.start(&["--cleanup-on-exit"]);
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_fidelity/driver.py");
    let endpoint = format!("http://{}", world.addr);
    // The secret key goes through the environment, never argv.
    let out = Command::new(python)
        .arg(&driver)
        .args(["--endpoint", &endpoint, "--ak", AK, "--project", PROJECT])
        .args(["--server", SERVER, "--zone", "emu-az1"])
        .args(extra)
        .env("EVEREST_FIDELITY_SK", SK)
        .output()
        .expect("run sdk_fidelity/driver.py");
    drop(world);
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn official_sdk_finds_no_deviation() {
    let Some(python) = sdk_python() else { return };
    if !can_use_loop_devices() {
        return;
    }
    let out = drive(&python, &[]);
    let all = text(&out);
    println!("{all}");
    assert!(out.status.success(), "the SDK found deviations:\n{all}");
    assert!(all.contains(", 0 deviations"), "{all}");
}

/// The negative case: a field our client reads, renamed in every response, fails the suite
/// with the call, the field and the body.
#[test]
fn a_renamed_field_fails_the_suite() {
    let Some(python) = sdk_python() else { return };
    if !can_use_loop_devices() {
        return;
    }
    let out = drive(&python, &["--rename", "volume_type=volumeType"]);
    let all = text(&out);
    assert!(!out.status.success(), "a renamed field passed:\n{all}");
    assert!(
        all.contains("DEVIATION evs.ShowVolume: volume.volume_type: missing or null"),
        "{all}"
    );
    assert!(all.contains("body: {\"volume\":"), "{all}");
}

/// The same for SFS Turbo: a share field the file backend reads, renamed, fails the suite.
#[test]
fn a_renamed_share_field_fails_the_suite() {
    let Some(python) = sdk_python() else { return };
    if !can_use_loop_devices() {
        return;
    }
    let out = drive(&python, &["--rename", "export_location=exportLocation"]);
    let all = text(&out);
    assert!(!out.status.success(), "a renamed field passed:\n{all}");
    assert!(
        all.contains("DEVIATION sfsturbo.ShowShare: export_location: missing or null"),
        "{all}"
    );
    assert!(
        !all.contains("DEVIATION evs."),
        "only the share field was renamed:\n{all}"
    );
}
