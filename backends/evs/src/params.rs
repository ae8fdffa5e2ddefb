//! The StorageClass parameters of an EVS volume. Huawei Everest's names are accepted so that
//! existing StorageClasses carry over; the public driver's short names are accepted as aliases.

use std::collections::BTreeMap;

use everest_backend::Error;
use everest_backend::params::{self, opt_from_str};
use serde::Deserialize;

/// Every disk type the EVS API documents.
pub const VOLUME_TYPES: &[&str] = &["SAS", "SSD", "GPSSD", "ESSD", "GPSSD2", "ESSD2", "SATA"];

/// Typed StorageClass parameters; unknown keys are rejected.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EvsParams {
    /// Disk type (`SSD`, `GPSSD`, `ESSD`…).
    #[serde(default, rename = "everest.io/disk-volume-type", alias = "type")]
    pub volume_type: Option<String>,
    /// KMS key ID; when set the disk is encrypted.
    #[serde(default, rename = "everest.io/crypt-key-id", alias = "kmsId")]
    pub kms_key_id: Option<String>,
    /// Provisioned IOPS (GPSSD2, ESSD2).
    #[serde(
        default,
        rename = "everest.io/disk-iops",
        alias = "iops",
        deserialize_with = "opt_from_str"
    )]
    pub iops: Option<u64>,
    /// Provisioned throughput in MiB/s (GPSSD2).
    #[serde(
        default,
        rename = "everest.io/disk-throughput",
        alias = "throughput",
        deserialize_with = "opt_from_str"
    )]
    pub throughput: Option<u64>,
    /// A fixed zone, for clusters without topology-aware provisioning.
    #[serde(
        default,
        rename = "everest.io/availability-zone",
        alias = "availability"
    )]
    pub availability_zone: Option<String>,
    /// Extra tags, `key=value,key2=value2`.
    #[serde(default, rename = "everest.io/disk-tags")]
    pub tags: Option<String>,
}

impl EvsParams {
    /// Parses and checks the backend-specific parameters.
    pub fn parse(map: &BTreeMap<String, String>, backend: &str) -> Result<Self, Error> {
        let p: EvsParams = params::parse(
            map,
            &format!("StorageClass parameters for backend {backend}"),
        )?;
        if let Some(t) = &p.volume_type
            && !VOLUME_TYPES.contains(&t.as_str())
        {
            return Err(Error::InvalidArgument(format!(
                "StorageClass parameter everest.io/disk-volume-type={t:?} is not one of {}",
                VOLUME_TYPES.join(", ")
            )));
        }
        let t = p.volume_type.as_deref().unwrap_or_default();
        if t == "GPSSD2" && (p.iops.is_none() || p.throughput.is_none()) {
            return Err(Error::InvalidArgument(
                "disk type GPSSD2 needs everest.io/disk-iops and everest.io/disk-throughput".into(),
            ));
        }
        if t == "ESSD2" && p.iops.is_none() {
            return Err(Error::InvalidArgument(
                "disk type ESSD2 needs everest.io/disk-iops".into(),
            ));
        }
        Ok(p)
    }

    /// The extra tags as a map.
    pub fn tag_map(&self) -> Result<BTreeMap<String, String>, Error> {
        match &self.tags {
            Some(t) => params::parse_key_values(t, "StorageClass parameter everest.io/disk-tags"),
            None => Ok(BTreeMap::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_everest_and_short_names() {
        let p = EvsParams::parse(&map(&[("everest.io/disk-volume-type", "SSD")]), "evs").unwrap();
        assert_eq!(p.volume_type.as_deref(), Some("SSD"));
        let p = EvsParams::parse(&map(&[("type", "ESSD2"), ("iops", "5000")]), "evs").unwrap();
        assert_eq!(p.iops, Some(5000));
    }

    #[test]
    fn rejects_typos_bad_types_and_missing_companions() {
        for (params, needle) in [
            (
                map(&[("everest.io/disk-volum-type", "SSD")]),
                "everest.io/disk-volum-type",
            ),
            (map(&[("everest.io/disk-volume-type", "FAST")]), "FAST"),
            (
                map(&[("everest.io/disk-volume-type", "GPSSD2"), ("iops", "3000")]),
                "GPSSD2",
            ),
            (map(&[("iops", "many")]), "invalid digit"),
        ] {
            let err = EvsParams::parse(&params, "evs").unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const KEYS: &[&str] = &[
        "everest.io/disk-volume-type",
        "everest.io/crypt-key-id",
        "everest.io/disk-iops",
        "everest.io/disk-throughput",
        "everest.io/availability-zone",
        "everest.io/disk-tags",
        "type",
        "kmsId",
        "availability",
    ];

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        /// Any StorageClass parameters parse or are INVALID_ARGUMENT; a refused value names
        /// its parameter, an unknown key is named.
        #[test]
        fn any_parameters_parse_or_are_refused_by_name(
            known in proptest::collection::btree_map(proptest::sample::select(KEYS), "\\PC{0,12}", 0..5),
            unknown in proptest::option::of("[a-z./-]{1,16}"),
        ) {
            let mut map: BTreeMap<String, String> =
                known.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(k) = &unknown {
                map.insert(format!("x-{k}"), "v".into());
            }
            match EvsParams::parse(&map, "evs-default") {
                Ok(_) => prop_assert!(unknown.is_none()),
                Err(e) => {
                    prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    let text = e.to_string();
                    let named = map.keys().any(|k| text.contains(k.as_str()))
                        || text.contains("disk type")
                        || text.contains("duplicate field");
                    prop_assert!(named, "{} names no parameter", text);
                }
            }
        }
    }
}
