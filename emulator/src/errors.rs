//! Error bodies in the shapes the real cloud uses (see the facts file).

use axum::Json;
use axum::http::StatusCode;
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
    /// `{"itemNotFound":{"message","code":404}}` — the OpenStack-style 404.
    ItemNotFound(String),
    /// `{"badRequest":{"message","code":400}}` — the OpenStack-style 400 for bad queries.
    BadRequest(String),
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

impl ApiError {
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
            ApiError::Service { code, .. } | ApiError::Gateway { code, .. } => code,
            ApiError::ItemNotFound(_) => "itemNotFound",
            ApiError::BadRequest(_) => "badRequest",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Service { code, message, .. } | ApiError::Gateway { code, message, .. } => {
                write!(f, "{code}: {message}")
            }
            ApiError::ItemNotFound(m) => write!(f, "not found: {m}"),
            ApiError::BadRequest(m) => write!(f, "bad request: {m}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// A fresh request id in the gateway's style (32 hex chars).
pub fn request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
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
            ApiError::ItemNotFound(message) => (
                StatusCode::NOT_FOUND,
                Json(json!({"itemNotFound": {"message": message, "code": 404}})),
            )
                .into_response(),
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"badRequest": {"message": message, "code": 400}})),
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
