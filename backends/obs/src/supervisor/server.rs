//! The supervisor's socket: private (0600), never taken from a supervisor that still answers,
//! a stale one replaced (the daemons' own socket handling), one request per connection.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use everest_backend::daemon::socket::bind;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_stream::StreamExt;

use super::Supervisor;
use super::protocol::{Fault, MAX_LINE, Request, Response, to_line};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `supervisor` on `socket` until `shutdown`; the socket file is removed afterwards.
/// Mounters are left running: a supervisor started again finds them (see
/// [`Supervisor::recover`]).
pub async fn serve(
    supervisor: Arc<Supervisor>,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), everest_backend::Error> {
    let mut bound = bind(socket).await?;
    tracing::info!(socket = %socket.display(), "everest-mounter serving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            conn = bound.incoming.next() => match conn {
                Some(Ok(stream)) => {
                    tokio::spawn(answer(Arc::clone(&supervisor), stream));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "accept failed"),
                None => break,
            },
        }
    }
    drop(bound.file);
    supervisor.leave().await;
    tracing::info!("everest-mounter stopped; its mounters go on serving");
    Ok(())
}

async fn answer(supervisor: Arc<Supervisor>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64));
    let response = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 && line.ends_with('\n') => {
            match serde_json::from_str::<Request>(&line) {
                Ok(req) => supervisor.handle(req).await,
                // serde's message names the field or value, never echoes a whole request.
                Err(e) => Response::Error {
                    fault: Fault::Invalid,
                    message: format!("malformed request: {e}"),
                },
            }
        }
        _ => Response::Error {
            fault: Fault::Invalid,
            message: format!("expected one JSON line of at most {MAX_LINE} bytes"),
        },
    };
    if let Err(e) = write.write_all(to_line(&response).as_bytes()).await {
        tracing::debug!(error = %e, "client left before its answer");
    }
}
