//! The client's error type, the cloud's error bodies, and how each error should surface in CSI.
//!
//! Intended CSI mapping, encoded by [`Error::class`]:
//! - quota (`EVS.1034`, `EVS.1042`, `EVS.5413`), sold out (`EVS.2072`), attach limit
//!   (`Ecs.0104`, `Ecs.0042`), share quota (`SFS.TURBO.0010`) → `RESOURCE_EXHAUSTED`;
//! - HTTP 404, `EVS.5404`, `Ecs.0114`, `SFS.TURBO.0002`, `itemNotFound` → `NOT_FOUND`;
//! - HTTP 429, `APIGW.0308`, `Common.0024`, a busy share (`SFS.TURBO.0011`), 5xx, connection
//!   failures → `UNAVAILABLE`;
//! - a resource in the wrong state (`EVS.1046`, `EVS.1064`, `Ecs.0057`, `Ecs.0103`, HTTP 409)
//!   → `FAILED_PRECONDITION`; every other 4xx → `INVALID_ARGUMENT`;
//! - 401 / `APIGW.0301` / `EVS.5401` → `UNAUTHENTICATED`; 403 / `EVS.5403` → `PERMISSION_DENIED`;
//! - timeouts of a request, a job or a wait → `DEADLINE_EXCEEDED`;
//! - an undecodable response or a failed job without a known code → `INTERNAL`.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// The result type of the cloud API client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answer from a cloud API, whichever body shape it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code.
    pub http_status: u16,
    /// The cloud's error code, e.g. `EVS.1034`; empty when the body had none.
    pub code: String,
    /// The cloud's message (or a bounded excerpt of an unrecognised body).
    pub message: String,
    /// The gateway's request id, when given (quote it to the cloud's support).
    pub request_id: Option<String>,
}

/// The longest excerpt of an unrecognised error body kept in a message.
const MAX_EXCERPT: usize = 256;

impl ApiError {
    /// Parses an error body in any of the documented shapes; unknown shapes keep an excerpt.
    pub fn from_body(http_status: u16, body: &[u8], request_id_header: Option<&str>) -> Self {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let (code, message, request_id) = parsed
            .as_ref()
            .and_then(parse_shapes)
            .unwrap_or_else(|| (String::new(), excerpt(body), None));
        ApiError {
            http_status,
            code,
            message,
            request_id: request_id.or_else(|| request_id_header.map(str::to_owned)),
        }
    }
}

type Parsed = (String, String, Option<String>);

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn parse_shapes(v: &Value) -> Option<Parsed> {
    let obj = v.as_object()?;
    // {"error": {"code", "message"}} — EVS and ECS.
    if let Some(inner) = obj.get("error").and_then(Value::as_object) {
        return Some((
            text(inner.get("code")).unwrap_or_default(),
            text(inner.get("message")).unwrap_or_default(),
            text(obj.get("request_id")),
        ));
    }
    // {"error_code", "error_msg", "request_id"} — the API gateway.
    if obj.contains_key("error_code") || obj.contains_key("error_msg") {
        return Some((
            text(obj.get("error_code")).unwrap_or_default(),
            text(obj.get("error_msg")).unwrap_or_default(),
            text(obj.get("request_id")),
        ));
    }
    // {"errCode", "errMsg"} — SFS Turbo.
    if obj.contains_key("errCode") || obj.contains_key("errMsg") {
        return Some((
            text(obj.get("errCode")).unwrap_or_default(),
            text(obj.get("errMsg")).unwrap_or_default(),
            None,
        ));
    }
    // {"itemNotFound": {"message", "code"}} and other single-key OpenStack-style faults.
    if obj.len() == 1 {
        let (_, inner) = obj.iter().next()?;
        let inner = inner.as_object()?;
        if inner.contains_key("message") {
            return Some((
                text(inner.get("code")).unwrap_or_default(),
                text(inner.get("message")).unwrap_or_default(),
                None,
            ));
        }
    }
    None
}

fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    match s.char_indices().nth(MAX_EXCERPT) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.http_status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The attempt ran past `request_timeout`.
    Timeout,
    /// No connection could be made.
    Connect,
    /// Anything else (a reset connection, a broken body).
    Other,
}

impl TransportKind {
    /// What kind of failure a request error is.
    pub fn of(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Timeout => "timeout",
            TransportKind::Connect => "connection",
            TransportKind::Other => "transport",
        })
    }
}

/// Errors of the cloud API client (EVS, ECS, IAM, SFS Turbo).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The cloud answered with an error status.
    #[error("{service} {operation} failed: {api}")]
    Api {
        /// `evs`, `ecs`, `iam` or `metadata`.
        service: &'static str,
        /// The client operation, e.g. `create_volume`.
        operation: &'static str,
        /// The parsed answer.
        api: ApiError,
    },
    /// The request did not get an HTTP answer.
    #[error("{service} {operation} failed: {kind} error: {message}")]
    Transport {
        /// `evs`, `ecs`, `iam` or `metadata`.
        service: &'static str,
        /// The client operation.
        operation: &'static str,
        /// Timeout, connection or other.
        kind: TransportKind,
        /// The underlying error chain.
        message: String,
    },
    /// A success answer whose body was not what the API documents.
    #[error("{service} {operation}: unexpected response body: {message}")]
    Decode {
        /// `evs`, `ecs`, `iam` or `metadata`.
        service: &'static str,
        /// The client operation.
        operation: &'static str,
        /// What did not parse.
        message: String,
    },
    /// An asynchronous job ended in `FAIL`.
    #[error(
        "job {job_id} ({job_type}) failed: {}: {}",
        error_code.as_deref().unwrap_or("no error code"),
        fail_reason.as_deref().unwrap_or("no reason given")
    )]
    JobFailed {
        /// The job.
        job_id: String,
        /// e.g. `createVolume`.
        job_type: String,
        /// The job's `error_code`.
        error_code: Option<String>,
        /// The job's `fail_reason`.
        fail_reason: Option<String>,
    },
    /// A job was still running at the deadline.
    #[error("job {job_id} still {last_status} after {waited:?}; it may yet finish, poll it again")]
    JobTimeout {
        /// The job.
        job_id: String,
        /// How long was waited.
        waited: Duration,
        /// The status seen last.
        last_status: String,
    },
    /// Resources (disks, shares) did not reach the wanted state by the deadline.
    #[error("{pending:?} did not reach the wanted state within {waited:?}")]
    WaitTimeout {
        /// The resources still pending.
        pending: Vec<String>,
        /// How long was waited.
        waited: Duration,
    },
    /// A resource (disk, share) reached a state from which the wanted one cannot follow.
    #[error("{resource}: {reason}")]
    ResourceFailed {
        /// What failed, e.g. `disk 6f1c…` or `share 2b9e…`.
        resource: String,
        /// Why the wait gave up, e.g. `status error`.
        reason: String,
    },
    /// The caller passed something the API cannot take (an empty id, more than 60 ids, …).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The configuration or credentials are unusable.
    #[error("cloud client configuration: {0}")]
    Config(String),
}

/// How an error should surface to a CSI caller; one arm per gRPC code the client can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// `NOT_FOUND`.
    NotFound,
    /// `RESOURCE_EXHAUSTED` (quota, capacity, attach slots).
    ResourceExhausted,
    /// `UNAVAILABLE` (throttled, server error, no connection): try again later.
    Unavailable,
    /// `DEADLINE_EXCEEDED`.
    DeadlineExceeded,
    /// `INVALID_ARGUMENT`.
    InvalidArgument,
    /// `FAILED_PRECONDITION` (the resource is in the wrong state).
    FailedPrecondition,
    /// `UNAUTHENTICATED`.
    Unauthenticated,
    /// `PERMISSION_DENIED`.
    PermissionDenied,
    /// `INTERNAL`.
    Internal,
}

const QUOTA_CODES: &[&str] = &[
    "EVS.1034",
    "EVS.1042",
    "EVS.5413",
    "EVS.2072",
    "Ecs.0104",
    "Ecs.0042",
    "SFS.TURBO.0010",
];
const NOT_FOUND_CODES: &[&str] = &["EVS.5404", "Ecs.0114", "SFS.TURBO.0002"];
// SFS.TURBO.0011: the share is busy with another operation; it frees itself.
const THROTTLE_CODES: &[&str] = &["APIGW.0308", "Common.0024", "SFS.TURBO.0011"];
// EVS.1047: a snapshot deleted while not available/error; EVS.2043: a disk made from a
// snapshot that is not available.
const STATE_CODES: &[&str] = &[
    "EVS.1046", "EVS.1047", "EVS.1064", "EVS.2043", "Ecs.0057", "Ecs.0103",
];
const RETRYABLE_CODES: &[&str] = &["EVS.5500", "EVS.5503"];

fn class_of_code(code: &str) -> Option<ErrorClass> {
    let is = |set: &[&str]| set.iter().any(|c| c.eq_ignore_ascii_case(code));
    if is(QUOTA_CODES) {
        Some(ErrorClass::ResourceExhausted)
    } else if is(NOT_FOUND_CODES) {
        Some(ErrorClass::NotFound)
    } else if is(THROTTLE_CODES) || is(RETRYABLE_CODES) {
        Some(ErrorClass::Unavailable)
    } else if is(STATE_CODES) {
        Some(ErrorClass::FailedPrecondition)
    } else if code.eq_ignore_ascii_case("APIGW.0301") || code.eq_ignore_ascii_case("EVS.5401") {
        Some(ErrorClass::Unauthenticated)
    } else if code.eq_ignore_ascii_case("EVS.5403") {
        Some(ErrorClass::PermissionDenied)
    } else {
        None
    }
}

impl ApiError {
    /// The CSI class of this answer: the code decides first, then the HTTP status.
    pub fn class(&self) -> ErrorClass {
        if let Some(class) = class_of_code(&self.code) {
            return class;
        }
        match self.http_status {
            404 => ErrorClass::NotFound,
            401 => ErrorClass::Unauthenticated,
            403 => ErrorClass::PermissionDenied,
            409 => ErrorClass::FailedPrecondition,
            413 => ErrorClass::ResourceExhausted,
            429 | 500..=599 => ErrorClass::Unavailable,
            400..=499 => ErrorClass::InvalidArgument,
            _ => ErrorClass::Internal,
        }
    }

    /// Throttling or a server-side failure: worth another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(self.http_status, 429 | 500..=599)
    }
}

impl Error {
    /// Whether a later attempt may succeed unchanged: 429, 5xx, timeouts, connection failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { api, .. } => api.is_retryable(),
            Error::Transport { kind, .. } => {
                matches!(kind, TransportKind::Timeout | TransportKind::Connect)
            }
            _ => false,
        }
    }

    /// Whether the cloud said the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Api { api, .. } => api.class() == ErrorClass::NotFound,
            _ => false,
        }
    }

    /// The cloud's error code (`EVS.1034`, `Ecs.0111`, a job's `error_code`), when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { api, .. } if !api.code.is_empty() => Some(&api.code),
            Error::JobFailed { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// The CSI class of this error (see the module documentation for the table).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Api { api, .. } => api.class(),
            Error::Transport { kind, .. } => match kind {
                TransportKind::Timeout => ErrorClass::DeadlineExceeded,
                TransportKind::Connect | TransportKind::Other => ErrorClass::Unavailable,
            },
            Error::Decode { .. } => ErrorClass::Internal,
            Error::JobFailed { error_code, .. } => error_code
                .as_deref()
                .and_then(class_of_code)
                .unwrap_or(ErrorClass::Internal),
            Error::JobTimeout { .. } | Error::WaitTimeout { .. } => ErrorClass::DeadlineExceeded,
            Error::ResourceFailed { .. } => ErrorClass::Internal,
            Error::InvalidInput(_) => ErrorClass::InvalidArgument,
            Error::Config(_) => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> ApiError {
        ApiError::from_body(status, body.as_bytes(), None)
    }

    #[test]
    fn evs_ecs_shape() {
        let e = parse(
            400,
            r#"{"error":{"code":"EVS.1034","message":"quota exceeded"}}"#,
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("EVS.1034", "quota exceeded")
        );
        assert_eq!(e.class(), ErrorClass::ResourceExhausted);
        assert!(!e.is_retryable());
    }

    #[test]
    fn gateway_shape_with_request_id() {
        let e = parse(
            401,
            r#"{"error_code":"APIGW.0301","error_msg":"Incorrect IAM authentication information","request_id":"abc123"}"#,
        );
        assert_eq!(e.code, "APIGW.0301");
        assert_eq!(e.request_id.as_deref(), Some("abc123"));
        assert_eq!(e.class(), ErrorClass::Unauthenticated);
        assert_eq!(
            e.to_string(),
            "HTTP 401 APIGW.0301: Incorrect IAM authentication information (request id abc123)"
        );
    }

    #[test]
    fn sfs_turbo_shape() {
        let e = parse(
            404,
            r#"{"errCode":"SFS.TURBO.0002","errMsg":"share not found"}"#,
        );
        assert_eq!(e.code, "SFS.TURBO.0002");
        assert_eq!(e.message, "share not found");
        assert_eq!(e.class(), ErrorClass::NotFound);
    }

    #[test]
    fn item_not_found_shape() {
        let e = parse(
            404,
            r#"{"itemNotFound":{"message":"snapshot x could not be found","code":404}}"#,
        );
        assert_eq!(e.code, "404");
        assert_eq!(e.message, "snapshot x could not be found");
        assert_eq!(e.class(), ErrorClass::NotFound);
    }

    #[test]
    fn unknown_body_keeps_bounded_excerpt_and_header_request_id() {
        let long = "x".repeat(1000);
        let e = ApiError::from_body(502, long.as_bytes(), Some("rid"));
        assert!(e.code.is_empty());
        assert!(e.message.chars().count() <= MAX_EXCERPT + 1);
        assert_eq!(e.request_id.as_deref(), Some("rid"));
        assert!(e.is_retryable());
        assert_eq!(e.class(), ErrorClass::Unavailable);
        assert_eq!(parse(500, "").message, "");
    }

    #[test]
    fn status_classes() {
        let class = |s| parse(s, "{}").class();
        assert_eq!(class(404), ErrorClass::NotFound);
        assert_eq!(class(403), ErrorClass::PermissionDenied);
        assert_eq!(class(409), ErrorClass::FailedPrecondition);
        assert_eq!(class(429), ErrorClass::Unavailable);
        assert_eq!(class(503), ErrorClass::Unavailable);
        assert_eq!(class(400), ErrorClass::InvalidArgument);
        assert_eq!(
            parse(
                400,
                r#"{"error":{"code":"EVS.1046","message":"bad state"}}"#
            )
            .class(),
            ErrorClass::FailedPrecondition
        );
        assert_eq!(
            parse(
                429,
                r#"{"error_code":"APIGW.0308","error_msg":"throttled"}"#
            )
            .class(),
            ErrorClass::Unavailable
        );
    }

    #[test]
    fn retryable_and_not_found_on_error() {
        let api = |status: u16, body: &str| Error::Api {
            service: "evs",
            operation: "get_volume",
            api: parse(status, body),
        };
        assert!(api(429, "{}").is_retryable());
        assert!(api(500, "{}").is_retryable());
        assert!(!api(400, "{}").is_retryable());
        assert!(!api(404, "{}").is_retryable());
        assert!(api(404, "{}").is_not_found());
        assert!(api(400, r#"{"error":{"code":"EVS.5404","message":"gone"}}"#).is_not_found());
        let t = |kind| Error::Transport {
            service: "evs",
            operation: "x",
            kind,
            message: String::new(),
        };
        assert!(t(TransportKind::Timeout).is_retryable());
        assert!(t(TransportKind::Connect).is_retryable());
        assert!(!t(TransportKind::Other).is_retryable());
        assert_eq!(
            t(TransportKind::Timeout).class(),
            ErrorClass::DeadlineExceeded
        );
    }

    #[test]
    fn job_failure_class_follows_its_code() {
        let failed = |code: Option<&str>| Error::JobFailed {
            job_id: "j".into(),
            job_type: "createVolume".into(),
            error_code: code.map(str::to_owned),
            fail_reason: Some("why".into()),
        };
        assert_eq!(
            failed(Some("EVS.2072")).class(),
            ErrorClass::ResourceExhausted
        );
        assert_eq!(failed(None).class(), ErrorClass::Internal);
        assert_eq!(failed(Some("EVS.2072")).code(), Some("EVS.2072"));
        assert!(failed(None).to_string().contains("no error code: why"));
    }
}
