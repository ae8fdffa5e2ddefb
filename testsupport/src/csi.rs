//! CSI over unix sockets: connecting, building the requests kubelet and the sidecars send,
//! and retrying the way the sidecars do.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use everest_proto::csi::v1 as csi;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};

/// Opens a gRPC channel over the unix socket at `path`.
pub async fn connect_uds(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// A filesystem volume capability (`fs_type` empty = the backend's default).
pub fn mount_cap(fs_type: &str, mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.to_string(),
            ..Default::default()
        })),
    }
}

/// A raw block volume capability.
pub fn block_cap(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

/// One GiB.
pub const GIB: i64 = 1 << 30;

/// A CreateVolume request as csi-provisioner sends it (with `--extra-create-metadata`).
pub fn create_request(
    name: &str,
    required_bytes: i64,
    cap: csi::VolumeCapability,
    params: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    let mut parameters: HashMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parameters
        .entry("csi.storage.k8s.io/pv/name".into())
        .or_insert_with(|| name.to_string());
    parameters
        .entry("csi.storage.k8s.io/pvc/name".into())
        .or_insert_with(|| format!("claim-{name}"));
    parameters
        .entry("csi.storage.k8s.io/pvc/namespace".into())
        .or_insert_with(|| "default".into());
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        parameters,
        ..Default::default()
    }
}

/// Whether a sidecar would retry after this status. The sidecars retry every failure with
/// backoff; only a request they know to be wrong is final.
pub fn retryable(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange | Code::Unimplemented
    )
}

/// Calls `f` until it succeeds, a final error occurs, or `deadline` passes, with a capped
/// exponential backoff like the sidecars'. Returns the answer and the number of attempts.
pub async fn retry<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<(T, u32), Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let end = Instant::now() + deadline;
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f().await {
            Ok(v) => return Ok((v, attempts)),
            Err(status) if retryable(&status) && Instant::now() + delay < end => {
                eprintln!(
                    "[retry] {what}: attempt {attempts} failed with {:?}: {}",
                    status.code(),
                    status.message()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(status) => {
                return Err(Status::new(
                    status.code(),
                    format!("{what} after {attempts} attempts: {}", status.message()),
                ));
            }
        }
    }
}

/// Asserts that `result` failed with `code` and that the message names `needle`
/// (case-insensitive), then returns the message.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needles: &[&str],
) -> String {
    let status = match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code, message: {}",
        status.message()
    );
    let msg = status.message().to_lowercase();
    assert!(
        needles.iter().any(|n| msg.contains(&n.to_lowercase())),
        "the message {:?} names none of {needles:?}",
        status.message()
    );
    status.message().to_string()
}
