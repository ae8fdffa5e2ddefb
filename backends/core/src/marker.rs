//! The marker every backend leaves on what it creates (disk tags, share tags, bucket tags, a
//! prefix's marker object, a subdirectory's mark file): Everest made this, for which cluster,
//! from which backend instance, and for which PV and PVC. It is the one rule for every kind, so
//! that `everestctl orphans` can read any kind's resources back with [`Marker::read`] and tell
//! ours from a foreign resource or another cluster's.
//!
//! Keys and values are written in the narrowest form every API here accepts: the Huawei tag
//! APIs (EVS, SFS Turbo) take only letters, digits, `-` and `_`, keys of at most 36 and values
//! of at most 43 characters; S3 metadata keys are lowercased by the service. So every key is
//! lowercase `everest-…`, and a value that does not fit (a long or dotted PVC name) is written
//! as [`encode`] says: a readable prefix and a hash of the whole value, never a bare cut that
//! could make two PVs' marks equal.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::params::K8sMeta;
use crate::volume_id::BackendName;

/// Says Everest created the resource; its value is always [`CREATED_BY`].
pub const CREATED_BY_KEY: &str = "everest-created-by";
/// The value of [`CREATED_BY_KEY`].
pub const CREATED_BY: &str = "everest";
/// The cluster whose controller created it (`[controller] cluster_id`).
pub const CLUSTER_KEY: &str = "everest-cluster";
/// The backend instance that created it (the `[backends.<name>]` table).
pub const BACKEND_KEY: &str = "everest-backend";
/// The PV it was created for, when the provisioner said.
pub const PV_NAME_KEY: &str = "everest-pv-name";
/// The PVC it was created for, when the provisioner said.
pub const PVC_NAME_KEY: &str = "everest-pvc-name";
/// The namespace of that PVC, when the provisioner said.
pub const PVC_NAMESPACE_KEY: &str = "everest-pvc-namespace";
/// What DeleteVolume does with it (`delete`, `retain`, `archive`), for the kinds whose policy
/// lives in the volume handle (file, object): the handle goes with the PV, and `everestctl
/// orphans` must still honour the policy. Block volumes have one policy and do not write it.
pub const ON_DELETE_KEY: &str = "everest-on-delete";
/// Every marker key starts with this; user tags may not (they could forge or hide a marker).
pub const RESERVED_PREFIX: &str = "everest-";

/// Longest value written verbatim: the EVS and SFS Turbo tag APIs' 43 characters.
pub const MAX_VALUE_LEN: usize = 43;
/// Hex digits of SHA-256 kept in a shortened value (64 bits: a collision between two PV names
/// of one cluster is not a practical concern).
const HASH_HEX: usize = 16;
/// Separates a shortened value's prefix from its hash. Kubernetes names never hold `_`, so a
/// shortened value can never equal a verbatim one.
const HASH_SEPARATOR: char = '_';

/// The cluster a controller serves, as its markers name it. Lowercase letters, digits, `-` and
/// `.` (a Helm release name or a DNS name fits), 1–63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ClusterId(String);

impl ClusterId {
    /// Checks `id`.
    pub fn new(id: &str) -> Result<Self, Error> {
        let ok = (1..=63).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(Error::InvalidArgument(format!(
                "cluster ID {id:?}: use 1-63 lowercase letters, digits, '-' or '.', starting with a letter or digit"
            )))
        }
    }

    /// The ID as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `default`: what a controller without `cluster_id` calls its cluster. The chart sets the
/// release name instead; clusters sharing one cloud project must each set their own.
impl Default for ClusterId {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

impl TryFrom<String> for ClusterId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(&s)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value as the marker stores it: verbatim when it is at most [`MAX_VALUE_LEN`] characters
/// of letters, digits and `-`; otherwise the value with every other character turned into `-`,
/// cut to 26 characters, then `_` and the first 16 hex digits of the SHA-256 of the whole
/// value (43 characters in all).
pub fn encode(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if !value.is_empty() && value.len() <= MAX_VALUE_LEN && value.chars().all(plain) {
        return value.to_owned();
    }
    let keep = MAX_VALUE_LEN - HASH_HEX - 1;
    let prefix: String = value
        .chars()
        .map(|c| if plain(c) { c } else { '-' })
        .take(keep)
        .collect();
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    format!("{prefix}{HASH_SEPARATOR}{}", &digest[..HASH_HEX])
}

/// What DeleteVolume does with a volume's data, as the marker records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeletePolicy {
    /// Removes it.
    Delete,
    /// Leaves it as it is.
    Retain,
    /// Keeps it under another name (`archived-<name>`).
    Archive,
}

impl DeletePolicy {
    /// The word the marker stores (and StorageClasses use).
    pub fn as_str(self) -> &'static str {
        match self {
            DeletePolicy::Delete => "delete",
            DeletePolicy::Retain => "retain",
            DeletePolicy::Archive => "archive",
        }
    }

    /// The policy `word` names; `None` for any other word (a marker written by a later
    /// version, or changed by hand, has an unknown policy, never a guessed one).
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "delete" => Some(DeletePolicy::Delete),
            "retain" => Some(DeletePolicy::Retain),
            "archive" => Some(DeletePolicy::Archive),
            _ => None,
        }
    }
}

impl fmt::Display for DeletePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one API accepts as tags on one resource.
#[derive(Debug, Clone, Copy)]
pub struct TagLimits {
    /// Which API, for messages.
    pub api: &'static str,
    /// Tags on one resource.
    pub max_tags: usize,
    /// Characters in a key.
    pub max_key_len: usize,
    /// Characters in a value.
    pub max_value_len: usize,
    /// Whether a key or value may hold this character.
    pub allowed: fn(char) -> bool,
}

fn huawei_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn s3_tag_char(c: char) -> bool {
    c.is_alphanumeric() || " +-=._:/@".contains(c)
}

/// EVS disk tags: at most 10, keys ≤ 36 and values ≤ 43 characters of letters, digits, `-`, `_`.
pub const EVS_TAGS: TagLimits = TagLimits {
    api: "EVS",
    max_tags: 10,
    max_key_len: 36,
    max_value_len: 43,
    allowed: huawei_tag_char,
};

/// SFS Turbo share tags: at most 20, keys ≤ 128 and values ≤ 255 characters; letters, digits,
/// `-` and `_` are the characters every version of the API reference accepts.
pub const SFS_TURBO_TAGS: TagLimits = TagLimits {
    api: "SFS Turbo",
    max_tags: 20,
    max_key_len: 128,
    max_value_len: 255,
    allowed: huawei_tag_char,
};

/// S3 bucket tags: at most 50, keys ≤ 128 and values ≤ 256 characters.
pub const S3_TAGS: TagLimits = TagLimits {
    api: "S3",
    max_tags: 50,
    max_key_len: 128,
    max_value_len: 256,
    allowed: s3_tag_char,
};

impl TagLimits {
    /// Why `key=value` is not a tag this API takes, if it is not.
    pub fn refuse(&self, key: &str, value: &str) -> Option<String> {
        let api = self.api;
        if key.is_empty() || key.chars().count() > self.max_key_len {
            return Some(format!(
                "{api} tag key {key:?} must be 1-{} characters",
                self.max_key_len
            ));
        }
        if value.chars().count() > self.max_value_len {
            return Some(format!(
                "{api} tag {key}: the value must be at most {} characters",
                self.max_value_len
            ));
        }
        if let Some(c) = key
            .chars()
            .chain(value.chars())
            .find(|c| !(self.allowed)(*c))
        {
            return Some(format!("{api} tag {key}: {c:?} is not allowed"));
        }
        None
    }
}

/// The marker of one resource: every value as stored (see [`encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The cluster ID, encoded.
    pub cluster: String,
    /// The backend instance.
    pub backend: String,
    /// The PV name, encoded, when known.
    pub pv_name: Option<String>,
    /// The PVC name, encoded, when known.
    pub pvc_name: Option<String>,
    /// The PVC namespace, encoded, when known.
    pub pvc_namespace: Option<String>,
    /// The delete policy, for kinds that record one; `None` also for a marker written before
    /// the key existed (or with a word this version does not know).
    pub on_delete: Option<DeletePolicy>,
}

/// Whose a resource is, by its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No marker: not Everest's, never touched.
    Foreign,
    /// Everest's, but another cluster's or another backend instance's.
    Elsewhere(Marker),
    /// This cluster's and this instance's.
    Ours(Marker),
}

impl Marker {
    /// The marker of a resource created now by `backend` of `cluster` for `k8s`.
    pub fn new(cluster: &ClusterId, backend: &BackendName, k8s: &K8sMeta) -> Self {
        Self {
            cluster: encode(cluster.as_str()),
            backend: encode(backend.as_str()),
            pv_name: k8s.pv_name.as_deref().map(encode),
            pvc_name: k8s.pvc_name.as_deref().map(encode),
            pvc_namespace: k8s.pvc_namespace.as_deref().map(encode),
            on_delete: None,
        }
    }

    /// The same marker recording the delete policy `policy`.
    pub fn with_on_delete(mut self, policy: DeletePolicy) -> Self {
        self.on_delete = Some(policy);
        self
    }

    /// The marker as key/value pairs, for tags or metadata.
    pub fn to_tags(&self) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::from([
            (CREATED_BY_KEY.to_owned(), CREATED_BY.to_owned()),
            (CLUSTER_KEY.to_owned(), self.cluster.clone()),
            (BACKEND_KEY.to_owned(), self.backend.clone()),
        ]);
        for (key, value) in [
            (PV_NAME_KEY, &self.pv_name),
            (PVC_NAME_KEY, &self.pvc_name),
            (PVC_NAMESPACE_KEY, &self.pvc_namespace),
        ] {
            if let Some(v) = value {
                tags.insert(key.to_owned(), v.clone());
            }
        }
        if let Some(p) = self.on_delete {
            tags.insert(ON_DELETE_KEY.to_owned(), p.as_str().to_owned());
        }
        tags
    }

    /// Reads a marker back from a resource's tags or metadata; `None` when there is none (a
    /// resource Everest did not create, or one whose marker lacks its cluster or backend).
    pub fn read(tags: &BTreeMap<String, String>) -> Option<Self> {
        if tags.get(CREATED_BY_KEY).map(String::as_str) != Some(CREATED_BY) {
            return None;
        }
        let get = |key: &str| tags.get(key).filter(|v| !v.is_empty()).cloned();
        Some(Self {
            cluster: get(CLUSTER_KEY)?,
            backend: get(BACKEND_KEY)?,
            pv_name: get(PV_NAME_KEY),
            pvc_name: get(PVC_NAME_KEY),
            pvc_namespace: get(PVC_NAMESPACE_KEY),
            on_delete: tags.get(ON_DELETE_KEY).and_then(|w| DeletePolicy::parse(w)),
        })
    }

    /// Whose the resource with these tags is, seen from `backend` of `cluster`.
    pub fn owner(
        tags: &BTreeMap<String, String>,
        cluster: &ClusterId,
        backend: &BackendName,
    ) -> Owner {
        match Self::read(tags) {
            None => Owner::Foreign,
            Some(m) if m.is_of(cluster, backend) => Owner::Ours(m),
            Some(m) => Owner::Elsewhere(m),
        }
    }

    /// Whether `backend` of `cluster` wrote this marker.
    pub fn is_of(&self, cluster: &ClusterId, backend: &BackendName) -> bool {
        self.cluster == encode(cluster.as_str()) && self.backend == encode(backend.as_str())
    }

    /// Whether it was written for the PV `name`.
    pub fn is_for_pv(&self, name: &str) -> bool {
        self.pv_name.as_deref() == Some(encode(name).as_str())
    }

    /// `user` tags (from a StorageClass) with the marker added, checked against `limits`:
    /// INVALID_ARGUMENT names a user tag the API would refuse, one that uses a marker key, or
    /// too many tags in all. The marker itself always fits (tested for every API here).
    pub fn with_user_tags(
        &self,
        user: &BTreeMap<String, String>,
        limits: &TagLimits,
    ) -> Result<BTreeMap<String, String>, Error> {
        for (key, value) in user {
            if key.starts_with(RESERVED_PREFIX) {
                return Err(Error::InvalidArgument(format!(
                    "tag {key}: keys starting with {RESERVED_PREFIX} are Everest's marker; choose another key"
                )));
            }
            if let Some(why) = limits.refuse(key, value) {
                return Err(Error::InvalidArgument(why));
            }
        }
        let mut tags = self.to_tags();
        let room = limits.max_tags - tags.len();
        if user.len() > room {
            return Err(Error::InvalidArgument(format!(
                "{} tags given, but {} takes {} per resource and Everest's marker uses {}: at most {room} may be set",
                user.len(),
                limits.api,
                limits.max_tags,
                tags.len()
            )));
        }
        tags.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s(pv: &str, pvc: &str, ns: &str) -> K8sMeta {
        K8sMeta {
            pv_name: Some(pv.to_owned()),
            pvc_name: Some(pvc.to_owned()),
            pvc_namespace: Some(ns.to_owned()),
        }
    }

    fn here() -> (ClusterId, BackendName) {
        (
            ClusterId::new("prod-eu").unwrap(),
            BackendName::new("evs-default").unwrap(),
        )
    }

    #[test]
    fn round_trips_through_tags() {
        let (cluster, backend) = here();
        let m = Marker::new(&cluster, &backend, &k8s("pvc-1234", "data", "shop"));
        let tags = m.to_tags();
        assert_eq!(tags[CREATED_BY_KEY], "everest");
        assert_eq!(tags[CLUSTER_KEY], "prod-eu");
        assert_eq!(tags[BACKEND_KEY], "evs-default");
        assert_eq!(tags[PVC_NAME_KEY], "data");
        assert_eq!(Marker::read(&tags), Some(m.clone()));
        assert_eq!(
            Marker::owner(&tags, &cluster, &backend),
            Owner::Ours(m.clone())
        );
        assert!(m.is_for_pv("pvc-1234"));
        assert!(!m.is_for_pv("pvc-12345"));
    }

    #[test]
    fn without_provisioner_metadata_only_the_owner_is_marked() {
        let (cluster, backend) = here();
        let tags = Marker::new(&cluster, &backend, &K8sMeta::default()).to_tags();
        assert_eq!(tags.len(), 3);
        let m = Marker::read(&tags).unwrap();
        assert_eq!(m.pv_name, None);
        assert!(!m.is_for_pv("pvc-1"));
    }

    #[test]
    fn a_foreign_resource_has_no_marker() {
        let (cluster, backend) = here();
        for tags in [
            BTreeMap::new(),
            BTreeMap::from([("owner".to_owned(), "team-a".to_owned())]),
            // Another tool's "created-by", or ours with a wrong value.
            BTreeMap::from([(CREATED_BY_KEY.to_owned(), "terraform".to_owned())]),
            // A marker without its cluster or backend is not one Everest wrote.
            BTreeMap::from([
                (CREATED_BY_KEY.to_owned(), CREATED_BY.to_owned()),
                (BACKEND_KEY.to_owned(), "evs-default".to_owned()),
            ]),
        ] {
            assert_eq!(Marker::read(&tags), None, "{tags:?}");
            assert_eq!(Marker::owner(&tags, &cluster, &backend), Owner::Foreign);
        }
    }

    #[test]
    fn another_clusters_or_instances_marker_is_not_ours() {
        let (cluster, backend) = here();
        let meta = k8s("pvc-1", "data", "shop");
        let theirs = Marker::new(&ClusterId::new("prod-us").unwrap(), &backend, &meta);
        let owner = Marker::owner(&theirs.to_tags(), &cluster, &backend);
        assert_eq!(owner, Owner::Elsewhere(theirs));
        let other_instance = Marker::new(&cluster, &BackendName::new("evs-fast").unwrap(), &meta);
        assert!(matches!(
            Marker::owner(&other_instance.to_tags(), &cluster, &backend),
            Owner::Elsewhere(_)
        ));
    }

    #[test]
    fn long_or_dotted_values_are_shortened_without_collisions() {
        // The provisioner's PV names and short names are kept as they are.
        let pv = "pvc-0f3c2a5e-6b1d-4c7a-9e8f-1a2b3c4d5e6f";
        assert_eq!(encode(pv), pv);
        // A PVC name may be a 253-character DNS subdomain with dots.
        let long_a = format!("{}.a", "x".repeat(60));
        let long_b = format!("{}.b", "x".repeat(60));
        let (a, b) = (encode(&long_a), encode(&long_b));
        assert_ne!(a, b, "names differing only at the end must not collide");
        for v in [&a, &b] {
            assert_eq!(v.len(), MAX_VALUE_LEN);
            assert!(v.starts_with(&"x".repeat(26)));
            assert!(EVS_TAGS.refuse(PVC_NAME_KEY, v).is_none(), "{v}");
        }
        // Dots are not taken by the Huawei APIs: hashed even when short.
        let dotted = encode("web.data");
        assert!(dotted.starts_with("web-data_"), "{dotted}");
        // A verbatim value never holds '_', a shortened one always does: no cross collision.
        assert_ne!(encode("web-data"), dotted);
        assert_eq!(encode("web.data"), dotted, "encoding is deterministic");
        // is_for_pv compares through the same rule.
        let m = Marker::new(&here().0, &here().1, &k8s(&long_a, "c", "n"));
        assert!(m.is_for_pv(&long_a) && !m.is_for_pv(&long_b));
    }

    #[test]
    fn the_delete_policy_round_trips_and_an_old_or_odd_one_is_unknown() {
        let (cluster, backend) = here();
        let plain = Marker::new(&cluster, &backend, &k8s("pvc-1", "data", "shop"));
        for policy in [
            DeletePolicy::Delete,
            DeletePolicy::Retain,
            DeletePolicy::Archive,
        ] {
            let m = plain.clone().with_on_delete(policy);
            let tags = m.to_tags();
            assert_eq!(tags[ON_DELETE_KEY], policy.as_str());
            assert_eq!(Marker::read(&tags).unwrap().on_delete, Some(policy));
        }
        // A marker written before the key existed: the policy is unknown, not a default.
        let old = plain.to_tags();
        assert!(!old.contains_key(ON_DELETE_KEY));
        assert_eq!(Marker::read(&old).unwrap().on_delete, None);
        let mut odd = old.clone();
        odd.insert(ON_DELETE_KEY.into(), "Delete".into());
        assert_eq!(Marker::read(&odd).unwrap().on_delete, None);
    }

    #[test]
    fn the_marker_fits_every_api() {
        let (cluster, backend) = here();
        let long = "n".repeat(253);
        let m = Marker::new(&cluster, &backend, &k8s(&long, &long, &long))
            .with_on_delete(DeletePolicy::Archive);
        for limits in [EVS_TAGS, SFS_TURBO_TAGS, S3_TAGS] {
            let tags = m.with_user_tags(&BTreeMap::new(), &limits).unwrap();
            for (k, v) in &tags {
                assert_eq!(limits.refuse(k, v), None, "{} {k}={v}", limits.api);
                // S3 lowercases metadata keys: ours must already be lowercase.
                assert_eq!(k, &k.to_lowercase());
            }
        }
    }

    #[test]
    fn user_tags_are_checked_against_the_api() {
        let (cluster, backend) = here();
        let m = Marker::new(&cluster, &backend, &k8s("pvc-1", "data", "shop"));
        let user = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = m
            .with_user_tags(&user(&[("team", "storage")]), &EVS_TAGS)
            .unwrap();
        assert_eq!(ok["team"], "storage");
        assert_eq!(ok[CREATED_BY_KEY], "everest");
        // A StorageClass cannot forge or overwrite the marker.
        let err = m
            .with_user_tags(&user(&[(CLUSTER_KEY, "prod-us")]), &EVS_TAGS)
            .unwrap_err();
        assert!(err.to_string().contains(CLUSTER_KEY), "{err}");
        // Too long a value, a character EVS refuses, too many tags.
        let long = "v".repeat(44);
        assert!(m.with_user_tags(&user(&[("k", &long)]), &EVS_TAGS).is_err());
        assert!(m.with_user_tags(&user(&[("k", &long)]), &S3_TAGS).is_ok());
        let err = m
            .with_user_tags(&user(&[("cost.center", "1")]), &EVS_TAGS)
            .unwrap_err();
        assert!(err.to_string().contains("'.'"), "{err}");
        let many: Vec<(String, String)> = (0..5).map(|i| (format!("k{i}"), "v".into())).collect();
        let many: BTreeMap<String, String> = many.into_iter().collect();
        let err = m.with_user_tags(&many, &EVS_TAGS).unwrap_err();
        assert!(err.to_string().contains("at most 4"), "{err}");
    }

    #[test]
    fn cluster_ids_are_checked() {
        assert!(ClusterId::new("everest").is_ok());
        assert!(ClusterId::new("prod.eu-1").is_ok());
        assert_eq!(ClusterId::default().as_str(), "default");
        for bad in ["", "Prod", "-x", "a_b", &"a".repeat(64)] {
            assert!(ClusterId::new(bad).is_err(), "{bad:?}");
        }
    }
}
