//! Error bodies in the shapes the real cloud uses (see the facts file).

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API failure, rendered in one of the cloud's error-body shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// `{"error":{"code","message"}}` — EVS (`EVS.xxxx`), ECS (`Ecs.xxxx`) and jobs (`Common.xxxx`).
    Service {
        /// HTTP status.
        status: StatusCode,
        /// Service error code such as `EVS.1046`.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// `{"itemNotFound":{"message","code"}}` — the OpenStack-style 404 (see [`FaultCode`]).
    ItemNotFound {
        /// What goes in `code`.
        code: FaultCode,
        /// Human-readable message.
        message: String,
    },
    /// `{"badRequest":{"message","code"}}` — the OpenStack-style 400 for bad queries.
    BadRequest {
        /// What goes in `code`.
        code: FaultCode,
        /// Human-readable message.
        message: String,
    },
    /// `{"errCode","errMsg"}` — SFS Turbo (`SFS.TURBO.00xx`).
    Sfs {
        /// HTTP status.
        status: StatusCode,
        /// Service error code such as `SFS.TURBO.0002`.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// `{"error_code","error_msg","request_id"}` — the API gateway (auth, throttling).
    Gateway {
        /// HTTP status.
        status: StatusCode,
        /// Gateway code such as `APIGW.0301`.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
}

/// The `code` of an OpenStack-style fault body. EVS documents it as a string holding its
/// service code (`"EVS.5404"`); the Nova-compatible ECS v2.1 API sends the HTTP status as a
/// number, as Nova does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// A service code such as `EVS.5404`, sent as a string.
    Service(&'static str),
    /// The HTTP status, sent as a number (Nova).
    HttpStatus,
}

impl FaultCode {
    fn json(self, status: StatusCode) -> serde_json::Value {
        match self {
            FaultCode::Service(code) => json!(code),
            FaultCode::HttpStatus => json!(status.as_u16()),
        }
    }
}

impl ApiError {
    /// EVS's 404 for a missing disk: `itemNotFound` with the string code `EVS.5404`.
    pub fn evs_not_found(message: impl Into<String>) -> Self {
        ApiError::ItemNotFound {
            code: FaultCode::Service("EVS.5404"),
            message: message.into(),
        }
    }

    /// A `badRequest` fault with a service code (bad query parameters, bad control bodies).
    pub fn bad_query(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: FaultCode::Service(code),
            message: message.into(),
        }
    }

    /// A 400 with a service code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Service {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// A service error with an explicit status.
    pub fn service(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Service {
            status,
            code,
            message: message.into(),
        }
    }

    /// An internal failure of the emulator itself (retryable, like the cloud's EVS.5500).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::service(StatusCode::INTERNAL_SERVER_ERROR, "EVS.5500", message)
    }

    /// An SFS Turbo error (`{"errCode","errMsg"}`).
    pub fn sfs(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Sfs {
            status,
            code,
            message: message.into(),
        }
    }

    /// The gateway's 401 for a bad signature or token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Gateway {
            status: StatusCode::UNAUTHORIZED,
            code: "APIGW.0301",
            message: message.into(),
        }
    }

    /// The service code, if any (handy in tests).
    pub fn code(&self) -> &str {
        match self {
            ApiError::Service { code, .. }
            | ApiError::Sfs { code, .. }
            | ApiError::Gateway { code, .. } => code,
            ApiError::ItemNotFound {
                code: FaultCode::Service(code),
                ..
            }
            | ApiError::BadRequest {
                code: FaultCode::Service(code),
                ..
            } => code,
            ApiError::ItemNotFound { .. } => "itemNotFound",
            ApiError::BadRequest { .. } => "badRequest",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Service { code, message, .. }
            | ApiError::Sfs { code, message, .. }
            | ApiError::Gateway { code, message, .. } => write!(f, "{code}: {message}"),
            ApiError::ItemNotFound { message, .. } => write!(f, "not found: {message}"),
            ApiError::BadRequest { message, .. } => write!(f, "bad request: {message}"),
        }
    }
}

impl std::error::Error for ApiError {}

tokio::task_local! {
    /// The id of the request being served, set by [`with_request_id`].
    static REQUEST_ID: String;
}

/// The id of the request being served (the `X-Request-Id` header), or a fresh one outside a
/// request, in the gateway's style (32 hex chars).
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(String::clone)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().simple().to_string())
}

/// Gives every response an `X-Request-Id` header, as the real gateway does (the official SDKs
/// take the request id of an error from it), and the same id to gateway error bodies.
pub async fn with_request_id(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", value);
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Service {
                status,
                code,
                message,
            } => (
                status,
                Json(json!({"error": {"code": code, "message": message}})),
            )
                .into_response(),
            ApiError::Sfs {
                status,
                code,
                message,
            } => (status, Json(json!({"errCode": code, "errMsg": message}))).into_response(),
            ApiError::ItemNotFound { code, message } => (
                StatusCode::NOT_FOUND,
                Json(json!({"itemNotFound": {
                    "message": message,
                    "code": code.json(StatusCode::NOT_FOUND),
                }})),
            )
                .into_response(),
            ApiError::BadRequest { code, message } => (
                StatusCode::BAD_REQUEST,
                Json(json!({"badRequest": {
                    "message": message,
                    "code": code.json(StatusCode::BAD_REQUEST),
                }})),
            )
                .into_response(),
            ApiError::Gateway {
                status,
                code,
                message,
            } => (
                status,
                Json(json!({"error_code": code, "error_msg": message, "request_id": request_id()})),
            )
                .into_response(),
        }
    }
}
