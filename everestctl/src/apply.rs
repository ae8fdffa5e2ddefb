//! Carrying out a migration plan. Every step reads the objects it touches again first and
//! checks that they are still what the plan saw; a step that finds otherwise refuses, and the
//! command stops (running it again plans afresh from what is there).

use std::io::Write;

use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::migration::{
    Entry, ORIGINAL_POLICY_ANNOTATION, PV_PROTECTION, Plan, RECORD_ANNOTATION, RETAIN, Step,
    csi_handle, recorded_volume,
};

/// Takes every step of every ready entry, reporting each on `progress`. Stops at the first
/// failure.
pub async fn apply(cluster: &Cluster, plan: &Plan, progress: &mut dyn Write) -> Result<usize> {
    let ready: Vec<&Entry> = plan.ready().collect();
    let total = ready.len();
    for (i, entry) in ready.iter().enumerate() {
        let claim = entry.claim.as_deref().unwrap_or("-");
        for step in &entry.steps {
            writeln!(
                progress,
                "[{}/{total}] {claim} ({}): {}",
                i + 1,
                entry.persistent_volume,
                step.name()
            )?;
            take(cluster, entry, *step).await?;
        }
        writeln!(
            progress,
            "[{}/{total}] {claim} ({}): migrated",
            i + 1,
            entry.persistent_volume
        )?;
    }
    Ok(total)
}

async fn take(cluster: &Cluster, entry: &Entry, step: Step) -> Result<()> {
    match step {
        Step::Retain => retain(cluster, entry).await,
        Step::Record => record(cluster, entry).await,
        Step::DeleteOld => delete_old(cluster, entry).await,
        Step::CreateNew => create_new(cluster, entry).await,
        Step::Finish => finish(cluster, entry).await,
    }
}

fn claim_of(entry: &Entry) -> Result<(&str, &str)> {
    entry
        .claim_key()
        .ok_or_else(|| Error::Refused(format!("PV {} has no claim", entry.persistent_volume)))
}

/// The old PV as it is now, if it is still the FlexVolume PV the plan saw.
async fn old_volume(cluster: &Cluster, entry: &Entry) -> Result<Option<PersistentVolume>> {
    let Some(pv) = cluster.persistent_volume(&entry.persistent_volume).await? else {
        return Ok(None);
    };
    let is_flex = pv.spec.as_ref().is_some_and(|s| s.flex_volume.is_some());
    if !is_flex || pv.metadata.uid != entry.old_uid {
        return Err(Error::Refused(format!(
            "PV {} changed since the plan was made (it is no longer the same FlexVolume PV); run the command again",
            entry.persistent_volume
        )));
    }
    Ok(Some(pv))
}

fn policy(pv: &PersistentVolume) -> Option<&str> {
    pv.spec
        .as_ref()?
        .persistent_volume_reclaim_policy
        .as_deref()
}

async fn retain(cluster: &Cluster, entry: &Entry) -> Result<()> {
    let pv = old_volume(cluster, entry).await?.ok_or_else(|| {
        Error::Refused(format!(
            "PV {} is gone before its reclaim policy was set to Retain",
            entry.persistent_volume
        ))
    })?;
    let original = policy(&pv).unwrap_or("Delete").to_owned();
    let patch = json!({
        "metadata": {
            "resourceVersion": pv.metadata.resource_version,
            "annotations": {ORIGINAL_POLICY_ANNOTATION: original},
        },
        "spec": {"persistentVolumeReclaimPolicy": RETAIN},
    });
    let patched = cluster
        .patch_persistent_volume(&entry.persistent_volume, &patch)
        .await?;
    if policy(&patched) != Some(RETAIN) {
        return Err(Error::Refused(format!(
            "PV {}: the API server accepted reclaim policy Retain but kept {:?} (an admission webhook?); nothing was deleted",
            entry.persistent_volume,
            policy(&patched).unwrap_or_default()
        )));
    }
    Ok(())
}

async fn record(cluster: &Cluster, entry: &Entry) -> Result<()> {
    let (namespace, name) = claim_of(entry)?;
    let new_volume = entry.new_volume.as_ref().ok_or_else(|| {
        Error::Refused(format!(
            "PV {}: the plan holds no CSI PV to record",
            entry.persistent_volume
        ))
    })?;
    let patch = json!({"metadata": {"annotations": {RECORD_ANNOTATION: serde_json::to_string(new_volume)?}}});
    cluster.patch_claim(namespace, name, &patch).await?;
    Ok(())
}

async fn delete_old(cluster: &Cluster, entry: &Entry) -> Result<()> {
    let (namespace, name) = claim_of(entry)?;
    // The record must be there before the old PV goes: it is all that says what to create.
    let claim = cluster.claim(namespace, name).await?.ok_or_else(|| {
        Error::Refused(format!(
            "claim {namespace}/{name} is gone; PV {} was left as it is",
            entry.persistent_volume
        ))
    })?;
    let recorded = recorded_volume(&claim).map_err(Error::Refused)?;
    if recorded.as_ref().and_then(csi_handle) != entry.volume_handle.as_deref() {
        return Err(Error::Refused(format!(
            "claim {namespace}/{name} does not record the CSI PV of this plan; PV {} was left as it is",
            entry.persistent_volume
        )));
    }
    let Some(mut pv) = old_volume(cluster, entry).await? else {
        return Ok(());
    };
    // The one check that matters most: never delete a PV whose policy could reach the data.
    if policy(&pv) != Some(RETAIN) {
        return Err(Error::Refused(format!(
            "PV {} has reclaim policy {:?}, not Retain; it was not deleted",
            entry.persistent_volume,
            policy(&pv).unwrap_or_default()
        )));
    }
    let uid = pv.metadata.uid.clone().unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_none() {
        let version = pv.metadata.resource_version.clone().unwrap_or_default();
        cluster
            .delete_persistent_volume(&entry.persistent_volume, &uid, &version)
            .await?;
        match old_volume(cluster, entry).await? {
            Some(now) => pv = now,
            None => return Ok(()),
        }
    }
    // A Bound PV keeps pv-protection until its claim lets go, which this claim never will:
    // the finalizer is released by hand, as an operator would, once the PV is Retain and
    // being deleted (released earlier, the protection controller would put it back).
    let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
    let others: Vec<String> = finalizers
        .iter()
        .filter(|f| *f != PV_PROTECTION)
        .cloned()
        .collect();
    if others.len() != finalizers.len() {
        let patch = json!({"metadata": {"resourceVersion": pv.metadata.resource_version, "finalizers": others}});
        cluster
            .patch_persistent_volume(&entry.persistent_volume, &patch)
            .await?;
    }
    if old_volume(cluster, entry).await?.is_some() {
        return Err(Error::Refused(format!(
            "PV {} is being deleted but other finalizers hold it ({}); run the command again once they are gone",
            entry.persistent_volume,
            others.join(", ")
        )));
    }
    Ok(())
}

async fn create_new(cluster: &Cluster, entry: &Entry) -> Result<()> {
    let new_volume = entry.new_volume.as_ref().ok_or_else(|| {
        Error::Refused(format!(
            "PV {}: the plan holds no CSI PV to create",
            entry.persistent_volume
        ))
    })?;
    if cluster
        .create_persistent_volume(new_volume)
        .await?
        .is_some()
    {
        return Ok(());
    }
    // Created by an earlier run that stopped before it could say so, or something else.
    let existing = cluster.persistent_volume(&entry.persistent_volume).await?;
    if existing.as_ref().and_then(csi_handle) == csi_handle(new_volume) {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "PV {} exists and is not the CSI PV the claim records; nothing was changed",
        entry.persistent_volume
    )))
}

async fn finish(cluster: &Cluster, entry: &Entry) -> Result<()> {
    let (namespace, name) = claim_of(entry)?;
    let patch: Value = json!({"metadata": {"annotations": {RECORD_ANNOTATION: null}}});
    cluster.patch_claim(namespace, name, &patch).await?;
    Ok(())
}
