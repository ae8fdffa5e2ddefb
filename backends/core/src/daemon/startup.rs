//! From parsed flags to an exit code, the same way in both daemons, so the exit codes and
//! `--check-config` mean the same thing in each.

use std::future::Future;
use std::process::ExitCode;

use super::logging::{self, LogFormat};
use crate::error::Error;

/// The exit code of an invalid configuration.
pub const EXIT_INVALID_CONFIG: u8 = 2;

/// Runs a daemon. `prepare` loads the configuration and builds what needs no network; an error is
/// printed to stderr and exits 2. With `check_only` it stops there ("config ok", exit 0).
/// Otherwise logging starts in the configured format and `serve` runs until shutdown: exit 0, or
/// exit 1 with the error logged.
pub async fn launch<T, F>(
    program: &str,
    check_only: bool,
    prepare: impl FnOnce() -> Result<(LogFormat, T), Error>,
    serve: impl FnOnce(T) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), Error>>,
{
    let (log_format, prepared) = match prepare() {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("{program}: invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    if check_only {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    logging::init(log_format);
    match serve(prepared).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{program} stopped with an error");
            ExitCode::FAILURE
        }
    }
}
