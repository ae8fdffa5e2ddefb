//! The metrics of calls to a cloud or storage service, the same for every backend so that one
//! dashboard panel and one alert cover them all: EVS, ECS, IAM and SFS Turbo through
//! `everest_cloud`, S3 through the object backend.

use std::time::Duration;

/// Counter of API attempts by backend instance, service, operation and HTTP status (or
/// `error` when no answer came).
pub const REQUESTS_TOTAL: &str = "everest_cloud_api_requests_total";
/// Histogram of API attempt latency by backend instance, service and operation.
pub const REQUEST_DURATION: &str = "everest_cloud_api_request_duration_seconds";
/// Counter of retried API attempts by backend instance, service, operation and reason.
pub const RETRIES_TOTAL: &str = "everest_cloud_api_retries_total";

/// One attempt: `status` is the HTTP status, or `error` when none came.
pub fn record(
    backend: &str,
    service: &'static str,
    operation: &'static str,
    status: &str,
    took: Duration,
) {
    metrics::histogram!(
        REQUEST_DURATION,
        "backend" => backend.to_owned(),
        "service" => service,
        "operation" => operation,
    )
    .record(took.as_secs_f64());
    metrics::counter!(
        REQUESTS_TOTAL,
        "backend" => backend.to_owned(),
        "service" => service,
        "operation" => operation,
        "status" => status.to_owned(),
    )
    .increment(1);
}

/// Gives the metrics their help text; call once after the metrics recorder is installed.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Cloud and storage API requests sent (every attempt), by backend instance, service, operation and HTTP status"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Cloud and storage API request latency per attempt, by backend instance, service and operation"
    );
    metrics::describe_counter!(
        RETRIES_TOTAL,
        "Cloud API attempts retried, by backend instance, service, operation and reason (throttled, server_error, timeout, connection)"
    );
}
