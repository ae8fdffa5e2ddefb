//! `status`: Everest's volumes and attachments per backend and node, as the cluster and the
//! cloud each see them, with the disagreements that strand a disk or a pod:
//! - a VolumeAttachment that says attached, for a disk the cloud does not show attached to
//!   that node's server (or a disk the cloud does not have);
//! - a disk of Everest's (created by it, or named by an Everest PV) attached in the cloud to a
//!   node's server with no VolumeAttachment for that disk and node.
//!
//! Disks attached to servers that are not nodes of this cluster, and disks that are not
//! Everest's (system disks, other tools' disks), are none of its business.

use std::collections::{BTreeMap, BTreeSet};

use everest_backend::VolumeId;
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use serde::Serialize;

use crate::cloud::CloudView;
use crate::cluster::Cluster;
use crate::error::Result;

/// The Node annotation where kubelet keeps each CSI driver's node ID (JSON, driver → ID).
const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";

/// What the cluster says.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Every PersistentVolume.
    pub volumes: Vec<PersistentVolume>,
    /// Every VolumeAttachment.
    pub attachments: Vec<VolumeAttachment>,
    /// Every Node.
    pub nodes: Vec<Node>,
}

impl ClusterView {
    /// Reads the cluster.
    pub async fn read(cluster: &Cluster) -> Result<Self> {
        Ok(Self {
            volumes: cluster.persistent_volumes().await?,
            attachments: cluster.volume_attachments().await?,
            nodes: cluster.nodes().await?,
        })
    }
}

/// One backend instance's volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSummary {
    /// The instance.
    pub backend: String,
    /// Its kind, when the configuration names it.
    pub kind: Option<String>,
    /// Everest PVs on it.
    pub persistent_volumes: usize,
    /// Its disks in the cloud that are Everest's, when the cloud was read.
    pub cloud_volumes: Option<usize>,
}

/// One attachment, from either side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentRow {
    /// The backend instance.
    pub backend: String,
    /// The node, when known.
    pub node: Option<String>,
    /// The node's server in the cloud, when known.
    pub server: Option<String>,
    /// The volume handle.
    pub volume_handle: String,
    /// The PV, when one names the volume.
    pub persistent_volume: Option<String>,
    /// The VolumeAttachment, if any.
    pub volume_attachment: Option<String>,
    /// `attached`, `attaching`, `detaching` or `none`.
    pub cluster: String,
    /// `attached`, `not attached`, `no such disk`, or `not read`.
    pub cloud: String,
    /// What disagrees, when something does.
    pub problem: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Volumes per backend instance.
    pub backends: Vec<BackendSummary>,
    /// Attachments per backend and node.
    pub attachments: Vec<AttachmentRow>,
    /// How many rows disagree.
    pub disagreements: usize,
}

/// Compares the two sides.
pub fn compare(cluster: &ClusterView, cloud: &CloudView, driver_name: &str) -> Report {
    let handles: BTreeMap<String, VolumeId> = cluster
        .volumes
        .iter()
        .filter_map(|pv| {
            let csi = pv.spec.as_ref()?.csi.as_ref()?;
            (csi.driver == driver_name)
                .then(|| Some((pv.metadata.name.clone()?, csi.volume_handle.parse().ok()?)))
                .flatten()
        })
        .collect();
    let servers: BTreeMap<String, String> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, node_id(n, driver_name)?)))
        .collect();
    let node_of_server: BTreeMap<&str, &str> = servers
        .iter()
        .map(|(n, s)| (s.as_str(), n.as_str()))
        .collect();
    let pv_of: BTreeMap<&VolumeId, &str> =
        handles.iter().map(|(pv, id)| (id, pv.as_str())).collect();

    let mut rows = Vec::new();
    // (backend, disk, node) of every VolumeAttachment, for the reverse check.
    let mut in_cluster: BTreeSet<(String, String, String)> = BTreeSet::new();
    for va in &cluster.attachments {
        if va.spec.attacher != driver_name {
            continue;
        }
        let id = va
            .spec
            .source
            .persistent_volume_name
            .as_ref()
            .and_then(|pv| handles.get(pv))
            .cloned()
            .or_else(|| {
                let inline = va.spec.source.inline_volume_spec.as_ref()?.csi.as_ref()?;
                inline.volume_handle.parse().ok()
            });
        let Some(id) = id else { continue };
        let node = va.spec.node_name.clone();
        let server = servers.get(&node).cloned();
        in_cluster.insert((
            id.backend().to_string(),
            id.native().to_owned(),
            node.clone(),
        ));
        let attached = va.status.as_ref().is_some_and(|s| s.attached);
        let cluster_state = if va.metadata.deletion_timestamp.is_some() {
            "detaching"
        } else if attached {
            "attached"
        } else {
            "attaching"
        };
        let backend = id.backend().to_string();
        let (cloud_state, problem) = if !cloud.was_read(&backend) {
            ("not read".to_owned(), None)
        } else {
            match (cloud.disk(&backend, id.native()), &server) {
                (None, _) => (
                    "no such disk".to_owned(),
                    Some("the VolumeAttachment names a disk the cloud does not have".to_owned()),
                ),
                (Some(_), None) => (
                    "unknown server".to_owned(),
                    Some(format!(
                        "node {node} has no {driver_name} node ID, so its server is unknown"
                    )),
                ),
                (Some(disk), Some(server)) => {
                    if disk.attached_to.contains(server) {
                        ("attached".to_owned(), None)
                    } else {
                        let problem = (cluster_state == "attached").then(|| {
                            format!("the VolumeAttachment says attached; the cloud does not show the disk on server {server}")
                        });
                        ("not attached".to_owned(), problem)
                    }
                }
            }
        };
        rows.push(AttachmentRow {
            backend,
            node: Some(node),
            server,
            volume_handle: id.to_string(),
            persistent_volume: va.spec.source.persistent_volume_name.clone(),
            volume_attachment: va.metadata.name.clone(),
            cluster: cluster_state.to_owned(),
            cloud: cloud_state,
            problem,
        });
    }
    let known: BTreeSet<(&str, &str)> = handles
        .values()
        .map(|id| (id.backend().as_str(), id.native()))
        .collect();
    for disk in &cloud.disks {
        let ours =
            disk.managed_by_everest || known.contains(&(disk.backend.as_str(), disk.id.as_str()));
        if !ours {
            continue;
        }
        for server in &disk.attached_to {
            let Some(node) = node_of_server.get(server.as_str()) else {
                continue;
            };
            if in_cluster.contains(&(disk.backend.clone(), disk.id.clone(), (*node).to_owned())) {
                continue;
            }
            let handle = everest_backend::BackendName::new(&disk.backend)
                .and_then(|b| VolumeId::new(b, &disk.id));
            let persistent_volume = handle
                .as_ref()
                .ok()
                .and_then(|id| pv_of.get(id))
                .map(|pv| (*pv).to_owned());
            rows.push(AttachmentRow {
                backend: disk.backend.clone(),
                node: Some((*node).to_owned()),
                server: Some(server.clone()),
                volume_handle: handle.map_or_else(|_| disk.id.clone(), |id| id.to_string()),
                persistent_volume,
                volume_attachment: None,
                cluster: "none".into(),
                cloud: "attached".into(),
                problem: Some(
                    "attached in the cloud with no VolumeAttachment for this node".into(),
                ),
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.backend, &a.node, &a.volume_handle).cmp(&(&b.backend, &b.node, &b.volume_handle))
    });
    let disagreements = rows.iter().filter(|r| r.problem.is_some()).count();
    Report {
        backends: summaries(&handles, cloud, &known),
        attachments: rows,
        disagreements,
    }
}

fn summaries(
    handles: &BTreeMap<String, VolumeId>,
    cloud: &CloudView,
    known: &BTreeSet<(&str, &str)>,
) -> Vec<BackendSummary> {
    let mut names: BTreeSet<String> = handles
        .values()
        .map(|id| id.backend().to_string())
        .collect();
    names.extend(cloud.backends.iter().map(|b| b.name.clone()));
    names
        .into_iter()
        .map(|name| {
            let configured = cloud.backends.iter().find(|b| b.name == name);
            BackendSummary {
                kind: configured.map(|b| b.kind.clone()),
                persistent_volumes: handles
                    .values()
                    .filter(|id| id.backend().as_str() == name)
                    .count(),
                cloud_volumes: configured.filter(|b| b.read).map(|_| {
                    cloud
                        .disks
                        .iter()
                        .filter(|d| d.backend == name)
                        .filter(|d| {
                            d.managed_by_everest
                                || known.contains(&(d.backend.as_str(), d.id.as_str()))
                        })
                        .count()
                }),
                backend: name,
            }
        })
        .collect()
}

/// The node ID kubelet recorded for `driver_name` on the Node.
fn node_id(node: &Node, driver_name: &str) -> Option<String> {
    let text = node
        .metadata
        .annotations
        .as_ref()?
        .get(NODE_ID_ANNOTATION)?;
    let ids: BTreeMap<String, String> = serde_json::from_str(text).ok()?;
    ids.get(driver_name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{CloudBackend, CloudDisk};
    use serde_json::json;

    const DRIVER: &str = "everest.csi.io";

    fn cluster(attachments: &[(&str, bool)]) -> ClusterView {
        let pv = |name: &str, disk: &str| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"csi": {"driver": DRIVER, "volumeHandle": format!("v1:evs-a:{disk}")}}
            }))
            .unwrap()
        };
        ClusterView {
            volumes: vec![pv("pv-1", "d1"), pv("pv-2", "d2")],
            attachments: attachments
                .iter()
                .map(|(pv, attached)| {
                    serde_json::from_value(json!({
                        "metadata": {"name": format!("csi-{pv}")},
                        "spec": {"attacher": DRIVER, "nodeName": "n1", "source": {"persistentVolumeName": pv}},
                        "status": {"attached": attached}
                    }))
                    .unwrap()
                })
                .collect(),
            nodes: vec![
                serde_json::from_value(json!({"metadata": {"name": "n1", "annotations": {
                    NODE_ID_ANNOTATION: json!({DRIVER: "server-1"}).to_string()}}}))
                .unwrap(),
            ],
        }
    }

    fn cloud(disks: &[(&str, bool, &[&str])]) -> CloudView {
        CloudView {
            backends: vec![CloudBackend {
                name: "evs-a".into(),
                kind: "evs".into(),
                read: true,
                error: None,
            }],
            disks: disks
                .iter()
                .map(|(id, managed, servers)| CloudDisk {
                    backend: "evs-a".into(),
                    id: (*id).into(),
                    name: format!("disk-{id}"),
                    size_bytes: Some(10 << 30),
                    status: "in-use".into(),
                    managed_by_everest: *managed,
                    attached_to: servers.iter().map(|s| (*s).to_owned()).collect(),
                    tags: Default::default(),
                    created_at: None,
                    aliases: Vec::new(),
                    on_delete: None,
                })
                .collect(),
        }
    }

    fn problems(report: &Report) -> Vec<(String, &str, &str)> {
        report
            .attachments
            .iter()
            .filter(|r| r.problem.is_some())
            .map(|r| {
                (
                    r.volume_handle.clone(),
                    r.cluster.as_str(),
                    r.cloud.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn agreement_is_quiet() {
        let report = compare(
            &cluster(&[("pv-1", true)]),
            &cloud(&[("d1", true, &["server-1"]), ("d2", true, &[])]),
            DRIVER,
        );
        assert_eq!(report.disagreements, 0, "{report:#?}");
        assert_eq!(report.attachments.len(), 1);
    }

    #[test]
    fn each_way_of_disagreeing_is_flagged() {
        let report = compare(
            &cluster(&[("pv-1", true)]),
            &cloud(&[("d1", true, &[]), ("d2", false, &["server-1"])]),
            DRIVER,
        );
        assert_eq!(
            problems(&report),
            vec![
                ("v1:evs-a:d1".to_owned(), "attached", "not attached"),
                ("v1:evs-a:d2".to_owned(), "none", "attached"),
            ]
        );
    }

    #[test]
    fn what_is_not_a_disagreement() {
        // An attach in progress; a disk that is not Everest's (a system disk); a disk on a
        // server that is no node of this cluster.
        let report = compare(
            &cluster(&[("pv-1", false)]),
            &cloud(&[
                ("d1", true, &[]),
                ("system-disk", false, &["server-1"]),
                ("d2", true, &["server-elsewhere"]),
            ]),
            DRIVER,
        );
        assert_eq!(report.disagreements, 0, "{report:#?}");
        assert_eq!(report.attachments[0].cluster, "attaching");
    }
}
