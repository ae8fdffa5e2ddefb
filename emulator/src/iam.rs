//! IAM: `POST /v3/auth/tokens` (password identity, project scope) and token checks.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::auth::sha256_hex;
use crate::cloud::Cloud;
use crate::state::TokenRecord;

/// Tokens are valid this long, as IAM's are.
const TOKEN_HOURS: i64 = 24;

#[derive(Deserialize)]
struct TokenRequest {
    auth: AuthBody,
}

#[derive(Deserialize)]
struct AuthBody {
    identity: Identity,
    scope: Option<Scope>,
}

#[derive(Deserialize)]
struct Identity {
    methods: Vec<String>,
    password: Option<PasswordIdentity>,
}

#[derive(Deserialize)]
struct PasswordIdentity {
    user: UserBody,
}

#[derive(Deserialize)]
struct UserBody {
    name: String,
    password: String,
    domain: NameOnly,
}

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

#[derive(Deserialize)]
struct Scope {
    project: Option<ProjectScope>,
}

#[derive(Deserialize)]
struct ProjectScope {
    id: Option<String>,
    name: Option<String>,
}

fn keystone_error(status: StatusCode, title: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "title": title, "message": message}})),
    )
        .into_response()
}

fn unauthorized() -> Response {
    keystone_error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "The request you have made requires authentication.",
    )
}

fn iam_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A fresh opaque token (never stored or logged in clear).
fn new_token() -> String {
    let mut bytes = [0u8; 48];
    rand::fill(&mut bytes);
    format!("MII{}", hex::encode(bytes))
}

/// `POST /v3/auth/tokens`.
pub async fn issue(State(cloud): State<Arc<Cloud>>, body: Bytes) -> Response {
    // The body holds a password: never echo it, not even inside a parse error.
    let Ok(req) = serde_json::from_slice::<TokenRequest>(&body) else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "malformed auth request",
        );
    };
    let auth = req.auth;
    let Some(pw) = auth
        .identity
        .password
        .filter(|_| auth.identity.methods.iter().any(|m| m == "password"))
    else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "only the password method is supported",
        );
    };
    if !cloud
        .creds()
        .check_password(&pw.user.domain.name, &pw.user.name, &pw.user.password)
    {
        tracing::info!(user = %pw.user.name, "token refused: bad user or password");
        return unauthorized();
    }
    let Some(project) = auth.scope.and_then(|s| s.project) else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "a project scope is required",
        );
    };
    let matches = project.id.as_deref() == Some(cloud.cfg.project_id.as_str())
        || (project.id.is_none() && project.name.as_deref() == Some(cloud.cfg.region.as_str()));
    if !matches {
        return unauthorized();
    }
    let token = new_token();
    let now = Utc::now();
    let expires_at = now + chrono::Duration::hours(TOKEN_HOURS);
    {
        let mut inner = cloud.lock();
        inner.state.tokens.insert(
            sha256_hex(token.as_bytes()),
            TokenRecord {
                project_id: cloud.cfg.project_id.clone(),
                expires_at,
            },
        );
        if let Err(e) = cloud.commit(&mut inner) {
            return e.into_response();
        }
    }
    let Ok(header) = HeaderValue::from_str(&token) else {
        return keystone_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            "token encoding",
        );
    };
    let body = json!({"token": {
        "expires_at": iam_time(expires_at),
        "issued_at": iam_time(now),
        "methods": ["password"],
        "project": {"id": cloud.cfg.project_id, "name": cloud.cfg.region},
        "user": {"name": pw.user.name, "domain": {"name": pw.user.domain.name}},
    }});
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert("x-subject-token", header);
    resp
}

/// Whether a presented `X-Auth-Token` is one we issued and still valid.
pub fn token_valid(cloud: &Cloud, token: &str) -> bool {
    let hash = sha256_hex(token.as_bytes());
    cloud
        .lock()
        .state
        .tokens
        .get(&hash)
        .is_some_and(|t| t.expires_at > Utc::now() && t.project_id == cloud.cfg.project_id)
}
