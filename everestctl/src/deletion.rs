//! `orphans --delete`: the listed volumes deleted through each backend's own controller side,
//! built from the daemons' configuration by the one list of kinds (`everest-backends`) and
//! reached through a registry by volume handle, exactly as DeleteVolume reaches it. So every
//! rule of the backend's delete applies (a disk with snapshots is refused, an interrupted
//! delete is finished, a volume already gone is success).
//!
//! Before deleting, and again right before each volume:
//! - a volume attached to a server is refused here, with what to do (the backend's own
//!   check would refuse it too, later and less clearly);
//! - the PersistentVolumes are read again after the confirmation, so a PV written in the
//!   meantime (a static PV made by hand, a provisioner that was slow) keeps its volume.

use std::io::{BufRead, Write};
use std::sync::Arc;

use everest_backend::ControllerBackend;
use everest_backend::daemon::config::ControllerConfig;
use everest_backend::marker::DeletePolicy;
use everest_backend::registry::Registry;
use everest_backend::secrets::Secrets;

use crate::error::{Error, Result};
use crate::orphans::{Orphan, Outcome, PvIndex, Report};

/// The orphans `--delete` would delete or archive: the listed ones that are not attached and
/// whose policy lets them go.
pub fn deletable(report: &Report) -> usize {
    report
        .orphans
        .iter()
        .filter(|o| o.attached_to.is_empty() && policy_lets_go(o).is_ok())
        .count()
}

/// What the policy the marker recorded allows: `Ok` with the outcome a successful delete
/// has, or `Err` with the outcome instead of a delete. Data is never lost by a guess: a
/// volume whose marker records no policy is not deleted.
fn policy_lets_go(orphan: &Orphan) -> std::result::Result<Outcome, Outcome> {
    match orphan.on_delete {
        Some(DeletePolicy::Delete) => Ok(Outcome::Deleted),
        Some(DeletePolicy::Archive) => Ok(Outcome::Archived),
        Some(DeletePolicy::Retain) => Err(Outcome::Retained),
        None => Err(Outcome::Refused(
            "its marker records no delete policy (it was made before Everest recorded one), and \
             the policy it was made with may have been retain or archive; check its data and \
             delete it by hand if it is not needed"
                .into(),
        )),
    }
}

/// Asks on `prompt` for the number of volumes to delete and reads the answer from `input`:
/// only that number, typed back, confirms. A count is harder to confirm by reflex than `y`,
/// and it fails when the list is not the one the operator read.
pub fn confirm(count: usize, input: &mut dyn BufRead, prompt: &mut dyn Write) -> Result<bool> {
    write!(
        prompt,
        "delete (or archive, as their policy says) {count} volume(s)? type {count} to confirm: "
    )?;
    prompt.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(answer.trim() == count.to_string())
}

/// Deletes every orphan of `report` that may go, recording each one's outcome; `pvs` is the
/// cluster's PersistentVolumes read after the confirmation. Progress goes to `progress`.
pub async fn delete(
    config: &ControllerConfig,
    report: &mut Report,
    pvs: &PvIndex,
    progress: &mut dyn Write,
) -> Result<()> {
    let registry = registry(config, &report.orphans)?;
    let total = report.orphans.len();
    for (i, orphan) in report.orphans.iter_mut().enumerate() {
        let outcome = delete_one(&registry, orphan, pvs).await;
        writeln!(
            progress,
            "[{}/{total}] {}: {outcome}",
            i + 1,
            orphan.volume_handle
        )?;
        orphan.outcome = Some(outcome);
    }
    Ok(())
}

async fn delete_one(
    registry: &Registry<dyn ControllerBackend>,
    orphan: &Orphan,
    pvs: &PvIndex,
) -> Outcome {
    if !orphan.attached_to.is_empty() {
        return Outcome::Refused(format!(
            "attached to server(s) {}; find what still uses it and detach it before deleting",
            orphan.attached_to.join(", ")
        ));
    }
    let handles = std::iter::once(&orphan.volume_handle).chain(&orphan.aliases);
    if pvs.holds_any(handles, orphan.pv_name.as_deref()) {
        return Outcome::Kept("a PersistentVolume names it since it was listed".into());
    }
    let done = match policy_lets_go(orphan) {
        Ok(done) => done,
        Err(instead) => return instead,
    };
    let backend = match registry.for_volume(&orphan.volume_handle) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // Secrets: DeleteVolume gets the StorageClass's provisioner secrets, which no longer
    // exist for a stranded volume; the kinds listed here delete with the instance's own
    // credentials file. The handle carries the recorded policy, so the backend's own delete
    // deletes or archives it by the same rules as DeleteVolume.
    match backend
        .delete_volume(orphan.volume_handle.native(), &Secrets::default())
        .await
    {
        Ok(()) => done,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// A registry of the controller sides of the instances `orphans` live on, and of no other
/// (an instance with nothing to delete need not be reachable, nor its credentials readable).
fn registry(
    config: &ControllerConfig,
    orphans: &[Orphan],
) -> Result<Registry<dyn ControllerBackend>> {
    let mut registry: Registry<dyn ControllerBackend> = Registry::new(None);
    let tables = config
        .backends()
        .map_err(|e| Error::Config(e.to_string()))?;
    for (name, table) in tables {
        if !orphans.iter().any(|o| o.volume_handle.backend() == &name) {
            continue;
        }
        let backend: Arc<dyn ControllerBackend> = everest_backends::controller(&name, table)
            .map_err(|e| Error::Cloud {
                backend: name.to_string(),
                message: format!("building its controller side: {e}"),
            })?;
        registry.insert(name, backend);
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orphan(on_delete: Option<DeletePolicy>) -> Orphan {
        Orphan {
            backend: "files".into(),
            kind: "sfs".into(),
            volume_handle: "v1:files:d~pvc-1".parse().unwrap(),
            name: "pvc-1".into(),
            size_bytes: None,
            on_delete,
            aliases: vec!["v1:files:r~pvc-1".parse().unwrap()],
            created_at: None,
            age: None,
            pv_name: Some("pvc-1".into()),
            pvc_name: None,
            pvc_namespace: None,
            attached_to: Vec::new(),
            outcome: None,
        }
    }

    #[tokio::test]
    async fn the_recorded_policy_decides_before_any_backend_is_asked() {
        // No backend is configured: a delete that reached one would fail, not pass.
        let registry: Registry<dyn ControllerBackend> = Registry::new(None);
        let pvs = PvIndex::default();
        let retained = delete_one(&registry, &orphan(Some(DeletePolicy::Retain)), &pvs).await;
        assert_eq!(retained, Outcome::Retained);
        let unknown = delete_one(&registry, &orphan(None), &pvs).await;
        assert!(
            matches!(&unknown, Outcome::Refused(why) if why.contains("no delete policy")),
            "{unknown}"
        );
        let asked = delete_one(&registry, &orphan(Some(DeletePolicy::Delete)), &pvs).await;
        assert!(matches!(asked, Outcome::Failed(_)), "{asked}");
        // A PV naming the volume under another policy's handle keeps it.
        let pv: k8s_openapi::api::core::v1::PersistentVolume =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "static"},
                "spec": {"csi": {"driver": "everest.csi.io", "volumeHandle": "v1:files:r~pvc-1"}}
            }))
            .unwrap();
        let kept = delete_one(
            &registry,
            &orphan(Some(DeletePolicy::Delete)),
            &PvIndex::new(&[pv]),
        )
        .await;
        assert!(matches!(kept, Outcome::Kept(_)), "{kept}");
        let report = Report {
            cluster_id: "prod".into(),
            min_age: crate::age::Age::from_secs(0),
            backends: Vec::new(),
            orphans: vec![
                orphan(Some(DeletePolicy::Delete)),
                orphan(Some(DeletePolicy::Archive)),
                orphan(Some(DeletePolicy::Retain)),
                orphan(None),
            ],
            other_clusters: 0,
            held_back: 0,
        };
        assert_eq!(deletable(&report), 2);
    }

    #[test]
    fn only_the_number_typed_back_confirms() {
        for (typed, ok) in [
            ("3\n", true),
            (" 3 \n", true),
            ("y\n", false),
            ("yes\n", false),
            ("2\n", false),
            ("", false),
        ] {
            let mut prompt = Vec::new();
            let got = confirm(3, &mut typed.as_bytes(), &mut prompt).unwrap();
            assert_eq!(got, ok, "{typed:?}");
            assert!(String::from_utf8(prompt).unwrap().contains("type 3"));
        }
    }
}
