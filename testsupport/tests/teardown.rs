//! The harness's own promise: a test that panics halfway through a lifecycle (disk attached,
//! staged, published) still leaves no process, mount, loop device or temp dir behind.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use everest_testsupport::csi::mount_cap;
use everest_testsupport::host::{loop_devices_under, mounts_under};
use everest_testsupport::proto::volume_capability::access_mode::Mode;
use everest_testsupport::{Lifecycle, World, skip_unless_root_and_loop};

/// The world's temp root and process ids, as seen just before the panic.
type Seen = Arc<Mutex<Option<(PathBuf, Vec<u32>)>>>;

#[test]
fn a_panic_mid_lifecycle_leaves_nothing_behind() {
    if skip_unless_root_and_loop() {
        return;
    }
    let seen: Seen = Arc::default();
    let seen2 = Arc::clone(&seen);
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let world = World::start().await;
            let mut v = Lifecycle::new(
                &world,
                "pvc-panic",
                mount_cap("ext4", Mode::SingleNodeWriter),
                "pod",
            )
            .await;
            v.bring_up(10).await;
            let root = world.root().to_path_buf();
            assert!(
                !mounts_under(&root).is_empty(),
                "nothing mounted before the panic"
            );
            assert!(
                !loop_devices_under(&root).is_empty(),
                "no loop device before the panic"
            );
            *seen2.lock().unwrap() = Some((root, world.pids()));
            panic!("deliberate panic with the volume published");
        })
    })
    .join();
    assert!(outcome.is_err(), "the inner test was meant to panic");
    let (root, pids) = seen.lock().unwrap().take().expect("the world had started");
    assert!(
        mounts_under(&root).is_empty(),
        "mounts left: {:?}",
        mounts_under(&root)
    );
    assert!(
        loop_devices_under(&root).is_empty(),
        "loop devices left: {:?}",
        loop_devices_under(&root)
    );
    assert!(!root.exists(), "temp root {} left behind", root.display());
    for pid in pids {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(!alive, "process {pid} still running");
    }
}
