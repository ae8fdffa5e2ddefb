//! The object data path: each FUSE mounter, mounted by the obs node side with Everest's default
//! options, against direct `aws-sdk-s3` calls to the same S3 server in the same run.
//!
//! ```sh
//! cargo install garage@2.5.0 --locked     # the S3 server (scripts/test.sh keeps one in the target dir)
//! sudo EVEREST_GARAGE=… cargo bench -p everest-obs --bench mounters               # 1 GiB, 10 000 keys
//! sudo EVEREST_GARAGE=… cargo bench -p everest-obs --bench mounters -- --quick    # 256 MiB, 1 000 keys
//! sudo EVEREST_GARAGE=… cargo bench -p everest-obs --bench mounters -- --flags s3fs=parallel_count=10,multipart_size=64
//! ```
//!
//! `--flags MOUNTER=OPT,OPT` passes StorageClass-style mount options to one mounter, to try a
//! tuning before making it a default.
//!
//! Needs root, `/dev/fuse`, `s3fs` (and `rclone` for its rows) and Garage
//! (`everest_testsupport::GarageServer`: `EVEREST_GARAGE` or `garage` on the PATH), a full S3
//! service that answers s3fs's directory probes as a real one does. The figures go to
//! docs/performance.md.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use everest_backend::BackendName;
use everest_backend::backend::{NodeBackend, NodeStage};
use everest_backend::capability::{AccessMode, AccessType, VolumeCapability};
use everest_backend::host::LinuxHost;
use everest_backend::paths::AllowedRoot;
use everest_backend::secrets::Secrets;
use everest_obs::credentials::S3Keys;
use everest_obs::{ObsConfig, ObsNode, context};
use everest_testsupport::GarageServer;
use everest_testsupport::garage::{GARAGE_ACCESS_KEY, GARAGE_REGION, GARAGE_SECRET_KEY};

type Error = Box<dyn std::error::Error + Send + Sync>;

const BUCKET: &str = "everest-bench";
const MIB: usize = 1 << 20;

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

struct Sizes {
    object: usize,
    keys: usize,
    /// Mount options per mounter, from `--flags MOUNTER=OPT,OPT`.
    flags: BTreeMap<String, Vec<String>>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn rate(bytes: usize, d: Duration) -> String {
    format!("{:.0} MiB/s", bytes as f64 / MIB as f64 / secs(d).max(1e-9))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let flags = args
        .windows(2)
        .filter(|w| w[0] == "--flags")
        .filter_map(|w| w[1].split_once('='))
        .map(|(m, opts)| (m.to_owned(), opts.split(',').map(str::to_owned).collect()))
        .collect();
    let (object, keys) = if quick {
        (256 * MIB, 1000)
    } else {
        (1024 * MIB, 10_000)
    };
    let sizes = Sizes {
        object,
        keys,
        flags,
    };
    match run(&sizes).await {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("mounters bench: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(sizes: &Sizes) -> Result<String, Error> {
    if rustix::process::geteuid().as_raw() != 0 || !Path::new("/dev/fuse").exists() {
        return Err("needs root and /dev/fuse (FUSE mounts)".into());
    }
    let dir = tempfile::tempdir()?;
    let server = GarageServer::start()?;
    let table = serde_json::json!({
        "endpoint": server.endpoint(),
        "region": GARAGE_REGION,
        "runtime_dir": dir.path().join("run").display().to_string(),
    });
    let config = ObsConfig::parse("bench", table.as_object().ok_or("table")?)?;
    let keys = S3Keys {
        access_key: GARAGE_ACCESS_KEY.into(),
        secret_key: GARAGE_SECRET_KEY.into(),
    };
    let s3 = everest_obs::s3::S3::new("bench", &config)?.client(Some(&keys))?;
    s3.create_bucket().bucket(BUCKET).send().await?;

    let payload: Vec<u8> = (0..sizes.object).map(|i| (i % 251) as u8).collect();
    // Direct PUT and GET: the baselines.
    let t = Instant::now();
    s3.put_object()
        .bucket(BUCKET)
        .key("direct.bin")
        .body(ByteStream::from(payload.clone()))
        .send()
        .await?;
    let direct_put = t.elapsed();
    // Streamed and counted, not collected: a client reading a large object does not keep it.
    let t = Instant::now();
    let mut body = s3
        .get_object()
        .bucket(BUCKET)
        .key("direct.bin")
        .send()
        .await?
        .body;
    let mut got = 0;
    while let Some(chunk) = body.try_next().await? {
        got += chunk.len();
    }
    let direct_get = t.elapsed();
    if got != payload.len() {
        return Err("direct GET returned a short body".into());
    }
    // Many small keys, for the listing figures.
    put_many(&s3, sizes.keys).await?;
    let t = Instant::now();
    let listed = list_all(&s3, "many/").await?;
    let direct_list = t.elapsed();
    if listed != sizes.keys {
        return Err(format!("ListObjectsV2 found {listed} of {} keys", sizes.keys).into());
    }

    let mut rows = vec![
        format!(
            "| direct PUT of {} MiB (aws-sdk-s3) | {} | — | 1.00 | baseline |",
            sizes.object / MIB,
            rate(sizes.object, direct_put)
        ),
        format!(
            "| direct GET of {} MiB (aws-sdk-s3) | {} | — | 1.00 | baseline |",
            sizes.object / MIB,
            rate(sizes.object, direct_get)
        ),
        format!(
            "| ListObjectsV2 of {} keys | {:.0} ms | — | 1.00 | baseline |",
            sizes.keys,
            secs(direct_list) * 1e3
        ),
    ];
    for mounter in ["s3fs", "rclone"] {
        if which(mounter).is_none() {
            rows.push(format!("| {mounter} | not installed | | | |"));
            continue;
        }
        let m = through_mount(dir.path(), &config, mounter, sizes, &payload).await?;
        rows.push(format!(
            "| {mounter}: sequential write of {} MiB, closed | {} | direct PUT {} | {:.2} | ≥ 0.70 |",
            sizes.object / MIB,
            rate(sizes.object, m.write),
            rate(sizes.object, direct_put),
            secs(direct_put) / secs(m.write)
        ));
        rows.push(format!(
            "| {mounter}: sequential read of {} MiB | {} | direct GET {} | {:.2} | ≥ 0.85 |",
            sizes.object / MIB,
            rate(sizes.object, m.read),
            rate(sizes.object, direct_get),
            secs(direct_get) / secs(m.read)
        ));
        rows.push(format!(
            "| {mounter}: listing {} entries | {:.0} ms | ListObjectsV2 {:.0} ms | {:.2} | — |",
            sizes.keys,
            secs(m.list) * 1e3,
            secs(direct_list) * 1e3,
            secs(direct_list) / secs(m.list)
        ));
    }
    drop(server);
    Ok(format!(
        "Object data path (Garage on loopback; ratio = Everest's mount speed / direct speed; extra mount options: {:?})\n\n| figure | Everest | baseline | ratio | goal |\n|---|---|---|---|---|\n{}\n",
        sizes.flags,
        rows.join("\n")
    ))
}

async fn put_many(s3: &Client, n: usize) -> Result<(), Error> {
    let s3 = Arc::new(s3.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let per = n.div_ceil(16);
    for w in 0..16 {
        let s3 = s3.clone();
        tasks.spawn(async move {
            for i in (w * per)..((w + 1) * per).min(n) {
                s3.put_object()
                    .bucket(BUCKET)
                    .key(format!("many/k{i:06}"))
                    .body(ByteStream::from_static(b"x"))
                    .send()
                    .await?;
            }
            Ok::<(), aws_sdk_s3::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn list_all(s3: &Client, prefix: &str) -> Result<usize, Error> {
    let mut n = 0;
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await?;
        n += page.contents().len();
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok(n),
        }
    }
}

struct MountTimes {
    write: Duration,
    read: Duration,
    list: Duration,
}

/// Mounts the bucket through the node side with `mounter`, times a write, a read of the
/// directly PUT object and a listing, and unmounts.
async fn through_mount(
    dir: &Path,
    config: &ObsConfig,
    mounter: &str,
    sizes: &Sizes,
    payload: &[u8],
) -> Result<MountTimes, Error> {
    let kubelet = dir.join("kubelet");
    std::fs::create_dir_all(&kubelet)?;
    let staging = AllowedRoot::new(&kubelet)?.check(
        &kubelet
            .join(format!("stage-{mounter}"))
            .display()
            .to_string(),
        "path",
    )?;
    let node = ObsNode::new(
        BackendName::new("bench")?,
        config.clone(),
        Arc::new(LinuxHost::default()),
    );
    let native_id = format!("r~{BUCKET}");
    node.stage(&NodeStage {
        native_id: native_id.clone(),
        publish_context: BTreeMap::new(),
        staging: staging.clone(),
        capability: VolumeCapability {
            access_type: AccessType::Mount {
                fs_type: String::new(),
                mount_flags: sizes.flags.get(mounter).cloned().unwrap_or_default(),
            },
            access_mode: AccessMode::MultiNodeMultiWriter,
        },
        volume_context: BTreeMap::from([(context::MOUNTER.to_owned(), mounter.to_owned())]),
        secrets: Secrets::new(BTreeMap::from([
            ("access.key".to_owned(), GARAGE_ACCESS_KEY.to_owned()),
            ("secret.key".to_owned(), GARAGE_SECRET_KEY.to_owned()),
        ])),
    })
    .await?;
    let mnt = staging.as_path().to_owned();
    let timed = (|| -> Result<MountTimes, Error> {
        let t = Instant::now();
        let mut f = std::fs::File::create(mnt.join(format!("{mounter}.bin")))?;
        for chunk in payload.chunks(MIB) {
            f.write_all(chunk)?;
        }
        // The upload happens at close: time it too.
        f.sync_all()?;
        drop(f);
        let write = t.elapsed();
        let t = Instant::now();
        let mut f = std::fs::File::open(mnt.join("direct.bin"))?;
        let mut buf = vec![0u8; MIB];
        let mut total = 0;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        let read = t.elapsed();
        if total != sizes.object {
            return Err(
                format!("read {total} bytes through {mounter}, not {}", sizes.object).into(),
            );
        }
        let t = Instant::now();
        let entries = std::fs::read_dir(mnt.join("many"))?.count();
        let list = t.elapsed();
        if entries != sizes.keys {
            return Err(format!("{mounter} listed {entries} of {} keys", sizes.keys).into());
        }
        Ok(MountTimes { write, read, list })
    })();
    node.unstage(&native_id, &staging).await?;
    timed
}
