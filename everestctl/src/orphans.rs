//! `orphans`: backend volumes Everest created for this cluster whose PersistentVolume is gone.
//!
//! A volume is listed when all of these hold:
//! - its marker (see `docs/tags.md`) says Everest made it for this cluster (`[controller]
//!   cluster_id`) and for the instance it was read through. A resource without a marker is not
//!   Everest's; one marked by another cluster is that cluster's business and only counted;
//! - no PersistentVolume's volume handle names it, and no PersistentVolume has the name its
//!   marker recorded (a PV rewritten by hand or by a migration may name the same volume
//!   differently);
//! - it is at least `--min-age` old. csi-provisioner writes the PV only after CreateVolume has
//!   answered, so a volume created a moment ago has no PV yet and is not stranded; the age
//!   guard keeps such a volume off the list. A volume whose age the cloud does not tell is held
//!   back the same way unless the minimum age is zero.
//!
//! Only the listing is decided here, from what was read; deleting is [`crate::deletion`].

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use everest_backend::capacity::GIB;
use everest_backend::marker::{self, ClusterId, DeletePolicy, Marker, Owner};
use everest_backend::{BackendName, VolumeId};
use k8s_openapi::api::core::v1::PersistentVolume;
use serde::{Serialize, Serializer};

use crate::age::Age;
use crate::cloud::{CloudBackend, CloudDisk, CloudView, format_time};

/// What the cluster's PersistentVolumes say is in use.
#[derive(Debug, Clone, Default)]
pub struct PvIndex {
    /// Every volume handle in Everest's format, of any CSI driver name: a wrong `--driver-name`
    /// must never make a live volume look stranded.
    handles: BTreeSet<VolumeId>,
    /// Every PV name, as a marker stores it ([`marker::encode`]).
    names: BTreeSet<String>,
}

impl PvIndex {
    /// Indexes `volumes`.
    pub fn new(volumes: &[PersistentVolume]) -> Self {
        let handles = volumes
            .iter()
            .filter_map(|pv| pv.spec.as_ref()?.csi.as_ref()?.volume_handle.parse().ok())
            .collect();
        let names = volumes
            .iter()
            .filter_map(|pv| pv.metadata.name.as_deref())
            .map(marker::encode)
            .collect();
        Self { handles, names }
    }

    /// Whether a PV names the volume by any of `ids` (one volume has a handle per delete
    /// policy), or has the PV name `pv_name` (as the marker stores it) that the volume was
    /// created for.
    pub fn holds_any<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a VolumeId>,
        pv_name: Option<&str>,
    ) -> bool {
        ids.into_iter().any(|id| self.handles.contains(id))
            || pv_name.is_some_and(|n| self.names.contains(n))
    }
}

/// What decides the listing besides the two sides' state.
#[derive(Debug, Clone)]
pub struct Options {
    /// This cluster, as the configuration names it.
    pub cluster: ClusterId,
    /// Younger volumes are not listed.
    pub min_age: Age,
    /// The time ages are measured to.
    pub now: DateTime<Utc>,
}

/// One backend instance: what was seen there, by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendCheck {
    /// The instance.
    pub backend: String,
    /// Its kind.
    pub kind: String,
    /// Whether its volumes were listed; when not, `note` says why.
    pub checked: bool,
    /// Why the instance was not checked.
    pub note: Option<String>,
    /// Whether it was asked and the asking failed (`note` says how).
    pub failed: bool,
    /// Volumes the cloud listed through it.
    pub volumes: usize,
    /// Of those, marked by this cluster for this instance.
    pub ours: usize,
    /// Of ours, named by a PersistentVolume.
    pub in_use: usize,
    /// Marked by another cluster (never listed as ours).
    pub other_clusters: usize,
    /// Marked by this cluster for another instance (counted where that instance is read).
    pub other_instances: usize,
    /// Of ours without a PV, younger than the minimum age.
    pub too_young: usize,
    /// Of ours without a PV, of unknown age (held back unless the minimum age is zero).
    pub age_unknown: usize,
    /// Listed as stranded.
    pub orphans: usize,
}

/// One stranded volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    /// The backend instance.
    pub backend: String,
    /// Its kind.
    pub kind: String,
    /// The volume handle a PV of it would have had.
    #[serde(serialize_with = "display")]
    pub volume_handle: VolumeId,
    /// Its name in the cloud (share name, directory, bucket, `bucket/prefix`).
    pub name: String,
    /// Its size, where the service has one.
    pub size_bytes: Option<u64>,
    /// What `--delete` does with it, by its backend's rules and its marker: `delete`,
    /// `archive`, `retain`; `None` when the marker records no policy (never deleted).
    pub on_delete: Option<DeletePolicy>,
    /// The other handles that name it (with another policy), for the PV check.
    #[serde(skip)]
    pub aliases: Vec<VolumeId>,
    /// When it was created, if the cloud says.
    pub created_at: Option<String>,
    /// Its age in seconds, when known.
    #[serde(rename = "age_seconds", serialize_with = "seconds")]
    pub age: Option<Age>,
    /// The PV it was created for, as the marker recorded it.
    pub pv_name: Option<String>,
    /// The claim it was created for, as the marker recorded it.
    pub pvc_name: Option<String>,
    /// That claim's namespace, as the marker recorded it.
    pub pvc_namespace: Option<String>,
    /// Servers it is attached to (`--delete` refuses these).
    pub attached_to: Vec<String>,
    /// What `--delete` did with it; `None` in a listing.
    pub outcome: Option<Outcome>,
}

/// What `--delete` did with one orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend deleted it.
    Deleted,
    /// The backend archived it (kept under another name), as its policy says.
    Archived,
    /// Not deleted: its policy is to keep it.
    Retained,
    /// Not deleted, by rule (it is attached, or its marker records no delete policy); the
    /// reason says what to do.
    Refused(String),
    /// Not deleted: a PV names it since it was listed.
    Kept(String),
    /// The backend's delete failed (or refused, e.g. a disk with snapshots).
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Deleted => f.write_str("deleted"),
            Outcome::Archived => f.write_str("archived"),
            Outcome::Retained => f.write_str("retained, not deleted (its delete policy is retain)"),
            Outcome::Refused(why) => write!(f, "refused: {why}"),
            Outcome::Kept(why) => write!(f, "kept: {why}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn display<S: Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn seconds<S: Serializer>(age: &Option<Age>, s: S) -> Result<S::Ok, S::Error> {
    age.map(Age::as_secs).serialize(s)
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The cluster whose volumes were looked for.
    pub cluster_id: String,
    /// The minimum age, in seconds.
    #[serde(rename = "min_age_seconds", serialize_with = "min_age_seconds")]
    pub min_age: Age,
    /// Every configured instance.
    pub backends: Vec<BackendCheck>,
    /// The stranded volumes, by instance and handle.
    pub orphans: Vec<Orphan>,
    /// Volumes skipped as other clusters'.
    pub other_clusters: usize,
    /// Volumes of ours without a PV that are too young, or of unknown age, to be listed.
    pub held_back: usize,
}

fn min_age_seconds<S: Serializer>(age: &Age, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(age.as_secs())
}

impl Report {
    /// Whether something is left for the operator: an orphan not dealt with as its policy
    /// says (deleted, archived, or retained on purpose), or an instance that could not be read.
    pub fn needs_attention(&self) -> bool {
        self.backends.iter().any(|b| b.failed)
            || self.orphans.iter().any(|o| {
                !matches!(
                    o.outcome,
                    Some(Outcome::Deleted | Outcome::Archived | Outcome::Retained)
                )
            })
    }

    /// Instances whose volumes were not listed.
    pub fn unchecked(&self) -> impl Iterator<Item = &BackendCheck> {
        self.backends.iter().filter(|b| !b.checked)
    }
}

/// Why the instance `b` is not listed.
fn not_checked(b: &CloudBackend) -> String {
    match &b.error {
        Some(e) => format!("not checked: {e}"),
        None => format!("not checked: everestctl does not list {} volumes", b.kind),
    }
}

/// Lists the stranded volumes among `cloud`'s, given the cluster's `pvs`.
pub fn find(cloud: &CloudView, pvs: &PvIndex, opts: &Options) -> Report {
    let mut backends = Vec::new();
    let mut orphans = Vec::new();
    // Two instances may read one cloud project: another cluster's disk is counted once.
    let mut other_clusters: BTreeSet<&str> = BTreeSet::new();
    for b in &cloud.backends {
        let mut check = BackendCheck {
            backend: b.name.clone(),
            kind: b.kind.clone(),
            checked: b.read,
            note: (!b.read).then(|| not_checked(b)),
            failed: b.error.is_some(),
            volumes: 0,
            ours: 0,
            in_use: 0,
            other_clusters: 0,
            other_instances: 0,
            too_young: 0,
            age_unknown: 0,
            orphans: 0,
        };
        // A name the configuration accepted is valid; a name that is not cannot own a volume.
        let Ok(name) = BackendName::new(&b.name) else {
            backends.push(check);
            continue;
        };
        for disk in cloud.disks.iter().filter(|d| d.backend == b.name) {
            check.volumes += 1;
            let mark = match Marker::owner(&disk.tags, &opts.cluster, &name) {
                Owner::Foreign => continue,
                Owner::Elsewhere(m) => {
                    if m.cluster == marker::encode(opts.cluster.as_str()) {
                        check.other_instances += 1;
                    } else {
                        check.other_clusters += 1;
                        other_clusters.insert(&disk.id);
                    }
                    continue;
                }
                Owner::Ours(m) => m,
            };
            check.ours += 1;
            // Every native ID a backend issues fits a volume handle; one that does not was not
            // made by a backend, cannot be deleted through one, and is only counted as ours.
            let Ok(id) = VolumeId::new(name.clone(), &disk.id) else {
                continue;
            };
            // Aliases that do not parse cannot be in a PV's handle either.
            let aliases: Vec<VolumeId> = disk
                .aliases
                .iter()
                .filter_map(|a| VolumeId::new(name.clone(), a).ok())
                .collect();
            if pvs.holds_any(
                std::iter::once(&id).chain(&aliases),
                mark.pv_name.as_deref(),
            ) {
                check.in_use += 1;
                continue;
            }
            let age = disk
                .created_at
                .map(|t| Age::from_secs(u64::try_from((opts.now - t).num_seconds()).unwrap_or(0)));
            match age {
                Some(age) if age < opts.min_age => {
                    check.too_young += 1;
                    continue;
                }
                None if opts.min_age > Age::from_secs(0) => {
                    check.age_unknown += 1;
                    continue;
                }
                _ => {}
            }
            check.orphans += 1;
            orphans.push(orphan(&b.kind, id, aliases, disk, age, mark));
        }
        backends.push(check);
    }
    orphans.sort_by(|a, b| (&a.backend, &a.volume_handle).cmp(&(&b.backend, &b.volume_handle)));
    Report {
        cluster_id: opts.cluster.to_string(),
        min_age: opts.min_age,
        other_clusters: other_clusters.len(),
        held_back: backends.iter().map(|b| b.too_young + b.age_unknown).sum(),
        backends,
        orphans,
    }
}

fn orphan(
    kind: &str,
    id: VolumeId,
    aliases: Vec<VolumeId>,
    disk: &CloudDisk,
    age: Option<Age>,
    m: Marker,
) -> Orphan {
    Orphan {
        backend: disk.backend.clone(),
        kind: kind.to_owned(),
        volume_handle: id,
        name: disk.name.clone(),
        size_bytes: disk.size_bytes,
        on_delete: disk.on_delete,
        aliases,
        created_at: disk.created_at.as_ref().map(format_time),
        age,
        pv_name: m.pv_name,
        pvc_name: m.pvc_name,
        pvc_namespace: m.pvc_namespace,
        attached_to: disk.attached_to.clone(),
        outcome: None,
    }
}

/// A size as a person reads it: whole GiB as `10Gi`, anything else in bytes.
pub fn format_size(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(GIB) {
        format!("{}Gi", bytes / GIB)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Duration;
    use serde_json::json;

    use super::*;
    use crate::cloud::CloudBackend;

    const HOUR: i64 = 3600;

    fn now() -> DateTime<Utc> {
        "2026-12-03T02:00:00Z".parse().unwrap()
    }

    fn marked(cluster: &str, backend: &str, pv: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("everest-created-by".into(), "everest".into()),
            ("everest-cluster".into(), cluster.into()),
            ("everest-backend".into(), backend.into()),
            ("everest-pv-name".into(), pv.into()),
            ("everest-pvc-name".into(), format!("claim-{pv}")),
            ("everest-pvc-namespace".into(), "shop".into()),
        ])
    }

    fn disk(id: &str, tags: BTreeMap<String, String>, age_secs: i64) -> CloudDisk {
        CloudDisk {
            backend: "evs-a".into(),
            id: id.into(),
            name: id.into(),
            size_bytes: Some(10 * GIB),
            status: "available".into(),
            managed_by_everest: true,
            attached_to: Vec::new(),
            tags,
            created_at: Some(now() - Duration::seconds(age_secs)),
            aliases: Vec::new(),
            on_delete: Some(DeletePolicy::Delete),
        }
    }

    fn cloud(disks: Vec<CloudDisk>) -> CloudView {
        CloudView {
            backends: vec![
                CloudBackend {
                    name: "evs-a".into(),
                    kind: "evs".into(),
                    read: true,
                    error: None,
                },
                CloudBackend {
                    name: "files".into(),
                    kind: "sfs".into(),
                    read: false,
                    error: Some("backend files: listing its volumes: NFS server down".into()),
                },
            ],
            disks,
        }
    }

    fn pv(name: &str, handle: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"csi": {"driver": "everest.csi.io", "volumeHandle": handle}}
        }))
        .unwrap()
    }

    fn opts(min_age_secs: u64) -> Options {
        Options {
            cluster: ClusterId::new("prod").unwrap(),
            min_age: Age::from_secs(min_age_secs),
            now: now(),
        }
    }

    fn listed(report: &Report) -> Vec<String> {
        report
            .orphans
            .iter()
            .map(|o| o.volume_handle.to_string())
            .collect()
    }

    #[test]
    fn only_this_clusters_old_volumes_without_a_pv_are_listed() {
        let view = cloud(vec![
            disk("live", marked("prod", "evs-a", "pvc-live"), 5 * HOUR),
            disk("stranded", marked("prod", "evs-a", "pvc-gone"), 5 * HOUR),
            disk("theirs", marked("staging", "evs-a", "pvc-x"), 5 * HOUR),
            disk("other-instance", marked("prod", "evs-b", "pvc-y"), 5 * HOUR),
            disk("young", marked("prod", "evs-a", "pvc-new"), 60),
            disk("foreign", BTreeMap::new(), 5 * HOUR),
        ]);
        let pvs = PvIndex::new(&[pv("pvc-live", "v1:evs-a:live")]);
        let report = find(&view, &pvs, &opts(3600));
        assert_eq!(listed(&report), vec!["v1:evs-a:stranded"]);
        let o = &report.orphans[0];
        assert_eq!(o.age, Some(Age::from_secs(5 * 3600)));
        assert_eq!(o.size_bytes, Some(10 * GIB));
        assert_eq!(o.pv_name.as_deref(), Some("pvc-gone"));
        assert_eq!(o.pvc_name.as_deref(), Some("claim-pvc-gone"));
        assert_eq!(o.created_at.as_deref(), Some("2026-12-02T21:00:00Z"));
        assert_eq!(report.other_clusters, 1);
        assert_eq!(report.held_back, 1);
        let evs = &report.backends[0];
        assert_eq!(
            (evs.volumes, evs.ours, evs.in_use, evs.other_instances),
            (6, 3, 1, 1)
        );
        assert!(report.needs_attention());
        // Kinds that are not listed say so.
        let files: Vec<&BackendCheck> = report.unchecked().collect();
        assert_eq!(files.len(), 1);
        assert!(files[0].note.as_deref().unwrap().contains("not checked"));
    }

    #[test]
    fn a_pv_with_the_recorded_name_keeps_a_volume_off_the_list() {
        // The PV names the disk under another instance name (rewritten by hand), but it is the
        // PV the disk was made for.
        let view = cloud(vec![disk(
            "d1",
            marked("prod", "evs-a", "pvc-moved"),
            5 * HOUR,
        )]);
        let pvs = PvIndex::new(&[pv("pvc-moved", "v1:evs-renamed:d1")]);
        assert!(find(&view, &pvs, &opts(0)).orphans.is_empty());
        // Another driver name with our handle is still ours in use.
        let mut other_driver = pv("pvc-other", "v1:evs-a:d1");
        other_driver
            .spec
            .as_mut()
            .unwrap()
            .csi
            .as_mut()
            .unwrap()
            .driver = "old.csi.io".into();
        assert!(
            find(&view, &PvIndex::new(&[other_driver]), &opts(0))
                .orphans
                .is_empty()
        );
        assert_eq!(
            listed(&find(&view, &PvIndex::default(), &opts(0))),
            ["v1:evs-a:d1"]
        );
    }

    #[test]
    fn a_pv_naming_the_volume_with_another_policy_keeps_it_off_the_list() {
        let mut dir = disk("d~data", marked("prod", "evs-a", "pvc-dir"), 5 * HOUR);
        dir.aliases = vec!["r~data".into(), "a~data".into()];
        dir.on_delete = Some(DeletePolicy::Delete);
        let view = cloud(vec![dir]);
        // A static PV written by hand with the keeping form of the same directory.
        let pvs = PvIndex::new(&[pv("static-data", "v1:evs-a:r~data")]);
        assert!(find(&view, &pvs, &opts(0)).orphans.is_empty());
        let listed = find(&view, &PvIndex::default(), &opts(0));
        assert_eq!(listed.orphans[0].aliases.len(), 2);
        assert_eq!(listed.orphans[0].on_delete, Some(DeletePolicy::Delete));
    }

    #[test]
    fn the_minimum_age_holds_back_young_and_undated_volumes() {
        let mut undated = disk("undated", marked("prod", "evs-a", "pvc-u"), 0);
        undated.created_at = None;
        let view = cloud(vec![
            disk("young", marked("prod", "evs-a", "pvc-y"), HOUR - 1),
            disk("old", marked("prod", "evs-a", "pvc-o"), HOUR),
            undated,
        ]);
        let report = find(&view, &PvIndex::default(), &opts(3600));
        assert_eq!(listed(&report), ["v1:evs-a:old"]);
        assert_eq!(
            (report.backends[0].too_young, report.backends[0].age_unknown),
            (1, 1)
        );
        let all = find(&view, &PvIndex::default(), &opts(0));
        assert_eq!(all.orphans.len(), 3);
        // An instance that could not be read needs attention even with nothing listed.
        assert!(find(&cloud(vec![]), &PvIndex::default(), &opts(0)).needs_attention());
    }

    #[test]
    fn the_report_reads_as_json() {
        let view = cloud(vec![disk("d1", marked("prod", "evs-a", "pvc-1"), 90)]);
        let mut report = find(&view, &PvIndex::default(), &opts(60));
        report.orphans[0].outcome = Some(Outcome::Deleted);
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["min_age_seconds"], 60);
        assert_eq!(v["orphans"][0]["volume_handle"], "v1:evs-a:d1");
        assert_eq!(v["orphans"][0]["age_seconds"], 90);
        assert_eq!(v["orphans"][0]["outcome"], "deleted");
        assert_eq!(v["orphans"][0]["on_delete"], "delete");
        assert!(v["orphans"][0].get("aliases").is_none());
        // Only the unreadable instance is left to look at.
        assert!(report.needs_attention());
        report.backends.retain(|b| !b.failed);
        assert!(!report.needs_attention());
        for (outcome, done) in [
            (Outcome::Archived, true),
            (Outcome::Retained, true),
            (Outcome::Refused("x".into()), false),
            (Outcome::Kept("x".into()), false),
            (Outcome::Failed("x".into()), false),
        ] {
            report.orphans[0].outcome = Some(outcome.clone());
            assert_eq!(report.needs_attention(), !done, "{outcome}");
        }
        assert_eq!(format_size(10 * GIB), "10Gi");
        assert_eq!(format_size(1000), "1000B");
    }
}
