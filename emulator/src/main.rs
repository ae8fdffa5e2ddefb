//! `everest-emulator`: runs the local cloud until SIGTERM/SIGINT.

use clap::Parser;
use everest_emulator::{Config, serve};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs go to stderr; stdout carries only the EVEREST_EMULATOR_LISTENING line.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cfg = Config::parse();
    match serve(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "everest-emulator failed");
            eprintln!("everest-emulator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
