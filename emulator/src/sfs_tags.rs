//! SFS Turbo share tags: `GET /v1/{p}/sfs-turbo/{id}/tags` → `{"tags": [{"key","value"}]}` and
//! `POST /v1/{p}/sfs-turbo/{id}/tags/action` `{"action": "create"|"delete", "tags": [...]}` →
//! 204. Creating a key that exists replaces its value (the API is idempotent). The limits are
//! the API reference's: at most 20 tags on a share; keys of 1–128 letters, digits, `-` or `_`;
//! values of at most 255 characters, none of them a control character or one of `=*<>\,|/`.
//! A request breaking any of them changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::sfs::{check_project, not_found, param_error};

/// Most tags one share carries.
pub const MAX_TAGS: usize = 20;

#[derive(Debug, Deserialize)]
struct Tag {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct ActionBody {
    action: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

fn check_tag(t: &Tag) -> Result<(), ApiError> {
    let key_ok = !t.key.is_empty()
        && t.key.chars().count() <= 128
        && t.key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !key_ok {
        return Err(param_error(format!(
            "invalid tag key {:?}: 1-128 letters, digits, '-' or '_'",
            t.key
        )));
    }
    let value_ok = t.value.chars().count() <= 255
        && !t
            .value
            .chars()
            .any(|c| c.is_control() || "=*<>\\,|/".contains(c));
    if !value_ok {
        return Err(param_error(format!(
            "invalid value of tag {}: at most 255 characters, none of =*<>\\,|/",
            t.key
        )));
    }
    Ok(())
}

/// Applies a tag action to a share that is not deleted.
pub fn tags_action(cloud: &Cloud, project: &str, id: &str, body: &[u8]) -> Result<(), ApiError> {
    check_project(cloud, project)?;
    let req: ActionBody = serde_json::from_slice(body)
        .map_err(|e| param_error(format!("invalid request body: {e}")))?;
    if req.tags.is_empty() {
        return Err(param_error("tags is required"));
    }
    let mut inner = cloud.lock();
    let share = inner
        .state
        .project_share_mut(project, id)
        .ok_or_else(|| not_found(id))?;
    let mut tags = share.tags.clone();
    match req.action.as_str() {
        "create" => {
            for t in &req.tags {
                check_tag(t)?;
                tags.insert(t.key.clone(), t.value.clone());
            }
        }
        "delete" => {
            for t in &req.tags {
                tags.remove(&t.key);
            }
        }
        other => return Err(param_error(format!("invalid action {other:?}"))),
    }
    if tags.len() > MAX_TAGS {
        return Err(param_error(format!(
            "a share holds at most {MAX_TAGS} tags; this would make {}",
            tags.len()
        )));
    }
    share.tags = tags;
    cloud.commit(&mut inner)?;
    Ok(())
}

/// The tags of a share, as the API lists them.
pub fn show_tags(cloud: &Cloud, project: &str, id: &str) -> Result<Value, ApiError> {
    check_project(cloud, project)?;
    let inner = cloud.lock();
    let share = inner
        .state
        .project_share(project, id)
        .ok_or_else(|| not_found(id))?;
    Ok(tags_view(&share.tags))
}

fn tags_view(tags: &BTreeMap<String, String>) -> Value {
    let list: Vec<Value> = tags
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    json!({ "tags": list })
}

/// `GET /v1/{p}/sfs-turbo/{id}/tags`.
pub async fn show_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    show_tags(&cloud, &project, &id).map(Json)
}

/// `POST /v1/{p}/sfs-turbo/{id}/tags/action` → 204.
pub async fn action_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    tags_action(&cloud, &project, &id, &body)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PROJECT_ID as P;
    use crate::sfs;
    use crate::tests::world;

    fn share(w: &crate::tests::World) -> String {
        let body = br#"{"share":{"name":"tagged","share_proto":"NFS","share_type":"STANDARD","size":500,"availability_zone":"emu-az1","vpc_id":"v","subnet_id":"s","security_group_id":"g"}}"#;
        sfs::create_share(&w.cloud, P, body).unwrap().id
    }

    fn code(r: Result<(), ApiError>) -> String {
        r.unwrap_err().code().to_owned()
    }

    #[test]
    fn tags_are_stored_replaced_and_deleted() {
        let w = world();
        let id = share(&w);
        let create = br#"{"action":"create","tags":[{"key":"everest-pv-name","value":"pvc-1"},{"key":"team","value":"a"}]}"#;
        tags_action(&w.cloud, P, &id, create).unwrap();
        // Idempotent: the same again, and a new value replaces the old.
        tags_action(&w.cloud, P, &id, create).unwrap();
        tags_action(
            &w.cloud,
            P,
            &id,
            br#"{"action":"create","tags":[{"key":"team","value":"b"}]}"#,
        )
        .unwrap();
        let shown = show_tags(&w.cloud, P, &id).unwrap();
        assert_eq!(
            shown,
            json!({"tags": [{"key": "everest-pv-name", "value": "pvc-1"}, {"key": "team", "value": "b"}]})
        );
        tags_action(
            &w.cloud,
            P,
            &id,
            br#"{"action":"delete","tags":[{"key":"team"}]}"#,
        )
        .unwrap();
        assert_eq!(
            show_tags(&w.cloud, P, &id).unwrap()["tags"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            code(show_tags(&w.cloud, P, "nope").map(|_| ())),
            "SFS.TURBO.0002"
        );
    }

    #[test]
    fn limits_are_enforced_and_a_refused_request_changes_nothing() {
        let w = world();
        let id = share(&w);
        let long_key = "k".repeat(129);
        let long_value = "v".repeat(256);
        for bad in [
            format!(r#"{{"action":"create","tags":[{{"key":"{long_key}","value":"v"}}]}}"#),
            format!(r#"{{"action":"create","tags":[{{"key":"k","value":"{long_value}"}}]}}"#),
            r#"{"action":"create","tags":[{"key":"kubernetes.io/pv","value":"v"}]}"#.to_owned(),
            r#"{"action":"create","tags":[{"key":"k","value":"a/b"}]}"#.to_owned(),
            r#"{"action":"create","tags":[{"key":"","value":"v"}]}"#.to_owned(),
            r#"{"action":"rename","tags":[{"key":"k","value":"v"}]}"#.to_owned(),
            r#"{"action":"create","tags":[]}"#.to_owned(),
        ] {
            assert_eq!(
                code(tags_action(&w.cloud, P, &id, bad.as_bytes())),
                "SFS.TURBO.0001",
                "{bad}"
            );
        }
        let twenty: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"key":"k{i}","value":"v"}}"#))
            .collect();
        let body = format!(r#"{{"action":"create","tags":[{}]}}"#, twenty.join(","));
        tags_action(&w.cloud, P, &id, body.as_bytes()).unwrap();
        let one_more = br#"{"action":"create","tags":[{"key":"k20","value":"v"}]}"#;
        assert_eq!(
            code(tags_action(&w.cloud, P, &id, one_more)),
            "SFS.TURBO.0001"
        );
        assert_eq!(
            show_tags(&w.cloud, P, &id).unwrap()["tags"]
                .as_array()
                .unwrap()
                .len(),
            20
        );
        // The edge of each limit is accepted.
        let edge = format!(
            r#"{{"action":"create","tags":[{{"key":"{}","value":"{}"}}]}}"#,
            "k".repeat(128),
            "v".repeat(255)
        );
        tags_action(
            &w.cloud,
            P,
            &id,
            br#"{"action":"delete","tags":[{"key":"k0"}]}"#,
        )
        .unwrap();
        tags_action(&w.cloud, P, &id, edge.as_bytes()).unwrap();
    }
}
