//! Serving a tonic router on the CSI socket until SIGTERM/SIGINT, then cleaning up.

use tonic::transport::server::Router;

use super::shutdown::signal_received;
use super::socket::{bind, parse_endpoint};
use crate::error::Error;

/// Binds `endpoint`, serves `router` until a shutdown signal, lets in-flight RPCs finish, and
/// removes the socket file.
pub async fn serve(endpoint: &str, router: Router) -> Result<(), Error> {
    let path = parse_endpoint(endpoint)?;
    let bound = bind(&path).await?;
    tracing::info!(endpoint, "serving CSI");
    let served = router
        .serve_with_incoming_shutdown(bound.incoming, signal_received())
        .await
        .map_err(|e| Error::Internal(format!("gRPC server on {endpoint} failed: {e}")));
    drop(bound.file);
    tracing::info!(endpoint, "stopped");
    served
}
