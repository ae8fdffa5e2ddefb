//! The SFS Turbo share API on the shared cloud plumbing ([`everest_cloud`]): create, show,
//! list, expand and delete shares, and wait for a share to settle. Shares have no job API: a
//! client polls the share's own `status` (`100` → `200`) and `sub_status` (`121` → `221`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use everest_cloud::backoff::WaitPace;
use everest_cloud::{Call, CloudClient, CloudConfig, Error, Result, Service, lenient};
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// The services a share client calls (IAM only for tokens).
pub const SERVICES: &[Service] = &[Service::SfsTurbo, Service::Iam];

/// Share status codes, strings on the wire.
pub mod status {
    /// Being created.
    pub const CREATING: &str = "100";
    /// Available: mountable.
    pub const AVAILABLE: &str = "200";
    /// Failed.
    pub const FAILED: &str = "300";
    /// Creation failed.
    pub const CREATE_FAILED: &str = "303";
    /// Deleted.
    pub const DELETED: &str = "400";
    /// Frozen (an unpaid bill): readable state, no change possible.
    pub const FROZEN: &str = "800";
    /// Sub-status: an expansion runs.
    pub const EXPANDING: &str = "121";
    /// Sub-status: the last expansion finished.
    pub const EXPANDED: &str = "221";
    /// Sub-status: the last expansion failed.
    pub const EXPAND_FAILED: &str = "321";
}

/// The smallest share of the classic types, GiB.
pub const MIN_SIZE_GIB: u64 = 500;
/// The largest share, GiB.
pub const MAX_SIZE_GIB: u64 = 32768;
/// An expansion grows a share by at least this much, GiB.
pub const MIN_EXTEND_STEP_GIB: u64 = 100;

/// A share as the API shows it (unwrapped); fields the client does not need are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Share {
    /// Its UUID.
    pub id: String,
    /// Its name, unique in the project.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub name: String,
    /// See [`status`].
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub status: String,
    /// See [`status`]; empty when no expansion ever ran.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub sub_status: String,
    /// GiB (`"500.00"` on the wire).
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub size: u64,
    /// `host:/path`, set once the share is available.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub export_location: String,
    /// `STANDARD`, `PERFORMANCE`, …
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub share_type: String,
    /// Where it lives.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub availability_zone: String,
    /// When it was made, as the API writes it (`2016-05-25T02:42:10`, UTC; see
    /// [`Share::created`]).
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub created_at: String,
    /// Its free-form metadata (the marker Everest leaves, among others).
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub metadata: BTreeMap<String, String>,
}

impl Share {
    /// Whether it can be mounted.
    pub fn is_available(&self) -> bool {
        self.status == status::AVAILABLE
    }

    /// When it was made; `None` when the API did not say or said it in a form not known here
    /// (the cloud's timestamp forms, as [`lenient::parse_timestamp`] reads them).
    pub fn created(&self) -> Option<std::time::SystemTime> {
        lenient::parse_timestamp(&self.created_at).map(Into::into)
    }

    /// Whether it ended in a state it cannot leave (creation failed, failed, deleted).
    pub fn is_failed(&self) -> bool {
        matches!(
            self.status.as_str(),
            status::FAILED | status::CREATE_FAILED | status::DELETED
        )
    }
}

/// What a new share is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NewShare {
    /// 4–64 characters, a letter first, then letters, digits, `-`, `_`.
    pub name: String,
    /// Always `NFS`.
    pub share_proto: &'static str,
    /// `STANDARD` or `PERFORMANCE`.
    pub share_type: String,
    /// GiB.
    pub size: u64,
    /// The zone.
    pub availability_zone: String,
    /// The VPC its export is reachable from.
    pub vpc_id: String,
    /// The subnet of the export address.
    pub subnet_id: String,
    /// The security group guarding it.
    pub security_group_id: String,
    /// Free text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// e.g. `crypt_key_id` (only the keys the API defines: the marker goes in tags).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The accepted answer of a create.
#[derive(Debug, Clone, Deserialize)]
pub struct Accepted {
    /// The new share's UUID.
    pub id: String,
}

/// One share tag on the wire.
#[derive(Debug, Deserialize, Serialize)]
struct ShareTag {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default, deserialize_with = "lenient::null_default")]
    tags: Vec<ShareTag>,
}

#[derive(Deserialize)]
struct ShareList {
    #[serde(default, deserialize_with = "lenient::null_default")]
    shares: Vec<Share>,
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    count: u64,
}

/// Shares per list page.
const PAGE: u64 = 200;

/// A handle on the SFS Turbo API; clones share one connection pool and token.
#[derive(Clone, Debug)]
pub struct ShareClient {
    cloud: CloudClient,
}

impl ShareClient {
    /// Builds the client with the credentials in `path` (re-read when it changes).
    pub fn from_credentials_file(config: CloudConfig, path: &Path, backend: &str) -> Result<Self> {
        Ok(Self {
            cloud: CloudClient::from_credentials_file(config, path, SERVICES)?
                .with_backend(backend),
        })
    }

    fn path(&self, rest: &[&str]) -> Vec<String> {
        let mut path = vec![
            "v1".to_owned(),
            self.cloud.project_id().to_owned(),
            "sfs-turbo".to_owned(),
            "shares".to_owned(),
        ];
        path.extend(rest.iter().map(|s| (*s).to_owned()));
        path
    }

    /// Starts creating a share (status `100`).
    pub async fn create(&self, share: &NewShare) -> Result<Accepted> {
        let call = Call::new(
            Service::SfsTurbo,
            "create_share",
            Method::POST,
            self.path(&[]),
        )
        .json(&serde_json::json!({ "share": share }))?;
        self.cloud.execute(&call).await?.json(&call)
    }

    /// Reads a share; `None` when it does not exist.
    pub async fn get(&self, id: &str) -> Result<Option<Share>> {
        let call = Call::new(
            Service::SfsTurbo,
            "show_share",
            Method::GET,
            self.path(&[id]),
        );
        match self.cloud.execute(&call).await {
            Ok(reply) => Ok(Some(reply.json(&call)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds the share named `name`, walking every page (the API filters by nothing).
    pub async fn find_by_name(&self, name: &str) -> Result<Option<Share>> {
        let mut offset = 0;
        loop {
            let (shares, next) = self.list_page(offset).await?;
            if let Some(share) = shares.into_iter().find(|s| s.name == name) {
                return Ok(Some(share));
            }
            match next {
                Some(n) => offset = n,
                None => return Ok(None),
            }
        }
    }

    /// Every share of the project, page by page.
    pub async fn list_all(&self) -> Result<Vec<Share>> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let (shares, next) = self.list_page(offset).await?;
            all.extend(shares);
            match next {
                Some(n) => offset = n,
                None => return Ok(all),
            }
        }
    }

    /// One page of `GET /v1/{project}/sfs-turbo/shares/detail?limit&offset`, and the offset of
    /// the next page when there is one.
    async fn list_page(&self, offset: u64) -> Result<(Vec<Share>, Option<u64>)> {
        let mut call = Call::new(
            Service::SfsTurbo,
            "list_shares",
            Method::GET,
            self.path(&["detail"]),
        );
        call.query = vec![
            ("limit".into(), PAGE.to_string()),
            ("offset".into(), offset.to_string()),
        ];
        let page: ShareList = self.cloud.execute(&call).await?.json(&call)?;
        let seen = page.shares.len() as u64;
        let next = offset + seen;
        // An empty page ends the walk even if `count` says more (shares deleted meanwhile).
        let more = seen > 0 && next < page.count;
        Ok((page.shares, more.then_some(next)))
    }

    /// The share's tags (`GET /v1/{project}/sfs-turbo/{id}/tags`); `None` when the share is gone.
    pub async fn tags(&self, id: &str) -> Result<Option<BTreeMap<String, String>>> {
        let call = Call::new(
            Service::SfsTurbo,
            "show_share_tags",
            Method::GET,
            self.tags_path(id, false),
        );
        match self.cloud.execute(&call).await {
            Ok(reply) => {
                let list: TagList = reply.json(&call)?;
                Ok(Some(
                    list.tags.into_iter().map(|t| (t.key, t.value)).collect(),
                ))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `tags` to the share, replacing the values of keys it has (the call is idempotent).
    pub async fn add_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        let list: Vec<ShareTag> = tags
            .iter()
            .map(|(k, v)| ShareTag {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let call = Call::new(
            Service::SfsTurbo,
            "batch_add_share_tags",
            Method::POST,
            self.tags_path(id, true),
        )
        .json(&serde_json::json!({"action": "create", "tags": list}))?;
        self.cloud.execute(&call).await.map(|_| ())
    }

    /// Tags live beside, not under, `shares`: `/v1/{project}/sfs-turbo/{id}/tags[/action]`.
    fn tags_path(&self, id: &str, action: bool) -> Vec<String> {
        let mut path = vec![
            "v1".to_owned(),
            self.cloud.project_id().to_owned(),
            "sfs-turbo".to_owned(),
            id.to_owned(),
            "tags".to_owned(),
        ];
        if action {
            path.push("action".to_owned());
        }
        path
    }

    /// Starts deleting a share; `false` when it is already gone.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let call = Call::new(
            Service::SfsTurbo,
            "delete_share",
            Method::DELETE,
            self.path(&[id]),
        );
        match self.cloud.execute(&call).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts growing a share to `new_size` GiB (sub_status `121`).
    pub async fn extend(&self, id: &str, new_size: u64) -> Result<()> {
        let call = Call::new(
            Service::SfsTurbo,
            "expand_share",
            Method::POST,
            self.path(&[id, "action"]),
        )
        .json(&serde_json::json!({"extend": {"new_size": new_size}}))?;
        self.cloud.execute(&call).await.map(|_| ())
    }

    /// Lists one page, to show the API answers with these credentials.
    pub async fn check(&self) -> Result<()> {
        let mut call = Call::new(
            Service::SfsTurbo,
            "list_shares",
            Method::GET,
            self.path(&["detail"]),
        );
        call.query = vec![("limit".into(), "1".into()), ("offset".into(), "0".into())];
        self.cloud.execute(&call).await.map(|_| ())
    }

    /// Polls the share until `settled` says it is done (`Some(Ok)`), failed (`Some(Err)`), or
    /// the deadline passes; `None` from the share means it is gone. Transient failures of a
    /// poll only slow the polling.
    pub async fn wait<T>(
        &self,
        kind: &str,
        id: &str,
        deadline: Duration,
        settled: impl Fn(Option<&Share>) -> Option<std::result::Result<T, String>>,
    ) -> Result<T> {
        let key = format!("share:{kind}");
        let mut pace = self.cloud.wait_pace(&key, deadline);
        pace.before_first_poll().await;
        let mut last = String::from("not polled yet");
        loop {
            let failed = match pace.poll(self.get(id)).await {
                Some(Ok(share)) => {
                    match settled(share.as_ref()) {
                        Some(Ok(done)) => {
                            self.cloud.record_wait(&key, pace.learned_length());
                            return Ok(done);
                        }
                        Some(Err(reason)) => {
                            return Err(Error::ResourceFailed {
                                resource: format!("share {id}"),
                                reason,
                            });
                        }
                        None => {}
                    }
                    last = share.map_or_else(
                        || "gone".to_owned(),
                        |s| format!("status {} sub_status {:?}", s.status, s.sub_status),
                    );
                    false
                }
                Some(Err(e)) if WaitPace::is_transient(&e) => {
                    tracing::debug!(share = id, error = %e, "share poll failed; polling on");
                    true
                }
                Some(Err(e)) => return Err(e),
                None => false,
            };
            if !pace.pause(failed).await {
                return Err(Error::WaitTimeout {
                    pending: vec![format!("share {id} ({last})")],
                    waited: pace.waited(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_decodes_from_the_documented_shape_and_a_lenient_one() {
        let s: Share = serde_json::from_str(
            r#"{"id":"x","name":"pvc-1","status":"200","sub_status":null,"size":"600.00",
                "export_location":"10.0.0.8:/","share_type":"STANDARD","metadata":{"a":1}}"#,
        )
        .unwrap();
        assert!(s.is_available() && !s.is_failed());
        assert_eq!((s.size, s.sub_status.as_str()), (600, ""));
        assert_eq!(s.metadata["a"], "1");
        let failed: Share = serde_json::from_str(r#"{"id":"y","status":"303"}"#).unwrap();
        assert!(failed.is_failed() && !failed.is_available());
        assert_eq!(failed.created(), None);
    }

    #[test]
    fn creation_times_read_in_the_apis_forms() {
        let at = |t: &str| {
            let s: Share =
                serde_json::from_value(serde_json::json!({"id": "x", "created_at": t})).unwrap();
            s.created().map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            })
        };
        // 2016-05-25T02:42:10Z
        assert_eq!(at("2016-05-25T02:42:10"), Some(1_464_144_130.0));
        assert_eq!(at("2016-05-25T02:42:10.5"), Some(1_464_144_130.5));
        assert_eq!(at("2016-05-25T02:42:10Z"), Some(1_464_144_130.0));
        assert_eq!(at("2016-05-25T04:42:10+02:00"), Some(1_464_144_130.0));
        for bad in ["", "yesterday", "2016-05-25"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_new_share_serializes_without_empty_optional_fields() {
        let n = NewShare {
            name: "pvc-1".into(),
            share_proto: "NFS",
            share_type: "STANDARD".into(),
            size: 500,
            availability_zone: "az1".into(),
            vpc_id: "v".into(),
            subnet_id: "s".into(),
            security_group_id: "g".into(),
            description: String::new(),
            metadata: BTreeMap::new(),
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["share_proto"], "NFS");
        assert!(v.get("description").is_none() && v.get("metadata").is_none());
    }
}
