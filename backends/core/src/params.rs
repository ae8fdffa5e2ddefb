//! StorageClass parameters: split off the keys every backend shares, then parse the rest into
//! the backend's own typed struct, rejecting unknown keys so a typo cannot silently create the
//! wrong volume.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::Error;
use crate::volume_id::BackendName;

/// The StorageClass parameter that names the backend instance to provision from.
pub const BACKEND_KEY: &str = "everest.io/backend";
/// Added by csi-provisioner with `--extra-create-metadata`: the PV's name.
pub const PV_NAME_KEY: &str = "csi.storage.k8s.io/pv/name";
/// Added by csi-provisioner with `--extra-create-metadata`: the PVC's name.
pub const PVC_NAME_KEY: &str = "csi.storage.k8s.io/pvc/name";
/// Added by csi-provisioner with `--extra-create-metadata`: the PVC's namespace.
pub const PVC_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pvc/namespace";
/// The filesystem type key of Huawei's Everest; csi-provisioner normally moves it into the capability.
pub const FSTYPE_KEY: &str = "csi.storage.k8s.io/fstype";

/// The parameters every backend understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommonParams {
    /// The backend instance named by the StorageClass, if any (the registry's default otherwise).
    pub backend: Option<BackendName>,
    /// The Kubernetes objects this volume is for, used to tag cloud resources.
    pub k8s: K8sMeta,
    /// A filesystem type passed as a parameter rather than in the capability.
    pub fs_type: Option<String>,
}

/// The PV and PVC a volume was provisioned for (empty when the provisioner does not send them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sMeta {
    /// PersistentVolume name.
    pub pv_name: Option<String>,
    /// PersistentVolumeClaim name.
    pub pvc_name: Option<String>,
    /// PersistentVolumeClaim namespace.
    pub pvc_namespace: Option<String>,
}

/// Takes the shared keys out of `params`, returning them and the backend-specific rest.
pub fn split_common(
    params: &BTreeMap<String, String>,
) -> Result<(CommonParams, BTreeMap<String, String>), Error> {
    let mut rest = params.clone();
    let backend = rest
        .remove(BACKEND_KEY)
        .map(|b| {
            BackendName::new(&b)
                .map_err(|e| e.context(format!("StorageClass parameter {BACKEND_KEY}")))
        })
        .transpose()?;
    let k8s = K8sMeta {
        pv_name: rest.remove(PV_NAME_KEY),
        pvc_name: rest.remove(PVC_NAME_KEY),
        pvc_namespace: rest.remove(PVC_NAMESPACE_KEY),
    };
    let fs_type = rest.remove(FSTYPE_KEY).filter(|f| !f.is_empty());
    Ok((
        CommonParams {
            backend,
            k8s,
            fs_type,
        },
        rest,
    ))
}

/// Parses string parameters into `T` (which should use `#[serde(deny_unknown_fields)]`).
///
/// `what` names the source in errors, e.g. "StorageClass parameters for backend evs-default".
pub fn parse<T: DeserializeOwned>(
    params: &BTreeMap<String, String>,
    what: &str,
) -> Result<T, Error> {
    // Through a JSON object of strings, so `Option` fields and `deny_unknown_fields` just work.
    let object: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    // The path names the parameter whose value is bad, not just what is wrong with it.
    serde_path_to_error::deserialize(serde_json::Value::Object(object)).map_err(|e| {
        let key = e.path().to_string();
        let e = e.into_inner();
        if key == "." {
            Error::InvalidArgument(format!("{what}: {e}"))
        } else {
            Error::InvalidArgument(format!("{what}: {key}: {e}"))
        }
    })
}

/// `deserialize_with` helper: a number, bool or enum written as a string parameter.
pub fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(serde::de::Error::custom)
}

/// `deserialize_with` helper for optional fields (pair it with `#[serde(default)]`).
pub fn opt_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    from_str(d).map(Some)
}

/// Parses `key=value` pairs from a single string, as in `everest.io/disk-tags` or mount options.
pub fn parse_key_values(s: &str, what: &str) -> Result<BTreeMap<String, String>, Error> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!("{what}: {pair:?} is not key=value"))
            })?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[serde(rename = "everest.io/disk-volume-type")]
        volume_type: String,
        #[serde(default)]
        zone: Option<String>,
        #[serde(default, deserialize_with = "opt_from_str")]
        iops: Option<u32>,
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn splits_shared_keys() {
        let params = map(&[
            (BACKEND_KEY, "evs-fast"),
            (PVC_NAME_KEY, "data"),
            (PVC_NAMESPACE_KEY, "default"),
            (PV_NAME_KEY, "pvc-123"),
            ("everest.io/disk-volume-type", "SSD"),
        ]);
        let (common, rest) = split_common(&params).unwrap();
        assert_eq!(common.backend.unwrap().as_str(), "evs-fast");
        assert_eq!(common.k8s.pvc_name.as_deref(), Some("data"));
        assert_eq!(rest, map(&[("everest.io/disk-volume-type", "SSD")]));
    }

    #[test]
    fn parses_typed_and_rejects_unknown_keys() {
        let ok: Example = parse(
            &map(&[("everest.io/disk-volume-type", "SSD"), ("iops", "3000")]),
            "params",
        )
        .unwrap();
        assert_eq!(ok.iops, Some(3000));
        assert_eq!(ok.zone, None);
        let err = parse::<Example>(
            &map(&[
                ("everest.io/disk-volume-type", "SSD"),
                ("everest.io/disk-volume-typo", "x"),
            ]),
            "StorageClass parameters",
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.to_string().contains("everest.io/disk-volume-typo"),
            "{err}"
        );
        let err = parse::<Example>(
            &map(&[("everest.io/disk-volume-type", "SSD"), ("iops", "lots")]),
            "params",
        )
        .unwrap_err();
        // The message names the parameter, not only what is wrong with its value.
        assert!(err.to_string().contains("iops: invalid digit"), "{err}");
        assert!(parse::<Example>(&map(&[]), "params").is_err());
    }

    #[test]
    fn bad_backend_name_is_invalid_argument() {
        let err = split_common(&map(&[(BACKEND_KEY, "Not_Valid")])).unwrap_err();
        assert!(err.to_string().contains(BACKEND_KEY));
    }

    #[test]
    fn key_values() {
        let kv = parse_key_values("team=storage, env=prod", "tags").unwrap();
        assert_eq!(kv.get("env").map(String::as_str), Some("prod"));
        assert!(parse_key_values("novalue", "tags").is_err());
    }
}
