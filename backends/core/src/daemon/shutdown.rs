//! The signal that starts a graceful shutdown.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// One shutdown signal that several servers of a daemon wait on, so they stop together.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Starts listening for SIGTERM/SIGINT ([`signal_received`]) in the background.
    pub fn on_signal() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            signal_received().await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once the signal came.
    pub async fn wait(mut self) {
        // An error means the listener is gone, which only happens when the runtime stops.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// Resolves on the first SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C).
///
/// If a handler cannot be installed (which only happens when the runtime has no signal driver),
/// that signal is logged and ignored rather than shutting the daemon down at once.
pub async fn signal_received() {
    let term = wait_for(SignalKind::terminate(), "SIGTERM");
    let int = wait_for(SignalKind::interrupt(), "SIGINT");
    tokio::select! {
        () = term => {},
        () = int => {},
    }
}

async fn wait_for(kind: SignalKind, name: &'static str) {
    match signal(kind) {
        Ok(mut s) => {
            s.recv().await;
            tracing::info!(signal = name, "shutting down: finishing in-flight requests");
        }
        Err(e) => {
            tracing::warn!(signal = name, error = %e, "cannot listen for signal");
            std::future::pending::<()>().await;
        }
    }
}
