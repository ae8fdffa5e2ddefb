//! What the node calls: one connection per request, each with a time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use everest_backend::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Fault, MAX_LINE, MountSpec, MountStatus, Request, Response, to_line};

/// A client of the supervisor at `socket`.
#[derive(Debug, Clone)]
pub struct SupervisorClient {
    socket: PathBuf,
    /// For a start: the supervisor waits for the mount, up to its own limit.
    timeout: Duration,
}

impl SupervisorClient {
    /// A client of the supervisor listening on `socket`; `timeout` bounds every call.
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        Self { socket, timeout }
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(&self, req: &Request) -> Result<Response, Error> {
        let sock = self.socket.display();
        let unavailable = |e: String| {
            Error::Unavailable(format!(
                "the mounter supervisor at {sock} does not answer ({e}); is everest-mounter running?"
            ))
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            stream
                .write_all(to_line(req).as_bytes())
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let mut line = String::new();
            BufReader::new(stream.take(MAX_LINE as u64))
                .read_line(&mut line)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            serde_json::from_str::<Response>(&line).map_err(|e| {
                Error::Internal(format!(
                    "the mounter supervisor at {sock} answered something else: {e}"
                ))
            })
        };
        everest_backend::outside::outside(tokio::time::timeout(self.timeout, exchange))
            .await
            .unwrap_or_else(|_| {
                Err(Error::DeadlineExceeded(format!(
                    "the mounter supervisor at {sock} did not answer within {}s",
                    self.timeout.as_secs()
                )))
            })
    }

    /// Asks for `spec` to be mounted and kept mounted.
    pub async fn start(&self, spec: &MountSpec) -> Result<MountStatus, Error> {
        match self.call(&Request::Start(spec.clone())).await? {
            Response::Started(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Asks for the mount at `target` to be unmounted and no longer supervised; whether it was.
    pub async fn stop(&self, target: &Path) -> Result<bool, Error> {
        match self
            .call(&Request::Stop {
                target: target.to_owned(),
            })
            .await?
        {
            Response::Stopped { known } => Ok(known),
            other => Err(unexpected(other)),
        }
    }

    /// Every supervised mount.
    pub async fn list(&self) -> Result<Vec<MountStatus>, Error> {
        match self.call(&Request::List).await? {
            Response::Mounts { mounts } => Ok(mounts),
            other => Err(unexpected(other)),
        }
    }
}

/// An error answer as the node's error, or a protocol mismatch.
fn unexpected(r: Response) -> Error {
    match r {
        Response::Error { fault, message } => match fault {
            Fault::Invalid => Error::InvalidArgument(message),
            Fault::Conflict => Error::AlreadyExists(message),
            Fault::Failed => Error::Internal(message),
        },
        other => Error::Internal(format!(
            "the mounter supervisor answered {other:?} to another request"
        )),
    }
}
