//! The benchmark harness keeps working: a tiny run of `everest-bench` completes and reports
//! every figure with a finite ratio (fio is installed by scripts/test.sh). Not a timed test: the figures themselves are not judged
//! here (docs/performance.md holds them); only that the harness can still produce them.

use std::process::Command;

use everest_testsupport::{skip_unless_nfs_server, skip_unless_root_and_loop, skip_without};

#[test]
fn a_tiny_benchmark_run_reports_every_figure() {
    if skip_unless_root_and_loop() || skip_without("fio", "fio") || skip_unless_nfs_server() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_everest-bench"))
        .args([
            "--quick",
            "--volumes",
            "4",
            "--in-flight",
            "2",
            "--samples",
            "20",
            "--job-latency-ms",
            "50",
            "--mounts",
            "20",
            "--scales",
            "2,4",
            "--attaches",
            "6",
            "--io-seconds",
            "1",
            "--io-size-mib",
            "16",
        ])
        .output()
        .expect("run everest-bench");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "everest-bench failed: {}\n{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| figure"))
        .collect();
    for figure in [
        "Probe (node) p50",
        "CreateVolume, one alone",
        "4 × CreateVolume, 2 in flight",
        "cloud API calls per created volume",
        "NodeStage + NodePublish",
        "NodeGetVolumeStats p50",
        "everest-controller start to Probe-ready",
        "everest-node start to Probe-ready",
        "NodeStage + NodePublish with 20 more mounts",
        "NodeGetVolumeStats p50 with 20 more mounts",
        "fio sequential write",
        "fio sequential read",
        "fio random write",
        "fio random read",
        "NodeStageVolume: the driver's own time",
        "× ControllerPublishVolume at once",
        "cloud API calls per attach",
        "cloud API calls per detach",
        "the same against every step it runs, by hand",
        "CreateVolume: the driver's own time",
        "file (subdir) CreateVolume, one alone",
        "file (share) DeleteVolume, one alone",
    ] {
        let row = rows
            .iter()
            .find(|r| r.contains(figure))
            .unwrap_or_else(|| panic!("no {figure:?} in the report:\n{report}"));
        let ratio: f64 = row
            .split('|')
            .nth(4)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ratio in {row:?}"));
        assert!(ratio.is_finite() && ratio > 0.0, "{row}");
    }
    assert!(
        report.contains("Resident memory") && report.contains("KiB its own"),
        "{report}"
    );
    // The growth table: one row per scale, each with a finite ratio against the first.
    for volumes in ["2", "4"] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {volumes} | ")))
            .unwrap_or_else(|| panic!("no growth row for {volumes} volumes in:\n{report}"));
        let ratio: f64 = row.split('|').nth(4).unwrap().trim().parse().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{row}");
    }
}
