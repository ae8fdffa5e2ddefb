//! The poller against a scripted cloud, on paused time.

use std::collections::BTreeMap;
use std::sync::Mutex;

use everest_cloud::{ApiError, CloudConfig};
use serde_json::json;

use super::*;

/// What the scripted cloud was asked, and when (from the test's start).
#[derive(Debug, Clone, PartialEq)]
enum Asked {
    Disks(Vec<String>),
    Job(String),
}

/// The status a disk shows at its n-th look (from 1); `None`: no such disk.
type DiskScript = Box<dyn Fn(&str, u32) -> Option<&'static str> + Send + Sync>;

struct Scripted {
    config: CloudConfig,
    expected: Option<Duration>,
    started: Instant,
    disk: DiskScript,
    /// List calls still to fail with a 429 (after the client's own retries).
    throttled_lists: Mutex<u32>,
    looks: Mutex<BTreeMap<String, u32>>,
    asked: Mutex<Vec<(Duration, Asked)>>,
    learned: Mutex<Vec<(String, Duration)>>,
}

impl Scripted {
    fn new(disk: DiskScript) -> Self {
        let mut config = CloudConfig::new("p", "r");
        config.job_poll_initial = Duration::from_millis(10);
        config.job_poll_max = Duration::from_millis(100);
        config.retry_base = Duration::from_secs(1);
        config.retry_cap = Duration::from_secs(4);
        Scripted {
            config,
            expected: None,
            started: Instant::now(),
            disk,
            throttled_lists: Mutex::new(0),
            looks: Mutex::default(),
            asked: Mutex::default(),
            learned: Mutex::default(),
        }
    }

    fn asked(&self) -> Vec<(Duration, Asked)> {
        self.asked.lock().unwrap().clone()
    }

    fn list_calls(&self) -> Vec<Vec<String>> {
        self.asked()
            .into_iter()
            .filter_map(|(_, a)| match a {
                Asked::Disks(ids) => Some(ids),
                Asked::Job(_) => None,
            })
            .collect()
    }

    fn record(&self, asked: Asked) {
        self.asked
            .lock()
            .unwrap()
            .push((self.started.elapsed(), asked));
    }
}

fn throttled() -> Error {
    Error::Api {
        service: "evs",
        operation: "list_volumes",
        api: ApiError::from_body(
            429,
            br#"{"error_code":"APIGW.0308","error_msg":"throttled"}"#,
            None,
        ),
    }
}

#[async_trait]
impl Lookup for Scripted {
    async fn disks(&self, ids: Vec<String>) -> Result<Vec<Volume>> {
        self.record(Asked::Disks(ids.clone()));
        {
            let mut left = self.throttled_lists.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(throttled());
            }
        }
        let mut looks = self.looks.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let n = looks.entry(id.clone()).or_default();
                *n += 1;
                let status = (self.disk)(id, *n)?;
                Some(serde_json::from_value(json!({"id": id, "status": status})).unwrap())
            })
            .collect())
    }

    async fn job(&self, _service: Service, id: JobId) -> Result<Job> {
        self.record(Asked::Job(id.0.clone()));
        Ok(serde_json::from_value(json!({"job_id": id.0, "status": "RUNNING"})).unwrap())
    }

    fn pace(&self, _key: &str, deadline: Duration) -> WaitPace {
        WaitPace::expecting(&self.config, deadline, self.expected)
    }

    fn learned(&self, key: &str, took: Duration) {
        self.learned.lock().unwrap().push((key.to_owned(), took));
    }

    fn backend(&self) -> &str {
        "test"
    }
}

fn until_available(v: Option<&Volume>) -> VolumeWait {
    match v {
        Some(v) if v.status == super::super::evs::VolumeStatus::Available => VolumeWait::Done,
        Some(v) if v.status.is_error() => VolumeWait::Failed(format!("status {}", v.status)),
        _ => VolumeWait::Pending,
    }
}

/// Starts a wait on each disk, as concurrent RPCs would.
fn wait_on(
    poller: &Poller,
    lookup: &Arc<Scripted>,
    ids: &[String],
    deadline: Duration,
) -> Vec<tokio::task::JoinHandle<Result<Option<Volume>>>> {
    ids.iter()
        .map(|id| {
            let (poller, id) = (poller.clone(), id.clone());
            let lookup: Arc<dyn Lookup> = lookup.clone();
            tokio::spawn(async move {
                poller
                    .disk(
                        &lookup,
                        "available",
                        &id,
                        Box::new(until_available),
                        deadline,
                    )
                    .await
            })
        })
        .collect()
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn waits_in_flight_together_share_list_calls_of_sixty() {
    // Every disk is available at its third look.
    let cloud = Arc::new(Scripted::new(Box::new(|_, n| {
        Some(if n >= 3 { "available" } else { "creating" })
    })));
    let poller = Poller::default();
    let ids: Vec<String> = (0..130).map(|i| format!("d{i:03}")).collect();
    for wait in wait_on(&poller, &cloud, &ids, LONG) {
        assert!(wait.await.unwrap().unwrap().is_some());
    }
    let calls = cloud.list_calls();
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    // Three rounds of ⌈130 / 60⌉ = 3 calls, each disk in exactly one call per round.
    assert_eq!(sizes, [60, 60, 10].repeat(3), "{sizes:?}");
    for round in calls.chunks(3) {
        let mut seen: Vec<&String> = round.iter().flatten().collect();
        seen.sort();
        assert_eq!(seen, ids.iter().collect::<Vec<_>>());
    }
    let learned = cloud.learned.lock().unwrap().clone();
    assert_eq!(learned.len(), 130);
    assert!(learned.iter().all(|(kind, _)| kind == "disks:available"));
    assert!(
        !lock(&poller.shared.state).driving,
        "the task ends when nobody waits"
    );
}

#[tokio::test(start_paused = true)]
async fn a_disk_in_error_fails_only_its_own_wait() {
    let cloud = Arc::new(Scripted::new(Box::new(|id, n| {
        Some(match (id, n) {
            ("bad", 2..) => "error",
            (_, 3..) => "available",
            _ => "creating",
        })
    })));
    let poller = Poller::default();
    let ids = ["good1", "bad", "good2"].map(String::from);
    let results: Vec<_> = {
        let mut out = Vec::new();
        for w in wait_on(&poller, &cloud, &ids, LONG) {
            out.push(w.await.unwrap());
        }
        out
    };
    assert!(results[0].as_ref().unwrap().is_some());
    match &results[1] {
        Err(Error::ResourceFailed { resource, reason }) => {
            assert_eq!(resource, "disk bad");
            assert_eq!(reason, "status error");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(results[2].as_ref().unwrap().is_some());
    // The failed disk left the rounds; the others went on without it.
    let calls = cloud.list_calls();
    assert_eq!(
        calls.last().unwrap(),
        &vec!["good1".to_owned(), "good2".to_owned()]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_wait_is_not_polled_again() {
    let cloud = Arc::new(Scripted::new(Box::new(|_, _| Some("creating"))));
    let poller = Poller::default();
    let ids = ["kept", "cancelled"].map(String::from);
    let mut waits = wait_on(&poller, &cloud, &ids, LONG);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        cloud
            .list_calls()
            .iter()
            .all(|c| c.contains(&"cancelled".to_owned()))
    );
    // Its RPC was cancelled: the future is dropped.
    waits.pop().unwrap().abort();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = cloud.list_calls().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = &cloud.list_calls()[before..];
    assert!(!later.is_empty());
    assert!(
        later.iter().all(|c| c == &vec!["kept".to_owned()]),
        "{later:?}"
    );
    // Nobody waits any more: no more calls, and the task ends.
    waits.pop().unwrap().abort();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = cloud.list_calls().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(cloud.list_calls().len(), before);
    assert!(!lock(&poller.shared.state).driving);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_round_slows_every_wait_of_the_instance() {
    // The disk lists fail (429, retries exhausted) twice; the job wait never touches them.
    let cloud = Arc::new(Scripted::new(Box::new(|_, n| {
        Some(if n >= 2 { "available" } else { "creating" })
    })));
    *cloud.throttled_lists.lock().unwrap() = 2;
    let poller = Poller::default();
    let job = {
        let (poller, lookup) = (poller.clone(), cloud.clone() as Arc<dyn Lookup>);
        tokio::spawn(async move {
            poller
                .job(
                    &lookup,
                    Service::Ecs,
                    &JobId("j1".into()),
                    Duration::from_secs(5),
                )
                .await
        })
    };
    let disk = wait_on(&poller, &cloud, &["d1".to_owned()], LONG)
        .pop()
        .unwrap();
    assert!(disk.await.unwrap().unwrap().is_some());
    let job_polls: Vec<Duration> = cloud
        .asked()
        .into_iter()
        .filter(|(_, a)| matches!(a, Asked::Job(_)))
        .map(|(at, _)| at)
        .collect();
    // Unthrottled the job is polled every 10–100 ms; after the first failed round (at 0 ms)
    // nothing is sent before the failure backoff (at least half of retry_base, 500 ms).
    assert_eq!(job_polls[0], Duration::ZERO);
    assert!(job_polls[1] >= Duration::from_millis(500), "{job_polls:?}");
    // The job keeps its wait and times out at its own deadline, saying what it saw last.
    match job.await.unwrap() {
        Err(Error::JobTimeout { last_status, .. }) => assert_eq!(last_status, "RUNNING"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_keeps_its_learned_pace_in_the_shared_rounds() {
    let mut scripted = Scripted::new(Box::new(|id, n| match (id, n) {
        ("late", 1..=3) => Some("creating"),
        _ => Some("available"),
    }));
    scripted.expected = Some(Duration::from_secs(1));
    let cloud = Arc::new(scripted);
    let poller = Poller::default();
    let first = wait_on(&poller, &cloud, &["late".to_owned()], LONG);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = wait_on(&poller, &cloud, &["early".to_owned()], LONG);
    for w in first.into_iter().chain(second) {
        assert!(w.await.unwrap().unwrap().is_some());
    }
    let asked = cloud.asked();
    let at: Vec<u128> = asked.iter().map(|(t, _)| t.as_millis()).collect();
    // "late": first look at 0.9 × 1 s, then every 1/20 s; the round at 900 ms also looked at
    // "early" for free, found it done, and so "early" needed no call of its own at 1500 ms.
    assert_eq!(at, [900, 950, 1000, 1050], "{asked:?}");
    assert_eq!(
        asked[0].1,
        Asked::Disks(vec!["late".to_owned(), "early".to_owned()])
    );
}

#[tokio::test(start_paused = true)]
async fn waits_due_close_together_share_their_rounds() {
    let mut scripted = Scripted::new(Box::new(|_, n| {
        Some(if n >= 3 { "available" } else { "creating" })
    }));
    scripted.expected = Some(Duration::from_secs(1));
    let cloud = Arc::new(scripted);
    let poller = Poller::default();
    let first = wait_on(&poller, &cloud, &["a".to_owned()], LONG);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = wait_on(&poller, &cloud, &["b".to_owned()], LONG);
    for w in first.into_iter().chain(second) {
        assert!(w.await.unwrap().unwrap().is_some());
    }
    // "b" is due 20 ms after "a", within a close gap (50 ms): the round at 900 ms is the look
    // of both, and from then on they share every round instead of alternating.
    let asked = cloud.asked();
    let at: Vec<u128> = asked.iter().map(|(t, _)| t.as_millis()).collect();
    assert_eq!(at, [900, 950, 1000], "{asked:?}");
    assert!(cloud.list_calls().iter().all(|c| c.len() == 2), "{asked:?}");
}

#[tokio::test(start_paused = true)]
async fn an_overdue_wait_stays_on_close_gaps_while_its_peers_end() {
    // Expected 100 ms (close gaps of 5 ms); past 200 ms the slow schedule (10 ms, ×1.5, up to
    // 100 ms). A burst queued in the cloud: ten peers end one by one from 300 ms, 20 ms apart,
    // and "slow" at 490 ms.
    let t0 = Instant::now();
    let mut scripted = Scripted::new(Box::new(move |id, _| {
        let end = match id.strip_prefix('p') {
            Some(i) => 300 + 20 * i.parse::<u64>().unwrap(),
            None => 490,
        };
        Some(if t0.elapsed() >= Duration::from_millis(end) {
            "available"
        } else {
            "creating"
        })
    }));
    scripted.expected = Some(Duration::from_millis(100));
    let cloud = Arc::new(scripted);
    let poller = Poller::default();
    let mut ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    ids.push("slow".to_owned());
    let waits = wait_on(&poller, &cloud, &ids, LONG);
    let mut ended = Vec::new();
    for w in waits {
        assert!(w.await.unwrap().unwrap().is_some());
        ended.push(t0.elapsed());
    }
    // While its peers keep ending, "slow" is looked at every close gap: its end is seen within
    // a gap or two, not up to 100 ms late.
    let slow = ended[10];
    assert!(slow <= Duration::from_millis(500), "{slow:?}");
}
