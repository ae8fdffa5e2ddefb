//! Identity: plugin info, capabilities, Probe.

use super::*;

// ------------------------------------------------------------------------------- Identity

#[tokio::test]
async fn identity_get_plugin_info_reports_a_valid_name_and_version() {
    let Some(world) = start().await else {
        return;
    };
    for d in [Daemon::Controller, Daemon::Node] {
        let info = world
            .identity(d)
            .await
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .expect("GetPluginInfo")
            .into_inner();
        assert!(!info.name.is_empty(), "{d:?}: empty plugin name");
        assert!(
            is_valid_driver_name(&info.name),
            "{d:?}: {:?} is not a valid CSI driver name",
            info.name
        );
        assert_eq!(info.name, everest_testsupport::DRIVER_NAME, "{d:?}");
        assert!(
            !info.vendor_version.is_empty(),
            "{d:?}: empty vendor_version"
        );
    }
    assert!(!is_valid_driver_name("-bad.name"));
    assert!(!is_valid_driver_name("bad/name"));
}

#[tokio::test]
async fn identity_capabilities_are_consistent_and_probe_is_ready() {
    let Some(world) = start().await else {
        return;
    };
    for d in [Daemon::Controller, Daemon::Node] {
        let mut id = world.identity(d).await;
        let caps = id
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await
            .expect("GetPluginCapabilities")
            .into_inner()
            .capabilities;
        let services: Vec<ServiceType> = caps
            .iter()
            .filter_map(|c| match &c.r#type {
                Some(csi::plugin_capability::Type::Service(s)) => Some(s.r#type()),
                _ => None,
            })
            .collect();
        assert!(
            !services.contains(&ServiceType::Unknown),
            "{d:?} advertises an UNKNOWN service: {caps:?}"
        );
        if d == Daemon::Controller {
            assert!(
                services.contains(&ServiceType::ControllerService),
                "the controller does not advertise CONTROLLER_SERVICE: {caps:?}"
            );
            // Advertised, so the Controller service must answer.
            world
                .controller()
                .await
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
                .await
                .expect("ControllerGetCapabilities on a plugin advertising CONTROLLER_SERVICE");
        }
        // Everest's disks are zonal, so both daemons must say so; otherwise the topology check
        // below would be skipped without notice.
        assert!(
            services.contains(&ServiceType::VolumeAccessibilityConstraints),
            "{d:?} does not advertise VOLUME_ACCESSIBILITY_CONSTRAINTS: {caps:?}"
        );
        if d == Daemon::Node {
            let info = world.node_info().await;
            assert!(info.accessible_topology.is_some(), "{info:?}");
        }
        let probe = id
            .probe(csi::ProbeRequest {})
            .await
            .expect("Probe")
            .into_inner();
        assert!(probe.ready.unwrap_or(true), "{d:?} is not ready");
    }
}
