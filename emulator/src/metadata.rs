//! The instance-metadata service (`/openstack/latest/meta_data.json`), unauthenticated.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::cloud::Cloud;

/// `GET /openstack/latest/meta_data.json` — what the node reads to learn its id and zone.
pub async fn meta_data(State(cloud): State<Arc<Cloud>>) -> Json<Value> {
    let name = cloud.server_name();
    Json(json!({
        "uuid": cloud.cfg.server_id,
        "availability_zone": cloud.cfg.availability_zone,
        "project_id": cloud.cfg.project_id,
        "name": name,
        "hostname": format!("{name}.novalocal"),
        "launch_index": 0,
        "meta": {},
        "devices": [],
    }))
}
