//! The HTTP server: routes, the auth and logging middleware, start-up and shutdown.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::auth::{Credentials, CredentialsError, RequestParts, verify};
use crate::cloud::Cloud;
use crate::config::Config;
use crate::effects::LinuxEffects;
use crate::errors::ApiError;
use crate::{
    ecs, errors, evs, evs_list, evs_modify, evs_snapshots, faults, iam, jobs, metadata, sfs,
    sfs_tags,
};

/// Largest request body accepted (the APIs take small JSON documents).
const MAX_BODY: usize = 1024 * 1024;

/// Why the emulator could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The credentials file is unusable.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// State dir, by-id dir or socket trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Re-creating attachments at start failed.
    #[error("cannot reconcile attachments: {0}")]
    Reconcile(ApiError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Authenticates a cloud API call: an issued `X-Auth-Token` or a valid AK/SK signature.
async fn authenticate(State(cloud): State<Arc<Cloud>>, req: Request, next: Next) -> Response {
    if let Some(token) = req.headers().get("x-auth-token") {
        let ok = token.to_str().is_ok_and(|t| iam::token_valid(&cloud, t));
        if !ok {
            return ApiError::unauthorized(
                "Incorrect IAM authentication information: token is invalid or expired",
            )
            .into_response();
        }
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return ApiError::bad_query("EVS.1009", "request body too large or unreadable")
            .into_response();
    };
    let rp = RequestParts {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query(),
        headers: &parts.headers,
        body: &bytes,
    };
    // Decided before the handler runs: the credentials lock is not held across it.
    let verdict = verify(&cloud.creds(), &rp, chrono::Utc::now());
    match verdict {
        Ok(_ak) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(reason) => {
            // The reason names the failed check only; signatures and keys stay out of logs.
            tracing::info!(path = %parts.uri.path(), %reason, "authentication failed");
            ApiError::unauthorized(format!(
                "Incorrect IAM authentication information: {reason}"
            ))
            .into_response()
        }
    }
}

/// Logs method, path and status of every request (never headers, query or body).
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        %method,
        %path,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn unknown_api() -> ApiError {
    ApiError::Gateway {
        status: StatusCode::NOT_FOUND,
        code: "APIGW.0101",
        message: "The API does not exist or has not been published in the environment".into(),
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn dump_state(State(cloud): State<Arc<Cloud>>) -> Json<Value> {
    let inner = cloud.lock();
    Json(serde_json::to_value(&inner.state).unwrap_or(Value::Null))
}

/// All routes, wired to one cloud.
pub fn router(cloud: Arc<Cloud>) -> Router {
    let api = Router::new()
        .route("/v2.1/{p}/cloudvolumes", post(evs::create_handler))
        .route("/v2/{p}/cloudvolumes/detail", get(evs_list::list_handler))
        .route(
            "/v2/{p}/cloudvolumes/{id}",
            get(evs::get_handler).delete(evs::delete_handler),
        )
        .route(
            "/v2.1/{p}/cloudvolumes/{id}/action",
            post(evs::action_handler),
        )
        .route(
            "/v2/{p}/cloudsnapshots",
            post(evs_snapshots::create_handler),
        )
        .route(
            "/v2/{p}/cloudsnapshots/detail",
            get(evs_snapshots::list_handler),
        )
        .route(
            "/v2/{p}/cloudsnapshots/{id}",
            get(evs_snapshots::get_handler).delete(evs_snapshots::delete_handler),
        )
        .route(
            "/v2/{p}/volumes/{id}/retype",
            post(evs_modify::retype_handler),
        )
        .route(
            "/v5/{p}/cloudvolumes/{id}/qos",
            axum::routing::put(evs_modify::qos_handler),
        )
        .route("/v1/{p}/jobs/{job_id}", get(jobs::get_job))
        .route(
            "/v1/{p}/cloudservers/{server_id}/attachvolume",
            post(ecs::attach_handler),
        )
        .route(
            "/v1/{p}/cloudservers/{server_id}/detachvolume/{volume_id}",
            axum::routing::delete(ecs::detach_handler),
        )
        .route(
            "/v1/{p}/cloudservers/{server_id}/block_device",
            get(ecs::block_device_handler),
        )
        .route(
            "/v1/{p}/cloudservers/{server_id}/block_device/{volume_id}",
            get(ecs::block_device_one_handler),
        )
        .route(
            "/v1/{p}/cloudservers/{server_id}",
            get(ecs::cloudserver_handler),
        )
        .route(
            "/v1/{p}/cloudservers/{server_id}/os-volume_attachments",
            get(ecs::cloudserver_attachments_handler),
        )
        .route("/v2.1/{p}/servers/{server_id}", get(ecs::server_handler))
        .route("/v1/{p}/sfs-turbo/shares", post(sfs::create_handler))
        .route("/v1/{p}/sfs-turbo/shares/detail", get(sfs::list_handler))
        .route(
            "/v1/{p}/sfs-turbo/shares/{id}",
            get(sfs::get_handler).delete(sfs::delete_handler),
        )
        .route(
            "/v1/{p}/sfs-turbo/shares/{id}/action",
            post(sfs::action_handler),
        )
        .route("/v1/{p}/sfs-turbo/{id}/tags", get(sfs_tags::show_handler))
        .route(
            "/v1/{p}/sfs-turbo/{id}/tags/action",
            post(sfs_tags::action_handler),
        )
        .route(
            "/v2.1/{p}/servers/{server_id}/os-volume_attachments",
            get(ecs::attachments_handler),
        )
        // Added last = runs first: authenticate, then inject faults, then the handler.
        .layer(from_fn_with_state(cloud.clone(), faults::inject))
        .layer(from_fn_with_state(cloud.clone(), authenticate));
    let open = Router::new()
        .route("/v3/auth/tokens", post(iam::issue))
        .route("/openstack/latest/meta_data.json", get(metadata::meta_data))
        .route(
            "/_emulator/faults",
            get(faults::get_faults).put(faults::put_faults),
        )
        .route("/_emulator/state", get(dump_state))
        .route("/_emulator/credentials/reload", post(reload_credentials))
        .route("/_emulator/health", get(health));
    api.merge(open)
        .fallback(unknown_api)
        .layer(from_fn(log_request))
        // Outermost, so every answer (gateway errors, faults, unknown paths) carries the id.
        .layer(from_fn(errors::with_request_id))
        .with_state(cloud)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot watch SIGINT");
                std::future::pending::<()>().await;
            }
        },
    }
    tracing::info!("shutdown requested");
}

/// `POST /_emulator/credentials/reload`: accept what the credentials file holds now.
async fn reload_credentials(State(cloud): State<Arc<Cloud>>) -> Result<Json<Value>, ApiError> {
    cloud
        .reload_credentials()
        .map_err(|e| ApiError::bad_request("EMU.0001", e.to_string()))?;
    tracing::info!("credentials reloaded");
    Ok(Json(json!({"status": "reloaded"})))
}

/// Runs the emulator until SIGTERM/SIGINT: load state, reconcile, listen, announce, serve.
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    let creds = Credentials::load(&cfg.credentials_file)?;
    std::fs::create_dir_all(&cfg.by_id_dir).map_err(io_err(format!(
        "cannot create by-id dir {}",
        cfg.by_id_dir.display()
    )))?;
    if !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "listening on a non-loopback address");
    }
    let listen = cfg.listen;
    let cleanup = cfg.cleanup_on_exit;
    let state_dir = cfg.state_dir.display().to_string();
    let cloud = Cloud::new(cfg, creds, Arc::new(LinuxEffects))
        .map_err(io_err(format!("cannot open state in {state_dir}")))?;
    let cloud = Arc::new(cloud);
    let c = cloud.clone();
    tokio::task::spawn_blocking(move || c.reconcile_attachments())
        .await
        .map_err(|e| ServeError::Reconcile(ApiError::internal(e.to_string())))?
        .map_err(ServeError::Reconcile)?;
    jobs::resume_all(&cloud);
    sfs::resume_all(&cloud);
    evs_snapshots::resume_all(&cloud);

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(io_err(format!("cannot listen on {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("cannot read the bound address"))?;
    {
        // Tests using port 0 read this exact line to find the port.
        let mut out = std::io::stdout().lock();
        writeln!(out, "EVEREST_EMULATOR_LISTENING={addr}")
            .and_then(|()| out.flush())
            .map_err(io_err("cannot announce the address"))?;
    }
    tracing::info!(%addr, "everest-emulator listening");
    let served = axum::serve(listener, router(cloud.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(io_err("server failed"));
    if cleanup {
        let c = cloud.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || c.cleanup_host()).await {
            tracing::error!(error = %e, "cleanup panicked");
        }
        tracing::info!("detached loop devices and removed links (--cleanup-on-exit)");
    }
    served
}
