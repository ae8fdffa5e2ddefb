//! Native kubelet plugin registration, with this test in the kubelet's place: like its plugin
//! watcher it finds the socket in the plugins registry, reads GetInfo, reaches the CSI endpoint
//! it was given, and reports a success and then a refusal; the node's log and metrics must say
//! each. Also: a restart replaces the socket (removed on a clean stop, found stale after a
//! SIGKILL), and a registry dir outside the kubelet root stops the node from starting.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use everest_proto::csi::v1 as csi;
use everest_proto::pluginregistration::registration_client::RegistrationClient;
use everest_proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus};
use everest_testsupport::csi::connect_uds;
use everest_testsupport::{DRIVER_NAME, Daemon, World, WorldOptions};

const WAIT: Duration = Duration::from_secs(10);

const PLUGIN_REGISTERED: &str = "everest_plugin_registered";
const REGISTERED: &str = r#"everest_plugin_registration_notifications_total{outcome="registered"}"#;
const FAILED: &str = r#"everest_plugin_registration_notifications_total{outcome="failed"}"#;

fn native() -> WorldOptions {
    WorldOptions {
        extra_config: "[node.registration]\nmode = \"native\"\n".into(),
        ..Default::default()
    }
}

/// The registry directory the kubelet's plugin watcher watches.
fn registry_dir(world: &World) -> PathBuf {
    world.kubelet_root().join("plugins_registry")
}

/// What the plugin watcher does on start and on every change: the sockets in the registry
/// dir, skipping dot files and anything that is not a socket.
fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect()
}

/// Polls the registry dir until exactly one plugin socket is there.
async fn find_socket(world: &World) -> PathBuf {
    let dir = registry_dir(world);
    let deadline = Instant::now() + WAIT;
    loop {
        let found = sockets_in(&dir);
        if let [one] = found.as_slice() {
            return one.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single plugin socket in {} after {WAIT:?}: {found:?}\n{}",
            dir.display(),
            world.log("node")
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn registration(socket: &Path) -> RegistrationClient<tonic::transport::Channel> {
    RegistrationClient::new(
        connect_uds(socket)
            .await
            .expect("connect to the registration socket"),
    )
}

/// GetInfo, checked as the kubelet's CSI handler validates it, then NodeGetInfo at the
/// endpoint it names, as the kubelet does next.
async fn get_info_and_reach_the_endpoint(world: &World, socket: &Path) -> PluginInfo {
    assert_eq!(
        socket,
        registry_dir(world).join(format!("{DRIVER_NAME}-reg.sock"))
    );
    let info = registration(socket)
        .await
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, DRIVER_NAME);
    assert_eq!(
        Path::new(&info.endpoint),
        world.socket(Daemon::Node),
        "the endpoint is the CSI socket's path, without unix://"
    );
    assert_eq!(info.supported_versions, ["1.0.0"]);
    let mut node = csi::node_client::NodeClient::new(
        connect_uds(Path::new(&info.endpoint))
            .await
            .expect("connect to the endpoint GetInfo named"),
    );
    let node_info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo at the registered endpoint")
        .into_inner();
    assert!(!node_info.node_id.is_empty());
    info
}

/// The value of one series in a Prometheus exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Polls the node's metrics until each series has its value.
async fn expect_metrics(world: &World, want: &[(&str, f64)]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = world.metrics(Daemon::Node).await.unwrap_or_default();
        let got: Vec<Option<f64>> = want.iter().map(|(s, _)| sample(&text, s)).collect();
        if got.iter().zip(want).all(|(g, (_, v))| *g == Some(*v)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node metrics: wanted {want:?}, got {got:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's log lines containing `what`, once at least `count` are there.
async fn log_lines(world: &World, what: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines: Vec<String> = world
            .log("node")
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_kubelet_registers_the_node_and_its_verdicts_show_in_log_and_metrics() {
    let world = World::start_with(native())
        .await
        .unwrap_or_else(|e| panic!("cannot start the world: {e}"));
    let socket = find_socket(&world).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "only the kubelet (root) may talk to the registration socket"
    );
    get_info_and_reach_the_endpoint(&world, &socket).await;
    expect_metrics(
        &world,
        &[(PLUGIN_REGISTERED, 0.0), (REGISTERED, 0.0), (FAILED, 0.0)],
    )
    .await;

    let mut kubelet = registration(&socket).await;
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("NotifyRegistrationStatus(registered)");
    let ok = log_lines(&world, "registered with the kubelet", 1).await;
    assert_eq!(ok.len(), 1, "one line per success: {ok:?}");
    assert!(
        ok[0].contains(" INFO ") && ok[0].contains(DRIVER_NAME),
        "{}",
        ok[0]
    );
    expect_metrics(
        &world,
        &[(PLUGIN_REGISTERED, 1.0), (REGISTERED, 1.0), (FAILED, 0.0)],
    )
    .await;

    let refusal = "RegisterPlugin error -- plugin validation failed with err: \
                   highest supported version reported by driver is v0.3.0, must be v1.x";
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: refusal.into(),
        })
        .await
        .expect("NotifyRegistrationStatus(failed)");
    let refused = log_lines(&world, "the kubelet refused to register the plugin", 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains(" WARN ") && refused[0].contains(refusal),
        "the warning carries the kubelet's error: {}",
        refused[0]
    );
    expect_metrics(
        &world,
        &[(PLUGIN_REGISTERED, 0.0), (REGISTERED, 1.0), (FAILED, 1.0)],
    )
    .await;
    assert_eq!(
        log_lines(&world, "registered with the kubelet", 1)
            .await
            .len(),
        1,
        "a refusal logs no success"
    );
}

#[tokio::test]
async fn a_restart_replaces_the_socket_and_registers_again() {
    let world = World::start_with(native())
        .await
        .unwrap_or_else(|e| panic!("cannot start the world: {e}"));
    let socket = find_socket(&world).await;
    let stale_line = |log: &str| {
        log.lines()
            .filter(|l| l.contains("removing stale socket") && l.contains("-reg.sock"))
            .count()
    };

    // A clean stop removes the socket, so the next start finds none to replace.
    world.restart_node().await.expect("restart the node");
    let log = world.log("node");
    assert_eq!(
        log.matches("stopped serving kubelet plugin registration")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(stale_line(&log), 0, "{log}");
    assert_eq!(find_socket(&world).await, socket);
    get_info_and_reach_the_endpoint(&world, &socket).await;

    // SIGKILL leaves the file behind; the next start finds nothing answering and replaces it.
    world
        .crash_and_restart(Daemon::Node)
        .await
        .expect("restart the node after SIGKILL");
    assert_eq!(stale_line(&world.log("node")), 1, "{}", world.log("node"));
    assert_eq!(find_socket(&world).await, socket);
    get_info_and_reach_the_endpoint(&world, &socket).await;
    expect_metrics(&world, &[(PLUGIN_REGISTERED, 0.0)]).await;
}

#[tokio::test]
async fn a_registry_dir_outside_the_kubelet_root_stops_the_node_from_starting() {
    let opts = WorldOptions {
        extra_config: "[node.registration]\nmode = \"native\"\n\
                       registry_dir = \"/var/lib/everest-test-elsewhere/plugins_registry\"\n"
            .into(),
        ..Default::default()
    };
    let err = World::start_with(opts)
        .await
        .expect_err("the node must refuse a registry dir outside the kubelet root")
        .to_string();
    assert!(
        err.contains("node exited during start-up: exit status: 2"),
        "exit code 2 (invalid configuration): {err}"
    );
    assert!(
        err.contains(
            "everest-node: invalid configuration: configuration key node.registration.registry_dir = \"/var/lib/everest-test-elsewhere/plugins_registry\" is not under the kubelet root"
        ),
        "{err}"
    );
    assert!(
        !Path::new("/var/lib/everest-test-elsewhere").exists(),
        "nothing was created outside the kubelet root"
    );
}
