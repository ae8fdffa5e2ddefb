//! The short form of the failure campaign, on every CI run: `everest-chaos --short` completes
//! every part with nothing failed or leaked. And the campaign can fail: a run told to leave a
//! disk, or an object volume staged, behind reports those leaks and exits non-zero. (The long
//! run's figures are in docs/reliability.md.)

use std::process::Command;

use everest_testsupport::{skip_unless_root_and_loop, skip_unless_s3_server, skip_without};

fn chaos(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_everest-chaos"))
        .args(args)
        .output()
        .expect("run everest-chaos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_short_campaign_completes_every_part_without_a_leak() {
    if skip_unless_root_and_loop() {
        return;
    }
    let (ok, report, log) = chaos(&["--short"]);
    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert!(ok, "everest-chaos --short failed:\n{report}\n{tail}");
    for part in [
        "| concurrency |",
        "| faults |",
        "| controller-kills |",
        "| node-restarts |",
    ] {
        let row = report
            .lines()
            .find(|l| l.starts_with(part))
            .unwrap_or_else(|| panic!("no {part} row in:\n{report}"));
        // completed n / n, 0 failures, 0 leaks
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (done, of) = cells[3].split_once(" / ").expect("completed cell");
        assert_eq!(done, of, "{row}");
        assert_eq!((cells[4], cells[5]), ("0", "0"), "{row}");
    }
}

#[test]
fn a_leaked_disk_fails_the_campaign() {
    if skip_unless_root_and_loop() {
        return;
    }
    let (ok, report, log) = chaos(&[
        "--only",
        "faults",
        "--lifecycles",
        "1",
        "--error-rate",
        "0",
        "--throttle-rate",
        "0",
        "--break-teardown",
    ]);
    assert!(!ok, "a run that left a disk behind passed:\n{report}");
    assert!(log.contains("left in the cloud"), "{log}");
    let row = report
        .lines()
        .find(|l| l.starts_with("| faults |"))
        .unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(
        cells[5], "1",
        "the leak is not counted in the leaks column: {row}"
    );
}

#[test]
fn an_object_volume_left_staged_fails_the_campaign() {
    if skip_unless_root_and_loop() || skip_unless_s3_server() || skip_without("s3fs", "s3fs") {
        return;
    }
    let (ok, report, log) = chaos(&[
        "--only",
        "node-restarts",
        "--node-volumes",
        "1",
        "--object-volumes",
        "2",
        "--break-teardown",
    ]);
    assert!(
        !ok,
        "a run that left an object volume staged passed:\n{report}"
    );
    // Its bucket, its s3fs process and its two mounts (staging and pod path).
    for leak in [
        "left on the S3 server",
        "still running",
        "globalmount left behind",
    ] {
        assert!(log.contains(leak), "no `{leak}` leak reported:\n{log}");
    }
    let row = report
        .lines()
        .find(|l| l.starts_with("| node-restarts |"))
        .unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!((cells[3], cells[5]), ("2 / 3", "4"), "{row}");
}
