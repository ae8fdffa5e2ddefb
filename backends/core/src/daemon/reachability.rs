//! Whether each backend's service answers, watched in the background and reported as a gauge
//! and a log line when it changes.
//!
//! This is deliberately not part of Probe. Probe feeds the livenessprobe sidecar, and a cloud
//! outage is not something a restart of the controller can fix: it would only turn one outage
//! into a crash loop and lose the in-flight work. The gauge lets an alert page someone instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::ControllerBackend;
use crate::registry::Registry;
use crate::volume_id::BackendName;

/// 1 while the backend's service answers its probe, 0 while it does not.
pub const BACKEND_REACHABLE: &str = "everest_backend_reachable";

/// How long one probe may take before it counts as an unreachable service.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Gives the gauge its help text (after the exporter is installed).
pub fn describe() {
    metrics::describe_gauge!(
        BACKEND_REACHABLE,
        "1 while the backend's service (cloud API, S3 endpoint, NFS server) answers the controller's periodic check, 0 while it does not"
    );
}

/// Probes every backend now and then every `every`, forever; run it as a background task.
pub async fn watch(registry: Arc<Registry<dyn ControllerBackend>>, every: Duration) {
    let mut last = BTreeMap::new();
    loop {
        check_all(&registry, &mut last).await;
        tokio::time::sleep(every).await;
    }
}

/// One round: each backend's state, set on the gauge and logged where it changed.
pub async fn check_all(
    registry: &Registry<dyn ControllerBackend>,
    last: &mut BTreeMap<BackendName, bool>,
) {
    for (name, backend) in registry.iter() {
        let problem = match tokio::time::timeout(PROBE_TIMEOUT, backend.probe()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        let up = problem.is_none();
        metrics::gauge!(BACKEND_REACHABLE, "backend" => name.to_string())
            .set(f64::from(u8::from(up)));
        // A line per change: an outage and its end at warn and info, the first good answer at
        // debug (a healthy start is not news).
        match (last.insert(name.clone(), up), problem) {
            (None, None) => tracing::debug!(backend = %name, "backend reachable"),
            (Some(false), None) => tracing::info!(backend = %name, "backend reachable again"),
            (Some(true) | None, Some(problem)) => {
                tracing::warn!(backend = %name, problem, "backend unreachable; volume operations on it fail until it answers again");
            }
            (Some(true), None) | (Some(false), Some(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::backend::{
        BackendKind, Capabilities, ControllerPublish, CreateVolume, Expanded, ListedVolume, Volume,
        VolumePage,
    };
    use crate::capability::VolumeCapability;
    use crate::capacity::CapacityRange;
    use crate::error::{Error, Result};
    use crate::secrets::Secrets;

    /// A backend whose service is up or down at the test's say; every other call is refused.
    #[derive(Debug, Default)]
    struct Switch(AtomicBool);

    #[async_trait]
    impl ControllerBackend for Switch {
        fn kind(&self) -> BackendKind {
            BackendKind::Block
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                expand: false,
                node_expand: false,
                list: false,
                snapshots: false,
                clone: false,
                modify: false,
                access_modes: &[],
            }
        }
        fn check_capabilities(&self, _: &[VolumeCapability]) -> Result<()> {
            Ok(())
        }
        async fn create_volume(&self, _: &CreateVolume) -> Result<Volume> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn delete_volume(&self, _: &str, _: &Secrets) -> Result<()> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn publish(&self, _: &ControllerPublish) -> Result<BTreeMap<String, String>> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn unpublish(&self, _: &str, _: Option<&str>) -> Result<()> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn expand(&self, _: &str, _: CapacityRange) -> Result<Expanded> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn get_volume(&self, _: &str) -> Result<ListedVolume> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn list_volumes(&self, _: Option<&str>, _: u32) -> Result<VolumePage> {
            Err(Error::Internal("not in this test".into()))
        }
        async fn probe(&self) -> Result<()> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(Error::Unavailable("cloud API: connection refused".into()))
            }
        }
    }

    #[tokio::test]
    async fn the_gauge_follows_the_backend() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let switch = Arc::new(Switch::default());
        let mut registry: Registry<dyn ControllerBackend> = Registry::new(None);
        registry.insert(BackendName::new("evs-a").unwrap(), switch.clone());
        let mut last = BTreeMap::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        check_all(&registry, &mut last).await;
        assert!(
            handle
                .render()
                .contains(r#"everest_backend_reachable{backend="evs-a"} 0"#),
            "{}",
            handle.render()
        );
        switch.0.store(true, Ordering::SeqCst);
        check_all(&registry, &mut last).await;
        assert!(
            handle
                .render()
                .contains(r#"everest_backend_reachable{backend="evs-a"} 1"#),
            "{}",
            handle.render()
        );
        assert_eq!(last.get(&BackendName::new("evs-a").unwrap()), Some(&true));
    }
}
