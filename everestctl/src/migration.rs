//! The FlexVolume migration plan, derived from the cluster's state alone.
//!
//! Each bound FlexVolume PV made by one of CCE's drivers becomes an Everest CSI PV **with the
//! same name**, pre-bound (`claimRef` with the claim's uid) to the same claim. A claim's
//! `spec.volumeName` is immutable, so the claim cannot be pointed at a new name; keeping the
//! name keeps the claim's reference valid. The PV controller, seeing a bound claim whose
//! volume exists and names the claim's uid, keeps (or puts back) both as Bound; while the old
//! PV is gone and the new one not yet there, it may mark the claim `Lost` for a moment, and
//! the new PV brings it back.
//!
//! The steps, in order ([`Step`]):
//! 1. `retain`: the old PV's reclaim policy becomes Retain (its original policy is kept in an
//!    annotation), so deleting the PV object can never reach the data;
//! 2. `record`: the CSI PV to create is written into an annotation of the claim, which
//!    outlives the old PV: a run interrupted after the deletion still knows what to create;
//! 3. `delete-old`: the old PV is deleted (only if still Retain, re-read just before), and
//!    the `kubernetes.io/pv-protection` finalizer — which holds a Bound PV forever — removed;
//! 4. `create-new`: the recorded CSI PV is created;
//! 5. `finish`: the record is removed from the claim.
//!
//! Which steps remain is read from the cluster every time ([`plan`]), so running the command
//! again after an interruption, or after it finished, does only what is left.

use std::collections::BTreeMap;

use everest_backend::VolumeId;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::Result;
use crate::flexvolume::{self, CceDriver, Translation};
use crate::targets::{Target, Targets};

/// The claim annotation holding the CSI PV still to be created (JSON).
pub const RECORD_ANNOTATION: &str = "everest.io/flexvolume-migration";
/// The annotation on a migrated PV naming the FlexVolume driver it came from.
pub const MIGRATED_FROM_ANNOTATION: &str = "everest.io/migrated-from";
/// The annotation keeping a PV's reclaim policy from before the migration set Retain.
pub const ORIGINAL_POLICY_ANNOTATION: &str = "everest.io/flexvolume-reclaim-policy";
/// The annotation naming who provisioned a PV.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The finalizer that keeps a Bound PV from going away.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// The reclaim policy that never deletes data.
pub const RETAIN: &str = "Retain";

/// One step of one volume's migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Set the old PV's reclaim policy to Retain.
    Retain,
    /// Write the CSI PV to create into the claim's annotation.
    Record,
    /// Delete the old PV (Retain checked first) and release its protection finalizer.
    DeleteOld,
    /// Create the CSI PV.
    CreateNew,
    /// Remove the record from the claim.
    Finish,
}

impl Step {
    /// The step's name as plans print it.
    pub fn name(self) -> &'static str {
        match self {
            Step::Retain => "retain",
            Step::Record => "record",
            Step::DeleteOld => "delete-old",
            Step::CreateNew => "create-new",
            Step::Finish => "finish",
        }
    }
}

/// Where one volume stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// `--apply` will take the steps listed.
    Ready,
    /// Running pods use the claim; `--force-in-use` migrates anyway.
    InUse {
        /// `namespace/name` of each pod.
        pods: Vec<String>,
    },
    /// Not migrated, for the reason given.
    Skipped {
        /// Why, and what to do.
        reason: String,
    },
    /// Migrated already.
    Done,
}

/// One volume in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The PV's name (the same before and after).
    pub persistent_volume: String,
    /// The claim, `namespace/name`.
    pub claim: Option<String>,
    /// The FlexVolume driver it uses (or used).
    pub driver: Option<CceDriver>,
    /// The Everest backend instance it moves to.
    pub backend: Option<String>,
    /// The CSI volume handle it gets.
    pub volume_handle: Option<String>,
    /// `spec.capacity.storage`.
    pub capacity: Option<String>,
    /// `spec.accessModes`.
    pub access_modes: Vec<String>,
    /// What remains to do, in order.
    pub steps: Vec<Step>,
    /// Where it stands.
    #[serde(flatten)]
    pub state: State,
    /// The CSI PV that will be created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_volume: Option<PersistentVolume>,
    /// The old PV's uid, which every step checks before touching it.
    #[serde(skip)]
    pub old_uid: Option<String>,
}

impl Entry {
    /// `(namespace, name)` of the claim.
    pub fn claim_key(&self) -> Option<(&str, &str)> {
        self.claim.as_deref().and_then(|c| c.split_once('/'))
    }
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// One entry per FlexVolume PV, migration in progress, or migrated PV.
    pub volumes: Vec<Entry>,
}

impl Plan {
    /// The entries `--apply` works on.
    pub fn ready(&self) -> impl Iterator<Item = &Entry> {
        self.volumes.iter().filter(|e| e.state == State::Ready)
    }

    /// Whether anything is left that the command did not (or could not) migrate.
    pub fn needs_attention(&self) -> bool {
        self.volumes.iter().any(|e| e.state != State::Done)
    }
}

/// What the plan is made from: the cluster's PVs, claims and pods at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every PersistentVolume.
    pub volumes: Vec<PersistentVolume>,
    /// Every PersistentVolumeClaim.
    pub claims: Vec<PersistentVolumeClaim>,
    /// Every Pod.
    pub pods: Vec<Pod>,
}

impl Snapshot {
    /// Reads the cluster.
    pub async fn read(cluster: &Cluster) -> Result<Self> {
        Ok(Self {
            volumes: cluster.persistent_volumes().await?,
            claims: cluster.claims().await?,
            pods: cluster.pods().await?,
        })
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<&PersistentVolumeClaim> {
        self.claims.iter().find(|c| {
            c.metadata.namespace.as_deref() == Some(namespace)
                && c.metadata.name.as_deref() == Some(name)
        })
    }

    fn volume(&self, name: &str) -> Option<&PersistentVolume> {
        self.volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(name))
    }

    /// Pods not yet finished whose volumes name the claim.
    fn pods_using(&self, namespace: &str, claim: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .filter(|p| {
                p.spec.as_ref().is_some_and(|spec| {
                    spec.volumes.iter().flatten().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim)
                    })
                })
            })
            .map(|p| {
                format!(
                    "{namespace}/{}",
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect()
    }
}

/// How to plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// The CSI driver name the new PVs name.
    pub driver_name: String,
    /// Migrate claims that running pods use.
    pub force_in_use: bool,
}

/// The plan for the cluster as `snapshot` shows it.
pub fn plan(snapshot: &Snapshot, targets: &Targets, options: &Options) -> Plan {
    let mut volumes = Vec::new();
    for pv in &snapshot.volumes {
        if let Some(entry) = flex_entry(snapshot, pv, targets, options)
            .or_else(|| migrated_entry(snapshot, pv, options))
        {
            volumes.push(entry);
        }
    }
    for claim in &snapshot.claims {
        if let Some(entry) = recorded_entry(snapshot, claim, options) {
            volumes.push(entry);
        }
    }
    volumes.sort_by(|a, b| (&a.claim, &a.persistent_volume).cmp(&(&b.claim, &b.persistent_volume)));
    Plan { volumes }
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a String> {
    meta.annotations.as_ref().and_then(|a| a.get(key))
}

fn base_entry(pv: &PersistentVolume) -> Entry {
    let spec = pv.spec.clone().unwrap_or_default();
    Entry {
        persistent_volume: name_of(&pv.metadata),
        claim: spec.claim_ref.as_ref().map(|c| {
            format!(
                "{}/{}",
                c.namespace.as_deref().unwrap_or_default(),
                c.name.as_deref().unwrap_or_default()
            )
        }),
        driver: spec
            .flex_volume
            .as_ref()
            .and_then(|f| CceDriver::from_name(&f.driver)),
        backend: None,
        volume_handle: None,
        capacity: spec
            .capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        steps: Vec::new(),
        state: State::Ready,
        new_volume: None,
        old_uid: pv.metadata.uid.clone(),
    }
}

fn skipped(mut entry: Entry, reason: impl Into<String>) -> Option<Entry> {
    entry.state = State::Skipped {
        reason: reason.into(),
    };
    Some(entry)
}

/// The entry of a PV that still uses a CCE FlexVolume driver.
fn flex_entry(
    snapshot: &Snapshot,
    pv: &PersistentVolume,
    targets: &Targets,
    options: &Options,
) -> Option<Entry> {
    let spec = pv.spec.as_ref()?;
    let flex = spec.flex_volume.as_ref()?;
    let driver = CceDriver::from_name(&flex.driver)?;
    let entry = base_entry(pv);
    let Some(claim_ref) = &spec.claim_ref else {
        return skipped(
            entry,
            "not bound to a claim: nothing to rebind (create an Everest PV by hand if you need it)",
        );
    };
    let (namespace, claim_name) = (
        claim_ref.namespace.as_deref().unwrap_or_default(),
        claim_ref.name.as_deref().unwrap_or_default(),
    );
    let bound = snapshot.claim(namespace, claim_name).filter(|c| {
        c.metadata.uid == claim_ref.uid
            && c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == pv.metadata.name.as_deref()
    });
    let Some(claim) = bound else {
        return skipped(
            entry,
            format!(
                "claim {namespace}/{claim_name} is not bound to this volume (it is gone, or bound elsewhere)"
            ),
        );
    };
    let recorded = match recorded_volume(claim) {
        Ok(r) => r,
        Err(why) => return skipped(entry, why),
    };
    let new_volume = match recorded {
        Some(r) => r,
        None => {
            let translation = match flexvolume::translate(driver, flex) {
                Ok(t) => t,
                Err(why) => return skipped(entry, why),
            };
            let Some(target) = targets.get(translation.kind) else {
                return skipped(
                    entry,
                    format!(
                        "no backend instance for kind {}: pass --backend {}=<instance> or --storage-class {}=<class>",
                        translation.kind, translation.kind, translation.kind
                    ),
                );
            };
            match csi_volume(
                pv,
                claim,
                driver,
                &translation,
                target,
                &options.driver_name,
            ) {
                Ok(v) => v,
                Err(why) => return skipped(entry, why),
            }
        }
    };
    let mut steps = Vec::new();
    if spec.persistent_volume_reclaim_policy.as_deref() != Some(RETAIN) {
        steps.push(Step::Retain);
    }
    if annotation(&claim.metadata, RECORD_ANNOTATION).is_none() {
        steps.push(Step::Record);
    }
    steps.extend([Step::DeleteOld, Step::CreateNew, Step::Finish]);
    let mut entry = with_new_volume(entry, new_volume, steps);
    let pods = snapshot.pods_using(namespace, claim_name);
    if !pods.is_empty() && !options.force_in_use {
        entry.state = State::InUse { pods };
    }
    Some(entry)
}

/// The entry of a claim whose record says a migration is under way or finished but for the
/// record; its old PV is gone (or already replaced).
fn recorded_entry(
    snapshot: &Snapshot,
    claim: &PersistentVolumeClaim,
    options: &Options,
) -> Option<Entry> {
    annotation(&claim.metadata, RECORD_ANNOTATION)?;
    let volume_name = claim.spec.as_ref()?.volume_name.clone()?;
    let current = snapshot.volume(&volume_name);
    if current.is_some_and(|pv| pv.spec.as_ref().is_some_and(|s| s.flex_volume.is_some())) {
        // The old PV is still there: flex_entry covers it.
        return None;
    }
    let claim_key = format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        name_of(&claim.metadata)
    );
    let recorded = recorded_volume(claim);
    let placeholder = Entry {
        persistent_volume: volume_name.clone(),
        claim: Some(claim_key),
        driver: None,
        backend: None,
        volume_handle: None,
        capacity: None,
        access_modes: Vec::new(),
        steps: Vec::new(),
        state: State::Ready,
        new_volume: None,
        old_uid: None,
    };
    let new_volume = match recorded {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(why) => return skipped(placeholder, why),
    };
    let handle = csi_handle(&new_volume);
    match current {
        None => Some(with_new_volume(
            placeholder,
            new_volume,
            vec![Step::CreateNew, Step::Finish],
        )),
        Some(pv)
            if csi_handle(pv).is_some_and(|h| Some(h) == handle)
                && csi_driver(pv) == Some(options.driver_name.as_str()) =>
        {
            Some(with_new_volume(placeholder, new_volume, vec![Step::Finish]))
        }
        Some(_) => skipped(
            with_new_volume(placeholder, new_volume, Vec::new()),
            format!(
                "PV {volume_name} exists and is neither the FlexVolume PV nor the recorded CSI PV; compare it with the claim's {RECORD_ANNOTATION} annotation"
            ),
        ),
    }
}

/// The entry of a PV this command migrated whose claim holds no record any more.
fn migrated_entry(snapshot: &Snapshot, pv: &PersistentVolume, options: &Options) -> Option<Entry> {
    annotation(&pv.metadata, MIGRATED_FROM_ANNOTATION)?;
    if csi_driver(pv) != Some(options.driver_name.as_str()) {
        return None;
    }
    let claim_ref = pv.spec.as_ref()?.claim_ref.as_ref()?;
    let claim = snapshot.claim(
        claim_ref.namespace.as_deref().unwrap_or_default(),
        claim_ref.name.as_deref().unwrap_or_default(),
    );
    if claim.is_some_and(|c| annotation(&c.metadata, RECORD_ANNOTATION).is_some()) {
        // recorded_entry covers it.
        return None;
    }
    let mut entry = with_new_volume(base_entry(pv), pv.clone(), Vec::new());
    entry.new_volume = None;
    entry.state = State::Done;
    Some(entry)
}

fn with_new_volume(mut entry: Entry, new_volume: PersistentVolume, steps: Vec<Step>) -> Entry {
    entry.backend = csi_handle(&new_volume)
        .and_then(|h| h.parse::<VolumeId>().ok())
        .map(|id| id.backend().to_string());
    entry.volume_handle = csi_handle(&new_volume).map(str::to_owned);
    entry.driver = entry.driver.or_else(|| {
        annotation(&new_volume.metadata, MIGRATED_FROM_ANNOTATION)
            .and_then(|d| CceDriver::from_name(d))
    });
    if let Some(spec) = &new_volume.spec {
        entry.capacity = entry.capacity.or_else(|| {
            spec.capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.clone())
        });
        if entry.access_modes.is_empty() {
            entry.access_modes = spec.access_modes.clone().unwrap_or_default();
        }
    }
    entry.steps = steps;
    entry.new_volume = Some(new_volume);
    entry
}

/// The CSI volume handle of a PV, if it is a CSI PV.
pub fn csi_handle(pv: &PersistentVolume) -> Option<&str> {
    pv.spec
        .as_ref()?
        .csi
        .as_ref()
        .map(|c| c.volume_handle.as_str())
}

fn csi_driver(pv: &PersistentVolume) -> Option<&str> {
    pv.spec.as_ref()?.csi.as_ref().map(|c| c.driver.as_str())
}

/// The CSI PV a claim's record holds; `Err` when the record is there but unreadable.
pub fn recorded_volume(claim: &PersistentVolumeClaim) -> Result<Option<PersistentVolume>, String> {
    annotation(&claim.metadata, RECORD_ANNOTATION)
        .map(|text| {
            serde_json::from_str::<PersistentVolume>(text).map_err(|e| {
                format!("the claim's {RECORD_ANNOTATION} annotation is not a PersistentVolume ({e}); fix or remove it by hand")
            })
        })
        .transpose()
}

/// The CSI PV that replaces `old`: the same name, capacity, access modes, class, mount
/// options, volume mode, node affinity, labels and annotations, pre-bound to the claim, with
/// the translated volume source. Retain: the migration keeps it so, as it made the old one;
/// the original policy stays in an annotation for the operator to restore.
pub fn csi_volume(
    old: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    driver: CceDriver,
    translation: &Translation,
    target: &Target,
    driver_name: &str,
) -> Result<PersistentVolume, String> {
    let handle = VolumeId::new(target.backend.clone(), &translation.native_id)
        .map_err(|e| e.to_string())?
        .to_string();
    if translation.needs_stage_secret && target.stage_secret.is_none() {
        return Err(format!(
            "the {} node needs the bucket's keys in a Secret: pass --obs-secret <namespace>/<name>, or --storage-class {}=<class> whose class names its node-stage Secret",
            translation.kind, translation.kind
        ));
    }
    let spec = old.spec.clone().unwrap_or_default();
    let flex = spec.flex_volume.clone().unwrap_or_default();
    let original_policy = annotation(&old.metadata, ORIGINAL_POLICY_ANNOTATION)
        .cloned()
        .or_else(|| spec.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Delete".into());
    let mut annotations: BTreeMap<String, String> =
        old.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(PROVISIONED_BY.into(), driver_name.into());
    annotations.insert(MIGRATED_FROM_ANNOTATION.into(), driver.name().into());
    annotations.insert(ORIGINAL_POLICY_ANNOTATION.into(), original_policy);
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: old.metadata.name.clone(),
            labels: old.metadata.labels.clone(),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: spec.capacity.clone(),
            access_modes: spec.access_modes.clone(),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            persistent_volume_reclaim_policy: Some(RETAIN.into()),
            storage_class_name: spec.storage_class_name.clone(),
            mount_options: spec.mount_options.clone(),
            volume_mode: spec.volume_mode.clone(),
            node_affinity: spec.node_affinity.clone(),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver_name.into(),
                volume_handle: handle,
                fs_type: translation.fs_type.clone(),
                read_only: flex.read_only,
                volume_attributes: Some(translation.attributes.clone()),
                node_stage_secret_ref: translation
                    .needs_stage_secret
                    .then(|| target.stage_secret.clone())
                    .flatten(),
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}
