//! Metrics and tracing for every RPC, in one place: the Prometheus exporter and [`observe`].
//!
//! Metric names (documented for operators in `docs/metrics.md`):
//! - `everest_csi_operations_total{service,method,backend,grpc_code}`: counter, one per RPC;
//! - `everest_csi_operation_duration_seconds{service,method,backend,grpc_code}`: histogram;
//! - `everest_csi_driver_duration_seconds{service,method,backend,grpc_code}`: histogram of the
//!   same RPCs' own time, without their waits on the cloud, host tools and the kernel
//!   ([`crate::outside`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::error::Error;

/// Counter of finished RPCs.
pub const OPERATIONS_TOTAL: &str = "everest_csi_operations_total";
/// Histogram of RPC latency in seconds.
pub const OPERATION_DURATION: &str = "everest_csi_operation_duration_seconds";
/// Histogram of the driver's own time per RPC (its latency less its waits outside), in seconds.
pub const DRIVER_DURATION: &str = "everest_csi_driver_duration_seconds";

/// Buckets from 50 µs to 100 ms: the driver's own time is a fraction of a millisecond when all
/// is well, and its goals are 0.3 ms (p50) and 1 ms (p99).
const DRIVER_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1,
];

/// Buckets from 5 ms (an Identity call) to 5 min (a slow attach plus format).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The `backend` label of an RPC whose backend is unknown (malformed or unconfigured volume ID),
/// so a client cannot grow the label set with made-up names.
pub const NO_BACKEND: &str = "none";

/// Serves Prometheus metrics on `addr` (`/metrics` and every other path).
pub fn install_exporter(addr: SocketAddr) -> Result<(), Error> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        // A full match wins over the suffix.
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(DRIVER_DURATION.into()), DRIVER_BUCKETS)
        })
        .and_then(PrometheusBuilder::install)
        .map_err(|e| Error::Internal(format!("cannot start metrics listener on {addr}: {e}")))?;
    metrics::describe_counter!(
        OPERATIONS_TOTAL,
        "CSI RPCs finished, by method, backend and gRPC code"
    );
    metrics::describe_histogram!(
        OPERATION_DURATION,
        metrics::Unit::Seconds,
        "CSI RPC latency, by method, backend and gRPC code"
    );
    metrics::describe_histogram!(
        DRIVER_DURATION,
        metrics::Unit::Seconds,
        "The driver's own time per CSI RPC, without its waits on the cloud, host tools and the kernel"
    );
    Ok(())
}

/// The `grpc_code` label for a status code.
///
/// Convention: the names grpc-go's `codes.Code.String()` prints (`OK`, `Canceled`,
/// `InvalidArgument`, `NotFound`, …), which is what go-grpc-prometheus dashboards expect.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Runs one RPC inside a `rpc` span (`method`, `volume_id`, `backend`), then counts it, records
/// its latency and logs the outcome: info with the duration, or warn with the code and message.
///
/// `service` is `identity`, `controller` or `node`; `volume_id` may be empty (e.g. for
/// GetPluginInfo); `backend` should be a configured backend's name or [`NO_BACKEND`].
pub async fn observe<T, F>(
    service: &'static str,
    method: &'static str,
    volume_id: &str,
    backend: &str,
    rpc: F,
) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let span = tracing::info_span!("rpc", method, volume_id, backend);
    let started = Instant::now();
    let (result, waited) = crate::outside::measured(rpc.instrument(span.clone())).await;
    let elapsed = started.elapsed();
    let own = elapsed.saturating_sub(waited);
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    let labels = [
        ("service", service.to_owned()),
        ("method", method.to_owned()),
        ("backend", backend.to_owned()),
        ("grpc_code", code_label(code).to_owned()),
    ];
    metrics::counter!(OPERATIONS_TOTAL, &labels).increment(1);
    metrics::histogram!(OPERATION_DURATION, &labels).record(elapsed.as_secs_f64());
    metrics::histogram!(DRIVER_DURATION, &labels).record(own.as_secs_f64());
    let _entered = span.enter();
    let seconds = elapsed.as_secs_f64();
    let driver_seconds = own.as_secs_f64();
    let read = is_read(method);
    match &result {
        Ok(_) if read => tracing::debug!(seconds, driver_seconds, "{method} succeeded"),
        Ok(_) => tracing::info!(seconds, driver_seconds, "{method} succeeded"),
        // kubelet and the sidecars repeat reads (stats, probes) and expect some to fail
        // (NOT_FOUND for a volume that is gone): those stay at debug, but a bug always shows.
        Err(status) if read && !is_bug(status.code()) => tracing::debug!(
            seconds,
            code = code_label(status.code()),
            message = status.message(),
            "{method} failed"
        ),
        Err(status) => tracing::warn!(
            seconds,
            code = code_label(status.code()),
            message = status.message(),
            "{method} failed"
        ),
    }
    result
}

/// Whether an RPC only reads (Identity calls, `Probe`, `*Get*`, `List*`, `Validate*`): those are
/// logged at debug, so the info log holds one line per call that changes something.
pub fn is_read(method: &str) -> bool {
    let verb = method
        .strip_prefix("Controller")
        .or_else(|| method.strip_prefix("Node"))
        .unwrap_or(method);
    verb == "Probe"
        || ["Get", "List", "Validate"]
            .iter()
            .any(|p| verb.starts_with(p))
}

fn is_bug(code: Code) -> bool {
    matches!(code, Code::Internal | Code::Unknown | Code::DataLoss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_follow_grpc_go() {
        assert_eq!(code_label(Code::Ok), "OK");
        assert_eq!(code_label(Code::Cancelled), "Canceled");
        assert_eq!(code_label(Code::InvalidArgument), "InvalidArgument");
    }

    #[test]
    fn reads_and_changes_are_told_apart() {
        for read in [
            "GetPluginInfo",
            "GetPluginCapabilities",
            "Probe",
            "ControllerGetCapabilities",
            "ControllerGetVolume",
            "ValidateVolumeCapabilities",
            "ListVolumes",
            "GetCapacity",
            "ListSnapshots",
            "GetSnapshot",
            "NodeGetCapabilities",
            "NodeGetInfo",
            "NodeGetVolumeStats",
        ] {
            assert!(is_read(read), "{read}");
        }
        for change in [
            "CreateVolume",
            "DeleteVolume",
            "ControllerPublishVolume",
            "ControllerUnpublishVolume",
            "ControllerExpandVolume",
            "ControllerModifyVolume",
            "CreateSnapshot",
            "DeleteSnapshot",
            "NodeStageVolume",
            "NodeUnstageVolume",
            "NodePublishVolume",
            "NodeUnpublishVolume",
            "NodeExpandVolume",
        ] {
            assert!(!is_read(change), "{change}");
        }
    }

    /// What `observe` logs at `info` and above for a few calls, as the daemons' log would show.
    fn info_lines(calls: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, calls);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn run(method: &'static str, result: Result<(), Status>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = rt.block_on(observe("node", method, "v1:evs:d", "evs", async { result }));
    }

    #[test]
    fn one_info_line_per_change_and_reads_at_debug() {
        let log = info_lines(|| {
            run("NodeStageVolume", Ok(()));
            run("NodeGetVolumeStats", Ok(()));
            run("Probe", Ok(()));
            run("NodeGetVolumeStats", Err(Status::not_found("gone")));
            run("NodePublishVolume", Err(Status::aborted("busy")));
            run("NodeGetVolumeStats", Err(Status::internal("bug")));
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        assert!(lines[0].contains("INFO") && lines[0].contains("NodeStageVolume succeeded"));
        assert!(lines[1].contains("WARN") && lines[1].contains("NodePublishVolume failed"));
        assert!(lines[2].contains("WARN") && lines[2].contains("NodeGetVolumeStats failed"));
    }

    #[tokio::test]
    async fn observe_passes_the_result_through() {
        let ok = observe("node", "NodeGetInfo", "", NO_BACKEND, async {
            Ok::<_, Status>(7)
        })
        .await;
        assert_eq!(ok.unwrap(), 7);
        let err = observe("node", "NodeStageVolume", "v1:evs:x", "evs", async {
            Err::<(), _>(Status::aborted("busy"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
    }
}
