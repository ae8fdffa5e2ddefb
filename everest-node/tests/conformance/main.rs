//! An in-process CSI conformance suite in the spirit of csi-sanity: every RPC of the Identity,
//! Controller and Node services driven against the real daemons (and the emulated cloud) over
//! their unix sockets, checking the answers and error codes the CSI v1 spec requires.
//!
//! Each error assertion checks the gRPC code and that the message names the offending field or
//! volume. Where Everest answers differently from the spec on purpose, the test keeps asserting
//! the spec's answer and is `#[ignore]`d with the reason, so the choice stays visible.

use std::collections::HashMap;

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{GIB, block_cap, create_request, mount_cap};
use everest_testsupport::{BACKEND, Daemon, Lifecycle, World, skip_unless_root_and_loop};
use tonic::Code;

use csi::controller_service_capability::rpc::Type as CtrlRpc;
use csi::node_service_capability::rpc::Type as NodeRpc;
use csi::plugin_capability::service::Type as ServiceType;
use csi::volume_capability::access_mode::Mode;

/// Starts the world, or prints why this machine cannot run the suite (it needs root and loop
/// devices for the emulated disks) and answers `None`.
pub(crate) async fn start() -> Option<World> {
    if skip_unless_root_and_loop() {
        return None;
    }
    Some(World::start().await)
}

pub(crate) const ZONE_KEY: &str = "topology.everest.csi.io/zone";
/// A native disk ID in the backend's format that the cloud has never issued.
pub(crate) const MISSING_NATIVE_ID: &str = "0c0ffee0-dead-4bad-8bad-000000000000";
/// A server ID in the cloud's format that names no server.
pub(crate) const MISSING_NODE_ID: &str = "0badc0de-dead-4bad-8bad-000000000000";

pub(crate) fn ext4() -> csi::VolumeCapability {
    mount_cap("ext4", Mode::SingleNodeWriter)
}

/// A well-formed volume ID on the configured backend that names no volume.
pub(crate) fn missing_volume_id() -> String {
    format!("v1:{BACKEND}:{MISSING_NATIVE_ID}")
}

/// A well-formed volume ID for requests that must fail validation before any lookup.
pub(crate) fn some_volume_id() -> String {
    missing_volume_id()
}

/// Asserts `result` failed with `code` and a message naming one of `needles`; logs the
/// message so a run shows what each daemon answered.
#[track_caller]
pub(crate) fn expect_error<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    needles: &[&str],
) -> String {
    let msg = everest_testsupport::csi::expect_error(result, code, needles);
    eprintln!("[conformance] {code:?}: {msg}");
    msg
}

/// One error case as a test: start the world, build the request from it (and, with
/// `volume "name"`, from a freshly created volume, deleted again afterwards), send it with
/// `client.rpc` (`controller` or `node`), and expect INVALID_ARGUMENT naming `field`, or
/// `=> Code, [needles]` for another code.
macro_rules! rejects {
    ($name:ident, $client:ident.$rpc:ident, |$world:ident| $req:expr, $field:literal) => {
        rejects!($name, $client.$rpc, |$world| $req => InvalidArgument, [$field]);
    };
    ($name:ident, $client:ident.$rpc:ident, |$world:ident| $req:expr => $code:ident, [$($needle:expr),+]) => {
        #[tokio::test]
        async fn $name() {
            let Some($world) = start().await else {
                return;
            };
            let req = $req;
            expect_error(
                $world.$client().await.$rpc(req).await,
                Code::$code,
                &[$($needle),+],
            );
            shut_down_clean($world).await;
        }
    };
    ($name:ident, $client:ident.$rpc:ident, volume $volume:literal, |$world:ident, $vol:ident| $req:expr, $field:literal) => {
        rejects!($name, $client.$rpc, volume $volume, |$world, $vol| $req => InvalidArgument, [$field]);
    };
    ($name:ident, $client:ident.$rpc:ident, volume $volume:literal, |$world:ident, $vol:ident| $req:expr => $code:ident, [$($needle:expr),+]) => {
        #[tokio::test]
        async fn $name() {
            let Some($world) = start().await else {
                return;
            };
            let $vol = create_volume(&$world, $volume).await;
            let req = $req;
            expect_error(
                $world.$client().await.$rpc(req).await,
                Code::$code,
                &[$($needle),+],
            );
            delete_volume(&$world, &$vol.volume_id).await;
            shut_down_clean($world).await;
        }
    };
}

/// A capacity range asking for at least `bytes`.
pub(crate) fn at_least(bytes: i64) -> Option<csi::CapacityRange> {
    Some(csi::CapacityRange {
        required_bytes: bytes,
        limit_bytes: 0,
    })
}

/// Creates a 1 GiB ext4 volume named `name` in the node's zone.
pub(crate) async fn create_volume(world: &World, name: &str) -> csi::Volume {
    let mut req = create_request(name, GIB, ext4(), &[]);
    req.accessibility_requirements = Some(world.topology_requirement().await);
    world
        .controller()
        .await
        .create_volume(req)
        .await
        .unwrap_or_else(|s| panic!("CreateVolume {name}: {s:?}"))
        .into_inner()
        .volume
        .expect("CreateVolume answered with a volume")
}

pub(crate) async fn delete_volume(world: &World, volume_id: &str) {
    world
        .controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume_id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("DeleteVolume {volume_id}: {s:?}"));
}

/// Asserts the world leaves nothing behind: no disks in the cloud, no mounts, no loop devices.
pub(crate) async fn shut_down_clean(world: World) {
    let disks = world.disks().await;
    assert!(disks.is_empty(), "the test left disks behind: {disks:#?}");
    let left = world.shutdown();
    assert!(left.is_clean(), "the test left {left:?}");
}

/// The RPCs the controller advertises in ControllerGetCapabilities.
pub(crate) async fn controller_rpcs(world: &World) -> Vec<CtrlRpc> {
    world
        .controller()
        .await
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("ControllerGetCapabilities")
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            let csi::controller_service_capability::Type::Rpc(r) = c.r#type.as_ref()?;
            Some(r.r#type())
        })
        .collect()
}

/// The RPCs the node advertises in NodeGetCapabilities.
pub(crate) async fn node_rpcs(world: &World) -> Vec<NodeRpc> {
    world
        .node()
        .await
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .expect("NodeGetCapabilities")
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            let csi::node_service_capability::Type::Rpc(r) = c.r#type.as_ref()?;
            Some(r.r#type())
        })
        .collect()
}

/// A valid CSI driver name: at most 63 characters, domain-name notation, beginning and ending
/// with an alphanumeric character with dashes, dots, underscores and alphanumerics between.
pub(crate) fn is_valid_driver_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    name.len() <= 63
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

mod controller;
mod identity;
mod ids;
mod node;
mod wire;
