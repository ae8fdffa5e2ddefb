//! EVS: `GET /v2/{p}/cloudvolumes/detail` with its filters and pagination.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::evs::{base_url, view};
use crate::state::Disk;

/// Most ids one `ids` filter may name.
pub const MAX_IDS: usize = 60;
/// Default and largest page.
pub const MAX_LIMIT: usize = 1000;

/// Parsed listing query.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ListQuery {
    name: Option<String>,
    status: Option<String>,
    metadata: Option<BTreeMap<String, Value>>,
    ids: Option<Vec<String>>,
    id: Option<String>,
    availability_zone: Option<String>,
    server_id: Option<String>,
    multiattach: Option<bool>,
    sort_key: SortKey,
    descending: bool,
    limit: usize,
    offset: usize,
    marker: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    #[default]
    CreatedAt,
    Id,
    Name,
    Size,
}

/// The published EVS error table names no code for a malformed list query; this one is chosen.
const BAD_QUERY: &str = "EVS.2001";

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_query(BAD_QUERY, message)
}

/// Parses `['a','b']` (quotes optional).
pub fn parse_ids(raw: &str) -> Result<Vec<String>, ApiError> {
    let inner = raw
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| bad("ids must look like ['id1','id2']"))?;
    let ids: Vec<String> = inner
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad_request(
            "EVS.2228",
            format!("input volume ids must not be over {MAX_IDS}"),
        ));
    }
    Ok(ids)
}

impl ListQuery {
    /// Parses and validates the query parameters.
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        let mut q = ListQuery {
            limit: MAX_LIMIT,
            descending: true,
            ..ListQuery::default()
        };
        for (k, v) in params {
            match k.as_str() {
                "name" => q.name = Some(v.clone()),
                "status" => q.status = Some(v.clone()),
                "availability_zone" => q.availability_zone = Some(v.clone()),
                "server_id" => q.server_id = Some(v.clone()),
                "marker" => q.marker = Some(v.clone()),
                "metadata" => {
                    q.metadata = Some(
                        serde_json::from_str(v)
                            .map_err(|_| bad("metadata must be a JSON object"))?,
                    )
                }
                "ids" => q.ids = Some(parse_ids(v)?),
                // One disk by id; the official SDK's ListVolumesRequest offers it beside `ids`.
                "id" => q.id = Some(v.clone()),
                "multiattach" => {
                    q.multiattach = Some(
                        v.parse()
                            .map_err(|_| bad("multiattach must be true or false"))?,
                    )
                }
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| bad(format!("limit must be 1-{MAX_LIMIT}")))?
                }
                "offset" => q.offset = v.parse().map_err(|_| bad("offset must be a number"))?,
                "sort_key" => {
                    q.sort_key = match v.as_str() {
                        "created_at" => SortKey::CreatedAt,
                        "id" => SortKey::Id,
                        "name" => SortKey::Name,
                        "size" => SortKey::Size,
                        other => return Err(bad(format!("unsupported sort_key {other}"))),
                    }
                }
                "sort_dir" => {
                    q.descending = match v.as_str() {
                        "desc" => true,
                        "asc" => false,
                        other => {
                            return Err(bad(format!("sort_dir must be asc or desc, not {other}")));
                        }
                    }
                }
                // Other cinder filters are ignored, as the real API ignores unknown ones.
                _ => {}
            }
        }
        Ok(q)
    }

    fn matches(&self, d: &Disk) -> bool {
        let md_ok = self.metadata.as_ref().is_none_or(|want| {
            want.iter().all(|(k, v)| {
                let want = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                d.metadata.get(k) == Some(&want)
            })
        });
        md_ok
            && self.name.as_ref().is_none_or(|n| &d.name == n)
            && self.status.as_ref().is_none_or(|s| &d.status == s)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&d.id))
            && self.id.as_ref().is_none_or(|id| &d.id == id)
            && self
                .availability_zone
                .as_ref()
                .is_none_or(|z| &d.availability_zone == z)
            && self
                .server_id
                .as_ref()
                .is_none_or(|s| d.attachment.as_ref().is_some_and(|a| &a.server_id == s))
            && self.multiattach.is_none_or(|m| d.multiattach == m)
    }

    /// Filters, sorts and pages; returns the page and whether more follow.
    pub fn apply<'a>(
        &self,
        disks: impl Iterator<Item = &'a Disk>,
    ) -> Result<(Vec<&'a Disk>, usize, bool), ApiError> {
        let mut all: Vec<&Disk> = disks.filter(|d| self.matches(d)).collect();
        // The sequence number breaks ties, so the order is stable across calls.
        all.sort_by(|a, b| {
            let primary = match self.sort_key {
                SortKey::CreatedAt => a.created_at.cmp(&b.created_at),
                SortKey::Id => a.id.cmp(&b.id),
                SortKey::Name => a.name.cmp(&b.name),
                SortKey::Size => a.size.cmp(&b.size),
            };
            primary.then(a.seq.cmp(&b.seq))
        });
        if self.descending {
            all.reverse();
        }
        let count = all.len();
        let start = match &self.marker {
            Some(m) => {
                all.iter()
                    .position(|d| &d.id == m)
                    .ok_or_else(|| bad(format!("marker {m} not found")))?
                    + 1
            }
            None => 0,
        } + self.offset;
        let rest: Vec<&Disk> = all.into_iter().skip(start).collect();
        let more = rest.len() > self.limit;
        Ok((rest.into_iter().take(self.limit).collect(), count, more))
    }
}

/// The `next` link of a `/v2/{project}/{collection}/detail` listing: the same query with
/// `marker` set to the page's last id.
pub fn next_link(
    base: &str,
    project: &str,
    collection: &str,
    params: &BTreeMap<String, String>,
    last: &str,
) -> String {
    let mut pairs: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "marker" && k.as_str() != "offset")
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect();
    pairs.push(format!("marker={last}"));
    format!(
        "{base}/v2/{project}/{collection}/detail?{}",
        pairs.join("&")
    )
}

/// `GET /v2/{p}/cloudvolumes/detail`.
pub async fn list_handler(
    State(cloud): State<Arc<Cloud>>,
    Path(project): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    cloud.check_project(&project)?;
    let q = ListQuery::parse(&params)?;
    let base = base_url(&headers);
    let inner = cloud.lock();
    let (page, count, more) = q.apply(
        inner
            .state
            .disks
            .values()
            .filter(|d| d.project_id == project),
    )?;
    let volumes: Vec<Value> = page.iter().map(|d| view(d, &base)).collect();
    let mut out = json!({"volumes": volumes, "count": count});
    if more && let Some(last) = page.last() {
        out["volumes_links"] = json!([{"href": next_link(&base, &project, "cloudvolumes", &params, &last.id), "rel": "next"}]);
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_keeps_filters_and_replaces_marker() {
        let params: BTreeMap<String, String> = [
            ("limit", "2"),
            ("marker", "old"),
            ("offset", "4"),
            ("name", "a b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            next_link("http://h:1", "p", "cloudvolumes", &params, "last"),
            "http://h:1/v2/p/cloudvolumes/detail?limit=2&name=a%20b&marker=last"
        );
    }
}
