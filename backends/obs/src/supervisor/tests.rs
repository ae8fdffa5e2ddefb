//! The supervisor's decisions on a fake machine: restart, give up, stop, re-adopt.

use std::time::Duration;

use super::host::fake::FakeMounterHost;
use super::*;

fn settings(dir: &Path) -> Settings {
    Settings {
        state_dir: dir.to_owned(),
        max_restarts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(40),
        healthy_after: Duration::from_secs(60),
        mount_timeout: Duration::from_secs(2),
        poll: Duration::from_millis(10),
        stop_grace: Duration::from_millis(200),
    }
}

fn spec(target: &str) -> MountSpec {
    MountSpec {
        target: target.into(),
        bucket: "bucket-1".into(),
        ..protocol::tests::spec()
    }
}

fn world() -> (tempfile::TempDir, Arc<FakeMounterHost>, Arc<Supervisor>) {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeMounterHost::default());
    let sup = Supervisor::new(host.clone(), settings(&dir.path().join("state")));
    (dir, host, sup)
}

async fn status_of(sup: &Supervisor, target: &str) -> Option<MountStatus> {
    sup.list()
        .await
        .into_iter()
        .find(|s| s.target == Path::new(target))
}

/// Polls until the mount at `target` satisfies `ok` (2 s at most).
async fn wait_until(
    sup: &Supervisor,
    target: &str,
    ok: impl Fn(&MountStatus) -> bool,
) -> MountStatus {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(s) = status_of(sup, target).await
            && ok(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            status_of(sup, target).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn starts_once_restarts_a_dead_mounter_and_stops() {
    let (_dir, host, sup) = world();
    let Response::Started(s) = sup.handle(Request::Start(spec("/t/a"))).await else {
        panic!("not started");
    };
    assert_eq!(
        (s.state, s.restarts, s.adopted),
        (MountState::Serving, 0, false)
    );
    // The same start again: the same mount, no second mounter.
    assert!(matches!(
        sup.handle(Request::Start(spec("/t/a"))).await,
        Response::Started(_)
    ));
    assert_eq!(host.spawned().len(), 1);
    assert!(host.spawned()[0].ends_with(" -f"), "{:?}", host.spawned());
    // Another mount at the same place is a conflict.
    let other = MountSpec {
        bucket: "bucket-2".into(),
        ..spec("/t/a")
    };
    assert!(matches!(
        sup.handle(Request::Start(other)).await,
        Response::Error {
            fault: Fault::Conflict,
            ..
        }
    ));
    let state = state_file(&sup.settings.state_dir, Path::new("/t/a"));
    assert!(state.exists());

    // A pod's bind of the mount: bound again over the dead one once the mounter is back.
    host.add_bind(Path::new("/t/a"), Path::new("/pods/1/vol"));
    assert!(host.rebound().is_empty(), "a first start binds nothing");
    host.kill_mounter_of(Path::new("/t/a"));
    let s = wait_until(&sup, "/t/a", |s| {
        s.restarts == 1 && s.state == MountState::Serving
    })
    .await;
    assert!(s.abnormal().is_none());
    assert_eq!(host.spawned().len(), 2);
    assert!(host.is_mounted(Path::new("/t/a")));
    assert_eq!(
        host.rebound(),
        [("/t/a".into(), "/pods/1/vol".into())],
        "the pod's bind was not repaired"
    );

    assert_eq!(
        sup.handle(Request::Stop {
            target: "/t/a".into()
        })
        .await,
        Response::Stopped { known: true }
    );
    assert!(!host.is_mounted(Path::new("/t/a")));
    assert!(!state.exists(), "the state file outlived the mount");
    assert_eq!(
        sup.handle(Request::Stop {
            target: "/t/a".into()
        })
        .await,
        Response::Stopped { known: false }
    );
    assert!(sup.list().await.is_empty());
}

#[tokio::test]
async fn the_pods_binds_are_repaired_even_when_the_first_restart_fails() {
    let (_dir, host, sup) = world();
    assert!(matches!(
        sup.handle(Request::Start(spec("/t/r"))).await,
        Response::Started(_)
    ));
    host.add_bind(Path::new("/t/r"), Path::new("/pods/2/vol"));
    // The mounter dies, and the first attempt to start it again fails before mounting (the
    // dead mount is gone by then): the binds are still found by the lost mount's number.
    host.fail_next(1);
    host.kill_mounter_of(Path::new("/t/r"));
    wait_until(&sup, "/t/r", |s| {
        s.restarts == 2 && s.state == MountState::Serving
    })
    .await;
    assert_eq!(
        host.rebound(),
        [("/t/r".into(), "/pods/2/vol".into())],
        "the pod's bind was not repaired after a failed attempt"
    );
}

#[tokio::test]
async fn a_mounter_that_keeps_dying_is_given_up_and_reported() {
    let (_dir, host, sup) = world();
    assert!(matches!(
        sup.handle(Request::Start(spec("/t/b"))).await,
        Response::Started(_)
    ));
    // Every later start fails at once.
    host.fail_next(100);
    host.kill_mounter_of(Path::new("/t/b"));
    let s = wait_until(&sup, "/t/b", |s| s.state == MountState::Dead).await;
    assert_eq!(s.restarts, 2);
    let why = s.abnormal().expect("a dead mount is abnormal");
    assert!(why.contains("given up"), "{why}");
    assert_eq!(host.spawned().len(), 3, "one start and two restarts");
    assert!(!host.is_mounted(Path::new("/t/b")));
    // A new stage starts it afresh.
    host.fail_next(0);
    let Response::Started(s) = sup.handle(Request::Start(spec("/t/b"))).await else {
        panic!("not started again");
    };
    assert_eq!((s.state, s.restarts), (MountState::Serving, 0));
    sup.handle(Request::Stop {
        target: "/t/b".into(),
    })
    .await;
}

#[tokio::test]
async fn a_failed_first_start_is_an_error_not_a_restart_loop() {
    let (_dir, host, sup) = world();
    host.fail_next(1);
    let r = sup.handle(Request::Start(spec("/t/c"))).await;
    let Response::Error { fault, message } = r else {
        panic!("{r:?}");
    };
    assert_eq!(fault, Fault::Failed);
    assert!(
        message.contains("/t/c") && message.contains("bucket-1"),
        "{message}"
    );
    assert!(sup.list().await.is_empty());
    assert_eq!(host.spawned().len(), 1);
    // A bad request never reaches the machine.
    let bad = MountSpec {
        options: vec!["uid=0,passwd_file=/etc/shadow".into()],
        ..spec("/t/c")
    };
    assert!(matches!(
        sup.handle(Request::Start(bad)).await,
        Response::Error {
            fault: Fault::Invalid,
            ..
        }
    ));
    assert_eq!(host.spawned().len(), 1);
}

#[tokio::test]
async fn a_new_supervisor_adopts_what_an_earlier_one_started() {
    let (dir, host, sup) = world();
    assert!(matches!(
        sup.handle(Request::Start(spec("/t/d"))).await,
        Response::Started(_)
    ));
    let pid = status_of(&sup, "/t/d").await.unwrap().pid.unwrap();
    // The supervisor goes away; its mounter does not.
    sup.leave().await;
    drop(sup);
    let again = Supervisor::new(host.clone(), settings(&dir.path().join("state")));
    assert_eq!(again.recover().await.unwrap(), 1);
    let s = status_of(&again, "/t/d").await.unwrap();
    assert_eq!(
        (s.state, s.pid, s.adopted),
        (MountState::Serving, Some(pid), true)
    );
    assert_eq!(host.spawned().len(), 1, "adopted, not mounted twice");
    // The adopted mounter dies: started again, as our own child this time.
    host.kill_mounter_of(Path::new("/t/d"));
    let s = wait_until(&again, "/t/d", |s| {
        s.restarts == 1 && s.state == MountState::Serving
    })
    .await;
    assert!(!s.adopted);
    assert_eq!(host.spawned().len(), 2);
    again
        .handle(Request::Stop {
            target: "/t/d".into(),
        })
        .await;
    assert!(!host.is_mounted(Path::new("/t/d")));

    // A state file whose mounter is gone: started again while its credentials are there.
    let third = Supervisor::new(host.clone(), settings(&dir.path().join("state")));
    let pid = host.add_running(Path::new("/t/e"), "fuse.s3fs");
    third.record(&spec("/t/e"), Some(pid), None);
    host.kill(pid);
    assert_eq!(third.recover().await.unwrap(), 1);
    let s = wait_until(&third, "/t/e", |s| s.state == MountState::Serving).await;
    assert!(!s.adopted);
    assert_eq!(host.spawned().len(), 3);
    third
        .handle(Request::Stop {
            target: "/t/e".into(),
        })
        .await;
}

#[test]
fn the_state_dir_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // As a Kubernetes emptyDir comes.
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    make_private_dir(&state).unwrap();
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    make_private_dir(&dir.path().join("a/b")).unwrap();
}

#[test]
fn the_pause_doubles_up_to_the_cap() {
    let s = Settings::new("/x".into());
    let pauses: Vec<u64> = (1..=7).map(|n| s.backoff(n).as_secs()).collect();
    assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
}
