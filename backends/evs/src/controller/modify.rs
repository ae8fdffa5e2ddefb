//! ControllerModifyVolume on EVS: a VolumeAttributesClass may change a disk's type
//! (`everest.io/disk-volume-type`, a retype job) and a GPSSD2/ESSD2 disk's provisioned
//! `everest.io/disk-iops` / `everest.io/disk-throughput` (a QoS job), online. Every other
//! StorageClass parameter is fixed at creation: INVALID_ARGUMENT naming it.

use std::collections::BTreeMap;

use everest_backend::{Error, Result};

use super::{EvsController, is_usable};
use crate::api::{Service, Volume};
use crate::params::EvsParams;

/// What a modification asks for, against what the disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// Retype to this type, with these provisioned figures.
    Retype {
        new_type: String,
        iops: Option<u64>,
        throughput: Option<u64>,
    },
    /// Same type, new provisioned figures.
    Qos { iops: u64, throughput: Option<u64> },
    /// Already so.
    Nothing,
}

/// Decides the change; INVALID_ARGUMENT for a parameter that cannot change.
fn plan(disk: &Volume, p: &EvsParams) -> Result<Change> {
    let fixed = [
        ("everest.io/crypt-key-id", p.kms_key_id.is_some()),
        (
            "everest.io/availability-zone",
            p.availability_zone.is_some(),
        ),
        ("everest.io/disk-tags", p.tags.is_some()),
    ];
    if let Some((key, _)) = fixed.iter().find(|(_, set)| *set) {
        return Err(Error::InvalidArgument(format!(
            "parameter {key} cannot change after creation; only everest.io/disk-volume-type, everest.io/disk-iops and everest.io/disk-throughput can"
        )));
    }
    let new_type = p
        .volume_type
        .clone()
        .unwrap_or_else(|| disk.volume_type.clone());
    if new_type != disk.volume_type {
        return Ok(Change::Retype {
            new_type,
            iops: p.iops,
            throughput: p.throughput,
        });
    }
    let iops_change = p.iops.filter(|i| Some(*i) != disk.iops);
    let tp_change = p.throughput.filter(|t| Some(*t) != disk.throughput);
    if iops_change.is_none() && tp_change.is_none() {
        return Ok(Change::Nothing);
    }
    let no_qos = || {
        Error::InvalidArgument(format!(
            "disk {} ({}) has no provisioned performance to change; everest.io/disk-iops applies to GPSSD2 and ESSD2 disks, everest.io/disk-throughput to GPSSD2",
            disk.id, disk.volume_type
        ))
    };
    match disk.volume_type.as_str() {
        "GPSSD2" => {}
        "ESSD2" if tp_change.is_none() => {}
        _ => return Err(no_qos()),
    }
    let iops = p.iops.or(disk.iops).ok_or_else(no_qos)?;
    Ok(Change::Qos {
        iops,
        throughput: p.throughput,
    })
}

/// Whether the disk shows the change done.
fn shows(change: &Change, v: &Volume) -> bool {
    match change {
        Change::Retype { new_type, .. } => v.volume_type == *new_type,
        Change::Qos { iops, throughput } => {
            v.iops == Some(*iops) && throughput.is_none_or(|t| v.throughput == Some(t))
        }
        Change::Nothing => true,
    }
}

impl EvsController {
    /// ControllerModifyVolume: plans the change, runs its job and waits for the disk to show it.
    pub(super) async fn change_volume(
        &self,
        disk_id: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<()> {
        let what = format!("VolumeAttributesClass parameters for backend {}", self.name);
        let params =
            EvsParams::parse(parameters, self.name.as_str()).map_err(|e| e.context(&what))?;
        let disk = self.get(disk_id).await?;
        let change = plan(&disk, &params)?;
        if change == Change::Nothing {
            return Ok(());
        }
        if !is_usable(&disk) {
            return Err(Error::Unavailable(format!(
                "disk {disk_id} is {}; retry once it settles",
                disk.status.as_str()
            )));
        }
        let attempt = match &change {
            Change::Retype {
                new_type,
                iops,
                throughput,
            } => {
                let attempt = format!("changing disk {disk_id} to type {new_type}");
                self.run_job(Service::Evs, &attempt, async {
                    self.client
                        .retype_volume(disk_id, new_type, *iops, *throughput)
                        .await
                        .map(Some)
                })
                .await?;
                attempt
            }
            Change::Qos { iops, throughput } => {
                let attempt = format!("changing disk {disk_id} to {iops} IOPS");
                self.run_job(Service::Evs, &attempt, async {
                    self.client
                        .modify_qos(disk_id, *iops, *throughput)
                        .await
                        .map(Some)
                })
                .await?;
                attempt
            }
            Change::Nothing => return Ok(()),
        };
        // A fixed kind of wait: the attempt names the disk, and each kind learns its own pace.
        self.settle(disk_id, "modified", move |v| {
            is_usable(v) && shows(&change, v)
        })
        .await
        .map_err(|e| e.context(attempt))?;
        tracing::debug!(disk = %disk_id, "modified disk");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(volume_type: &str, iops: Option<u64>) -> Volume {
        serde_json::from_value(serde_json::json!({
            "id": "d1", "status": "in-use", "volume_type": volume_type,
            "iops": iops.map(|i| serde_json::json!({"total_val": i})),
        }))
        .unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> EvsParams {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EvsParams::parse(&map, "evs").unwrap()
    }

    #[test]
    fn plans_the_least_change_and_refuses_fixed_parameters() {
        let ssd = disk("SSD", None);
        assert_eq!(
            plan(&ssd, &params(&[("everest.io/disk-volume-type", "ESSD")])).unwrap(),
            Change::Retype {
                new_type: "ESSD".into(),
                iops: None,
                throughput: None
            }
        );
        assert_eq!(
            plan(&ssd, &params(&[("everest.io/disk-volume-type", "SSD")])).unwrap(),
            Change::Nothing
        );
        let err = plan(&ssd, &params(&[("everest.io/disk-iops", "3000")])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        for fixed in [
            "everest.io/crypt-key-id",
            "everest.io/availability-zone",
            "everest.io/disk-tags",
        ] {
            let err = plan(&ssd, &params(&[(fixed, "k=v")])).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(fixed), "{err}");
        }
        let gp2 = disk("ESSD2", Some(3000));
        assert_eq!(
            plan(&gp2, &params(&[("everest.io/disk-iops", "3000")])).unwrap(),
            Change::Nothing
        );
        assert_eq!(
            plan(&gp2, &params(&[("everest.io/disk-iops", "5000")])).unwrap(),
            Change::Qos {
                iops: 5000,
                throughput: None
            }
        );
    }
}
