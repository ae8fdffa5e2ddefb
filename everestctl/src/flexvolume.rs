//! Huawei CCE's FlexVolume drivers (the `storage-driver` add-on), and what an Everest CSI
//! volume needs to reach the same cloud resource. See `docs/migration-from-flexvolume.md` for
//! the facts these rest on and where they come from.

use std::collections::BTreeMap;

use everest_backend::nfs::NfsExport;
use k8s_openapi::api::core::v1::FlexPersistentVolumeSource;
use serde::Serialize;

/// The volume context key of the EVS node side that names the filesystem.
pub const FSTYPE_ATTRIBUTE: &str = "csi.storage.k8s.io/fstype";
/// The volume context key of the file backend naming the NFS export.
pub const NFS_EXPORT_ATTRIBUTE: &str = "everest.io/nfs-export";
/// The volume context key of the object backend naming the bucket.
pub const OBS_BUCKET_ATTRIBUTE: &str = "everest.io/obs-bucket";
/// The volume context key of the object backend naming the region.
pub const OBS_REGION_ATTRIBUTE: &str = "everest.io/obs-region";

/// One of CCE's FlexVolume drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CceDriver {
    /// `huawei.com/fuxivol`: EVS disks.
    Evs,
    /// `huawei.com/fuxinfs`: SFS (capacity-oriented) file systems.
    Sfs,
    /// `huawei.com/fuxiefs`: SFS Turbo file systems.
    SfsTurbo,
    /// `huawei.com/fuxiobs`: OBS buckets.
    Obs,
}

impl CceDriver {
    /// Every driver, in the order plans list them.
    pub const ALL: [CceDriver; 4] = [Self::Evs, Self::Sfs, Self::SfsTurbo, Self::Obs];

    /// The driver named in `spec.flexVolume.driver`, if it is one of CCE's.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The name in `spec.flexVolume.driver`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Evs => "huawei.com/fuxivol",
            Self::Sfs => "huawei.com/fuxinfs",
            Self::SfsTurbo => "huawei.com/fuxiefs",
            Self::Obs => "huawei.com/fuxiobs",
        }
    }

    /// The Everest backend kind that serves the same resource, or why none does.
    pub fn everest_kind(self) -> Result<&'static str, &'static str> {
        match self {
            Self::Evs => Ok("evs"),
            Self::SfsTurbo => Ok("sfs"),
            Self::Obs => Ok("obs"),
            // Everest's `sfs` kind serves SFS Turbo shares and NFS directories; an SFS
            // (capacity-oriented) file system has neither an SFS Turbo ID nor a place under a
            // configured NFS server, so ControllerPublish could not find it.
            Self::Sfs => Err(
                "no Everest backend serves SFS (capacity-oriented) file systems: the sfs kind speaks the SFS Turbo API; copy the data to an SFS Turbo share, or keep this FlexVolume PV",
            ),
        }
    }
}

impl Serialize for CceDriver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for CceDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the CSI PV needs from a FlexVolume PV: the backend's native ID and the volume
/// attributes the node reads (it holds no cloud credentials, so everything travels here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Translation {
    /// The Everest backend kind.
    pub kind: &'static str,
    /// The native part of the volume handle (`v1:<instance>:<native>`).
    pub native_id: String,
    /// `spec.csi.fsType`, for block volumes.
    pub fs_type: Option<String>,
    /// `spec.csi.volumeAttributes`.
    pub attributes: BTreeMap<String, String>,
    /// Whether the node needs the object backend's keys in a node-stage Secret.
    pub needs_stage_secret: bool,
}

/// Translates the FlexVolume source of a PV made by `driver`; the error says what is missing.
pub fn translate(
    driver: CceDriver,
    flex: &FlexPersistentVolumeSource,
) -> Result<Translation, String> {
    let kind = driver.everest_kind()?;
    let options = flex.options.clone().unwrap_or_default();
    let option = |key: &str| -> Result<String, String> {
        options
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("spec.flexVolume.options.{key} is missing"))
    };
    let volume_id = option("volumeID")?;
    match driver {
        CceDriver::Evs => {
            check_id(&volume_id, "an EVS disk ID")?;
            // The filesystem on the disk: the PV's own field first, then the driver's option;
            // CCE formatted its disks ext4 when neither said.
            let fs = flex
                .fs_type
                .clone()
                .filter(|f| !f.is_empty())
                .or_else(|| options.get("fsType").cloned())
                .unwrap_or_else(|| "ext4".into());
            Ok(Translation {
                kind,
                native_id: volume_id,
                fs_type: Some(fs.clone()),
                attributes: BTreeMap::from([(FSTYPE_ATTRIBUTE.to_owned(), fs)]),
                needs_stage_secret: false,
            })
        }
        CceDriver::SfsTurbo => {
            check_id(&volume_id, "an SFS Turbo share ID")?;
            let export = option("deviceMountPath")?;
            export
                .parse::<NfsExport>()
                .map_err(|e| format!("spec.flexVolume.options.deviceMountPath: {e}"))?;
            Ok(Translation {
                kind,
                // `sr`: a share the CSI driver never deletes, whatever the PV's policy says;
                // Everest did not create it.
                native_id: format!("sr~{volume_id}"),
                fs_type: None,
                attributes: BTreeMap::from([(NFS_EXPORT_ATTRIBUTE.to_owned(), export)]),
                needs_stage_secret: false,
            })
        }
        CceDriver::Obs => {
            check_bucket(&volume_id)?;
            let mut attributes =
                BTreeMap::from([(OBS_BUCKET_ATTRIBUTE.to_owned(), volume_id.clone())]);
            if let Some(region) = options.get("region").filter(|r| !r.is_empty()) {
                attributes.insert(OBS_REGION_ATTRIBUTE.to_owned(), region.clone());
            }
            Ok(Translation {
                kind,
                // `r`: DeleteVolume keeps the bucket and everything in it.
                native_id: format!("r~{volume_id}"),
                fs_type: None,
                attributes,
                needs_stage_secret: true,
            })
        }
        // everest_kind refused it above; named here so the match stays exhaustive.
        CceDriver::Sfs => Err(format!("{driver} has no Everest kind")),
    }
}

fn check_id(id: &str, what: &str) -> Result<(), String> {
    let ok = id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "spec.flexVolume.options.volumeID {id:?} is not {what}"
        ))
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "spec.flexVolume.options.volumeID {bucket:?} is not an OBS bucket name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flex(
        driver: CceDriver,
        fs: Option<&str>,
        options: &[(&str, &str)],
    ) -> FlexPersistentVolumeSource {
        FlexPersistentVolumeSource {
            driver: driver.name().into(),
            fs_type: fs.map(Into::into),
            options: Some(
                options
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn each_kind_translates_and_missing_options_are_named() {
        let evs = translate(
            CceDriver::Evs,
            &flex(
                CceDriver::Evs,
                Some("xfs"),
                &[
                    ("volumeID", "0992dbda-6340-470e-a74e-4f0db288ed82"),
                    ("fsType", "ext4"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(evs.native_id, "0992dbda-6340-470e-a74e-4f0db288ed82");
        assert_eq!(evs.fs_type.as_deref(), Some("xfs"), "the PV's fsType wins");
        let turbo = translate(
            CceDriver::SfsTurbo,
            &flex(
                CceDriver::SfsTurbo,
                Some("nfs"),
                &[
                    ("volumeID", "8962a2a2"),
                    ("deviceMountPath", "192.168.0.169:/"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(turbo.native_id, "sr~8962a2a2");
        assert_eq!(turbo.attributes[NFS_EXPORT_ATTRIBUTE], "192.168.0.169:/");
        let obs = translate(
            CceDriver::Obs,
            &flex(
                CceDriver::Obs,
                Some("obs"),
                &[("volumeID", "test-obs"), ("region", "eu-de")],
            ),
        )
        .unwrap();
        assert_eq!(obs.native_id, "r~test-obs");
        assert!(obs.needs_stage_secret);

        let no_id = translate(CceDriver::Evs, &flex(CceDriver::Evs, None, &[])).unwrap_err();
        assert!(no_id.contains("options.volumeID is missing"), "{no_id}");
        let no_export = translate(
            CceDriver::SfsTurbo,
            &flex(CceDriver::SfsTurbo, None, &[("volumeID", "x")]),
        )
        .unwrap_err();
        assert!(no_export.contains("deviceMountPath"), "{no_export}");
        let bad_bucket = translate(
            CceDriver::Obs,
            &flex(CceDriver::Obs, None, &[("volumeID", "Has Space")]),
        )
        .unwrap_err();
        assert!(bad_bucket.contains("bucket"), "{bad_bucket}");
        let bad_disk = translate(
            CceDriver::Evs,
            &flex(CceDriver::Evs, None, &[("volumeID", "a:b")]),
        )
        .unwrap_err();
        assert!(bad_disk.contains("EVS disk ID"), "{bad_disk}");
        let sfs = translate(
            CceDriver::Sfs,
            &flex(
                CceDriver::Sfs,
                Some("nfs"),
                &[
                    ("volumeID", "f6976f9e"),
                    ("deviceMountPath", "sfs-nas1.example:/share-1"),
                ],
            ),
        )
        .unwrap_err();
        assert!(sfs.contains("SFS Turbo"), "{sfs}");
    }

    #[test]
    fn only_cce_drivers_are_recognised() {
        assert_eq!(
            CceDriver::from_name("huawei.com/fuxiobs"),
            Some(CceDriver::Obs)
        );
        assert_eq!(CceDriver::from_name("huawei.com/other"), None);
        assert_eq!(CceDriver::from_name("everest.csi.io"), None);
    }
}
