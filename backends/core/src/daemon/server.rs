//! Serving a tonic router on the CSI socket until SIGTERM/SIGINT, then cleaning up.

use std::future::Future;
use std::time::Duration;

use tonic::transport::server::Router;

use tokio_stream::StreamExt;

use super::authority::LenientAuthority;
use super::shutdown::signal_received;
use super::socket::{BoundSocket, bind, parse_endpoint};
use crate::error::Error;

/// How long in-flight RPCs may run after the signal. The kubelet and the sidecars keep their
/// connections open, so a graceful drain alone would wait for them until SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Binds `endpoint`, serves `router` until a shutdown signal, lets in-flight RPCs finish for up
/// to [`SHUTDOWN_GRACE`], and removes the socket file.
pub async fn serve(endpoint: &str, router: Router) -> Result<(), Error> {
    serve_until(endpoint, router, signal_received(), SHUTDOWN_GRACE).await
}

/// [`serve`] with the shutdown trigger and the grace period given by the caller.
pub async fn serve_until(
    endpoint: &str,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), Error> {
    let bound = bind(&parse_endpoint(endpoint)?).await?;
    serve_bound(bound, "CSI", router, shutdown, grace).await
}

/// Serves `router` on a socket bound beforehand until `shutdown`, then as [`serve_until`].
/// Binding apart from serving lets a daemon create its sockets in a chosen order (the node's
/// registration socket only once its CSI socket exists) and serve them side by side.
/// `what` names the service in the logs.
pub async fn serve_bound(
    bound: BoundSocket,
    what: &'static str,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), Error> {
    let socket = bound.file.path().display().to_string();
    tracing::info!(socket, "serving {what}");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // Every connection goes through LenientAuthority, so non-Go gRPC clients can call us too.
    let incoming = bound.incoming.map(|conn| conn.map(LenientAuthority::new));
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        // An error means the sender is gone, which only happens once we are stopping anyway.
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let deadline = async {
        shutdown.await;
        let _ = stop_tx.send(true);
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        result = server => result
            .map_err(|e| Error::Internal(format!("{what} gRPC server on {socket} failed: {e}"))),
        () = deadline => {
            tracing::warn!(socket, grace_seconds = grace.as_secs(), "connections still open after the grace period; stopping anyway");
            Ok(())
        }
    };
    drop(bound.file);
    tracing::info!(socket, "stopped serving {what}");
    served
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;
    use tonic::transport::Server;

    use super::*;
    use crate::daemon::identity::{IdentityService, Readiness};

    #[derive(Debug)]
    struct AlwaysReady;

    #[async_trait::async_trait]
    impl Readiness for AlwaysReady {
        async fn check(&self) -> Result<(), String> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_idle_client_cannot_hold_shutdown_past_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        let endpoint = format!("unix://{}", sock.display());
        let identity =
            IdentityService::new("test.csi.io".into(), "0", std::sync::Arc::new(AlwaysReady));
        let router = Server::builder()
            .add_service(everest_proto::csi::v1::identity_server::IdentityServer::new(identity));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn({
            let endpoint = endpoint.clone();
            async move {
                serve_until(
                    &endpoint,
                    router,
                    async {
                        let _ = rx.await;
                    },
                    Duration::from_millis(300),
                )
                .await
            }
        });
        // An HTTP/2 client that opens a connection and then just sits there, like an idle kubelet.
        let mut conn = loop {
            if let Ok(c) = tokio::net::UnixStream::connect(&sock).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        // Let the server take the connection in before the signal.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        tx.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(
            result.is_ok(),
            "serve did not return within 5 s of the signal"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!sock.exists(), "the socket file must be removed");
        drop(conn);
    }
}
