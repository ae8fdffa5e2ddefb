//! Skipping a test this machine cannot run, never silently:
//! - the reason is printed as `SKIPPED: <test>: <reason>`;
//! - it is appended to the file named by `EVEREST_SKIP_LOG`, so `scripts/test.sh` counts every
//!   skip in its summary;
//! - with `CI=true` the skip is a failure instead: CI has everything installed, so a case that
//!   does not run there is a broken setup, not a missing tool.

use std::fmt::Display;
use std::io::Write as _;
use std::path::Path;

/// The variable naming the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "EVEREST_SKIP_LOG";

/// Records that the calling test skips, and why; panics instead when `CI=true`. Use as
/// `if cannot { skip(why); return; }`.
#[track_caller]
pub fn skip(why: impl Display) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_owned();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let log = std::env::var_os(SKIP_LOG_ENV);
    if let Err(failure) = record(&test, &why.to_string(), ci, log.as_deref().map(Path::new)) {
        panic!("{failure}");
    }
}

/// What [`skip`] does, with its environment passed in: `Err` is the failure to raise.
fn record(test: &str, why: &str, ci: bool, log: Option<&Path>) -> Result<(), String> {
    if ci {
        return Err(format!(
            "{test} would skip, and CI=true allows no skipped case: {why}"
        ));
    }
    let line = format!("SKIPPED: {test}: {why}");
    eprintln!("{line}");
    if let Some(log) = log {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| format!("cannot record the skip in {}: {e}", log.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_counted_outside_ci_and_fail_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        record("a", "no mkfs.xfs", false, Some(&log)).unwrap();
        record("b", "not root", false, Some(&log)).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["SKIPPED: a: no mkfs.xfs", "SKIPPED: b: not root"]
        );
        let err = record("c", "not root", true, Some(&log)).unwrap_err();
        assert!(err.contains("CI=true") && err.contains("not root"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            text,
            "a CI skip is no skip"
        );
        record("d", "x", false, None).unwrap();
    }
}
