//! The controller side of object volumes: CreateVolume makes a bucket (mode `bucket`) or a
//! prefix in a shared bucket (mode `prefix`) and marks it as Everest's; DeleteVolume empties
//! and removes only what carries that mark; nothing is attached, so ControllerPublish answers
//! at once. Capacity is recorded in the mark, never enforced: S3 has no size limit to set.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use everest_backend::backend::{
    BackendKind, Capabilities, ControllerBackend, ControllerPublish, CreateVolume, Expanded,
    ListedVolume, MarkedVolume, Volume, VolumePage, unsupported,
};
use everest_backend::capability::VolumeCapability;
use everest_backend::capacity::CapacityRange;
use everest_backend::marker::{self, DeletePolicy, Marker, Owner};
use everest_backend::secrets::Secrets;
use everest_backend::{BackendName, Error, Result, VolumeId};

use crate::config::ObsConfig;
use crate::credentials::S3Keys;
use crate::mounter::Mounter;
use crate::params::{Mode, ObsParams};
use crate::s3::{S3, mark_bucket};
use crate::volume::{
    ObsVolume, OnDelete, bucket_for_request, check_bucket_name, check_prefix, prefix_for_request,
    short_hash,
};
use crate::{CAPABILITIES, check_capability, context};

/// The marker key that says Everest made a bucket or prefix: what DeleteVolume requires before
/// it removes anything. The rest of the marker (cluster, instance, PV/PVC) is
/// [`everest_backend::marker`]'s; the same keys serve as bucket tags and as object metadata.
pub const CREATED_BY_TAG: &str = marker::CREATED_BY_KEY;
/// Its value.
pub const CREATED_BY: &str = marker::CREATED_BY;
/// The tag holding a hash of the request name and parameters it was made for.
pub const PARAMS_TAG: &str = "everest-params";
/// The tag recording the capacity asked for (recorded, not enforced).
pub const CAPACITY_TAG: &str = "everest-capacity";

/// The controller side of one `obs` instance.
#[derive(Debug)]
pub struct ObsController {
    name: BackendName,
    config: ObsConfig,
    s3: S3,
}

/// What a CreateVolume resolves to once its parameters and the backend's defaults are merged.
struct Plan {
    volume: ObsVolume,
    mounter: Mounter,
    /// Hash of the request name and everything above: a second CreateVolume with the same name
    /// matches only if this matches.
    fingerprint: String,
}

/// The owner mark found on a bucket or marker object, in one shape.
struct Mark<'a> {
    owner: Owner,
    params: Option<&'a str>,
    capacity: Option<&'a str>,
}

impl<'a> Mark<'a> {
    /// The mark in a bucket's tags or a marker object's metadata, seen from this instance.
    fn read(tags: &'a BTreeMap<String, String>, req: &CreateVolume, backend: &BackendName) -> Self {
        Self {
            owner: Marker::owner(tags, &req.cluster, backend),
            params: tags.get(PARAMS_TAG).map(String::as_str),
            capacity: tags.get(CAPACITY_TAG).map(String::as_str),
        }
    }
}

impl ObsController {
    /// Builds it; reads the credentials file and CA file now, so a bad one stops the start.
    pub fn new(name: BackendName, config: ObsConfig) -> Result<Self> {
        let s3 = S3::new(name.as_str(), &config)?;
        Ok(Self { name, config, s3 })
    }

    fn plan(&self, req: &CreateVolume) -> Result<Plan> {
        let params = ObsParams::parse(&req.parameters, self.name.as_str())?;
        let on_delete = match params.on_delete {
            Some(p) => p,
            None => self
                .config
                .default_on_delete()
                .map_err(Error::InvalidArgument)?,
        };
        // Huawei Everest's OBS classes name the mounter in csi.storage.k8s.io/fstype.
        let mounter = match (params.mounter, req.common.fs_type.as_deref()) {
            (Some(m), _) => m,
            (None, Some(fs)) => fs.parse().map_err(|e| {
                Error::InvalidArgument(format!(
                    "StorageClass parameter csi.storage.k8s.io/fstype: {e}"
                ))
            })?,
            (None, None) => self.config.mounter,
        };
        let volume = match params.mode() {
            Mode::Bucket => ObsVolume {
                on_delete,
                bucket: bucket_for_request(&self.config.bucket_prefix, &req.name),
                prefix: None,
            },
            Mode::Prefix => ObsVolume {
                on_delete,
                bucket: params.bucket.clone().unwrap_or_default(),
                prefix: Some(prefix_for_request(&req.name)),
            },
        };
        // Refuse before anything is made when the ID would not fit CSI's limit.
        VolumeId::new(self.name.clone(), &volume.to_string())
            .map_err(|e| e.context(format!("volume {}", req.name)))?;
        let fingerprint = short_hash(
            &format!(
                "{}\0{}\0{}\0{}",
                req.name,
                volume.on_delete_word(),
                volume.bucket_and_mode(),
                mounter
            ),
            32,
        );
        Ok(Plan {
            volume,
            mounter,
            fingerprint,
        })
    }

    fn to_csi(&self, vol: &ObsVolume, mounter: Mounter, capacity_bytes: u64) -> Volume {
        let mut ctx = BTreeMap::from([
            (context::ENDPOINT.to_owned(), self.config.endpoint.clone()),
            (context::REGION.to_owned(), self.config.region.clone()),
            (
                context::PATH_STYLE.to_owned(),
                self.config.path_style.to_string(),
            ),
            (context::BUCKET.to_owned(), vol.bucket.clone()),
            (context::MOUNTER.to_owned(), mounter.to_string()),
        ]);
        if let Some(p) = &vol.prefix {
            ctx.insert(context::PREFIX.to_owned(), p.clone());
        }
        Volume {
            native_id: vol.to_string(),
            capacity_bytes,
            context: ctx,
            // An S3 endpoint is reachable from every node, whatever its zone.
            topology: Vec::new(),
        }
    }

    fn client(&self, secrets: &Secrets) -> Result<Client> {
        self.s3.client(S3Keys::from_secrets(secrets)?.as_ref())
    }

    /// Checks that an existing bucket or prefix is the one this request made; its recorded
    /// capacity when it is.
    fn check_mark(
        &self,
        what: &str,
        req: &CreateVolume,
        plan: &Plan,
        mark: Mark<'_>,
    ) -> Result<u64> {
        let static_hint = format!(
            "choose another name, or provision it statically with volumeHandle v1:{}:r~{}",
            self.name,
            plan.volume
                .to_string()
                .split_once('~')
                .map_or("", |(_, r)| r)
        );
        match &mark.owner {
            Owner::Ours(_) => {}
            Owner::Foreign => {
                return Err(Error::AlreadyExists(format!(
                    "volume {}: {what} already exists and was not made by Everest (it has no {CREATED_BY_TAG} mark); {static_hint}",
                    req.name
                )));
            }
            Owner::Elsewhere(m) => {
                return Err(Error::AlreadyExists(format!(
                    "volume {}: {what} already exists and belongs to Everest backend {} of cluster {}, not to {} of cluster {}; {static_hint}",
                    req.name, m.backend, m.cluster, self.name, req.cluster
                )));
            }
        }
        if mark.params != Some(plan.fingerprint.as_str()) {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as {what} with other parameters; delete it first or use the parameters it was made with",
                req.name
            )));
        }
        let recorded = mark
            .capacity
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0);
        if !req.capacity.is_satisfied_by(recorded) {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as {what} with capacity {recorded} bytes, outside the requested range",
                req.name
            )));
        }
        Ok(recorded)
    }

    async fn create_bucket_volume(
        &self,
        c: &Client,
        req: &CreateVolume,
        plan: &Plan,
    ) -> Result<u64> {
        let bucket = &plan.volume.bucket;
        let what = format!("bucket {bucket}");
        if self.bucket_visible(c, bucket).await? {
            let tags = self
                .s3
                .bucket_mark(c, bucket)
                .await
                .map_err(|e| foreign(e, &what))?;
            return self.check_mark(&what, req, plan, Mark::read(&tags, req, &self.name));
        }
        self.s3
            .create_bucket(c, bucket)
            .await
            .map_err(|e| foreign(e, &what))?;
        let tags = self.mark(req, plan);
        if let Err(e) = self.s3.put_bucket_mark(c, bucket, &tags).await {
            // Unmarked, the bucket would look foreign to the retry: remove it (it is empty).
            if let Err(undo) = self.s3.delete_bucket(c, bucket).await {
                tracing::warn!(%bucket, error = %undo, "could not remove the bucket whose tagging failed");
            }
            return Err(e.context(format!("volume {}: tagging new bucket {bucket}", req.name)));
        }
        tracing::info!(volume = %plan.volume, "bucket made");
        Ok(req.capacity.required_bytes)
    }

    async fn create_prefix_volume(
        &self,
        c: &Client,
        req: &CreateVolume,
        plan: &Plan,
    ) -> Result<u64> {
        let bucket = &plan.volume.bucket;
        if !self.s3.bucket_exists(c, bucket).await? {
            return Err(Error::FailedPrecondition(format!(
                "volume {}: the shared bucket {bucket} named by everest.io/obs-bucket does not exist; make it first",
                req.name
            )));
        }
        let marker = plan.volume.key_prefix();
        let what = format!("prefix {marker} in bucket {bucket}");
        if let Some(meta) = self.s3.object_metadata(c, bucket, &marker).await? {
            return self.check_mark(&what, req, plan, Mark::read(&meta, req, &self.name));
        }
        if self.s3.has_objects(c, bucket, &marker).await? {
            return self.check_mark(
                &what,
                req,
                plan,
                Mark {
                    owner: Owner::Foreign,
                    params: None,
                    capacity: None,
                },
            );
        }
        let meta = self.mark(req, plan);
        // The marker is also the prefix's directory object, which s3fs shows as the mount's root.
        self.s3.put_marker(c, bucket, &marker, &meta).await?;
        tracing::info!(volume = %plan.volume, "prefix made");
        Ok(req.capacity.required_bytes)
    }

    /// The mark of a new bucket or prefix: Everest's marker (cluster, instance, PV/PVC), the
    /// fingerprint of the request and the capacity asked for. All of it fits S3's tag limits
    /// (3 of the 50 tags beyond the marker, values far below 256 characters) and, lowercase
    /// and ASCII, object metadata as well.
    fn mark(&self, req: &CreateVolume, plan: &Plan) -> BTreeMap<String, String> {
        // The policy goes in the mark too: the volume ID that carries it goes with the PV.
        let mut tags = req
            .marker(&self.name)
            .with_on_delete(plan.volume.on_delete.policy())
            .to_tags();
        tags.insert(PARAMS_TAG.to_owned(), plan.fingerprint.clone());
        tags.insert(
            CAPACITY_TAG.to_owned(),
            req.capacity.required_bytes.to_string(),
        );
        tags
    }

    /// Whether the bucket exists; one these keys may not even look at is someone else's.
    async fn bucket_visible(&self, c: &Client, bucket: &str) -> Result<bool> {
        self.s3
            .bucket_exists(c, bucket)
            .await
            .map_err(|e| foreign(e, &format!("bucket {bucket}")))
    }

    async fn delete_bucket_volume(&self, c: &Client, vol: &ObsVolume) -> Result<()> {
        let bucket = &vol.bucket;
        if !self.s3.bucket_exists(c, bucket).await? {
            // Gone; a mark an interrupted delete left in the mark bucket (where only Everest
            // writes) goes too.
            self.s3.forget_bucket_mark(c, bucket).await?;
            return Ok(());
        }
        let mark = self.s3.bucket_mark(c, bucket).await?;
        // Any Everest marker will do: a changed cluster_id must not strand the volumes made
        // under the old one. Only a bucket without one is refused.
        if Marker::read(&mark).is_none() {
            return Err(not_made_by_us(vol, &format!("bucket {bucket}")));
        }
        let n = self.s3.delete_all(c, bucket, "", None).await?;
        self.s3.delete_bucket(c, bucket).await?;
        // The mark goes last, so an interrupted delete is still recognised as ours.
        self.s3.forget_bucket_mark(c, bucket).await?;
        tracing::info!(volume = %vol, objects = n, "bucket emptied and removed");
        Ok(())
    }

    async fn delete_prefix_volume(&self, c: &Client, vol: &ObsVolume) -> Result<()> {
        let bucket = &vol.bucket;
        if !self.s3.bucket_exists(c, bucket).await? {
            return Ok(());
        }
        let marker = vol.key_prefix();
        let what = format!("prefix {marker} in bucket {bucket}");
        match self.s3.object_metadata(c, bucket, &marker).await? {
            Some(meta) if Marker::read(&meta).is_some() => {}
            Some(_) => return Err(not_made_by_us(vol, &what)),
            None if self.s3.has_objects(c, bucket, &marker).await? => {
                return Err(not_made_by_us(vol, &what));
            }
            None => return Ok(()),
        }
        // The marker goes last, so an interrupted delete is still recognised as ours.
        let n = self
            .s3
            .delete_all(c, bucket, &marker, Some(&marker))
            .await?;
        self.s3.delete_all(c, bucket, &marker, None).await?;
        tracing::info!(volume = %vol, objects = n, "prefix emptied");
        Ok(())
    }
}

impl ObsController {
    /// Records `bytes` as the bucket volume's size when it grows; the size recorded before.
    async fn record_bucket_capacity(&self, c: &Client, vol: &ObsVolume, bytes: u64) -> Result<u64> {
        let bucket = &vol.bucket;
        if !self.s3.bucket_exists(c, bucket).await? {
            return Err(Error::NotFound(format!(
                "volume {vol}: bucket {bucket} does not exist"
            )));
        }
        let mut tags = self.s3.bucket_mark(c, bucket).await?;
        // A bucket Everest did not make (a static volume) carries no record to change.
        if Marker::read(&tags).is_none() {
            return Ok(bytes);
        }
        let before = tags
            .get(CAPACITY_TAG)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if bytes > before {
            tags.insert(CAPACITY_TAG.to_owned(), bytes.to_string());
            self.s3.put_bucket_mark(c, bucket, &tags).await?;
        }
        Ok(before)
    }

    /// Records `bytes` as the prefix volume's size on its marker when it grows.
    async fn record_prefix_capacity(&self, c: &Client, vol: &ObsVolume, bytes: u64) -> Result<u64> {
        let bucket = &vol.bucket;
        let marker = vol.key_prefix();
        let Some(mut meta) = self.s3.object_metadata(c, bucket, &marker).await? else {
            if self.s3.has_objects(c, bucket, &marker).await? {
                return Ok(bytes);
            }
            return Err(Error::NotFound(format!(
                "volume {vol}: no prefix {marker} in bucket {bucket}"
            )));
        };
        if Marker::read(&meta).is_none() {
            return Ok(bytes);
        }
        let before = meta
            .get(CAPACITY_TAG)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if bytes > before {
            // The marker is an empty object: rewritten whole, with the metadata s3fs keeps on
            // the directory (mode, owner) carried over.
            meta.insert(CAPACITY_TAG.to_owned(), bytes.to_string());
            self.s3.put_marker(c, bucket, &marker, &meta).await?;
        }
        Ok(before)
    }
}

impl ObsController {
    /// The buckets and prefixes these keys can see that carry an Everest marker, for
    /// `everestctl orphans`. Prefix volumes are looked for one level down in every bucket that
    /// is not itself a bucket volume (a bucket volume's keys are a pod's data).
    async fn marked(&self) -> Result<Vec<MarkedVolume>> {
        let c = self.client(&Secrets::default())?;
        let marks = mark_bucket(&self.config.bucket_prefix);
        let mut found = Vec::new();
        for (bucket, created) in self.s3.list_buckets(&c).await? {
            if bucket == marks || check_bucket_name(&bucket).is_err() {
                continue;
            }
            let tags = match self.s3.bucket_mark(&c, &bucket).await {
                Ok(tags) => tags,
                // Owned by these keys but closed to them: not a bucket Everest made.
                Err(Error::PermissionDenied(_)) => continue,
                Err(e) => return Err(e),
            };
            if Marker::read(&tags).is_some() {
                found.push(marked(bucket, None, tags, created));
                continue;
            }
            for key in self.s3.top_prefixes(&c, &bucket).await? {
                let prefix = key.trim_end_matches('/');
                if check_prefix(prefix).is_err() {
                    continue;
                }
                let Some((meta, modified)) = self.s3.object_head(&c, &bucket, &key).await? else {
                    continue;
                };
                if Marker::read(&meta).is_some() {
                    found.push(marked(
                        bucket.clone(),
                        Some(prefix.to_owned()),
                        meta,
                        modified,
                    ));
                }
            }
        }
        Ok(found)
    }
}

/// A marked bucket or prefix as `everestctl orphans` sees it: its ID carries the policy its
/// mark records, or the keeping one when the mark records none.
fn marked(
    bucket: String,
    prefix: Option<String>,
    tags: BTreeMap<String, String>,
    created_at: Option<std::time::SystemTime>,
) -> MarkedVolume {
    let recorded = Marker::read(&tags).and_then(|m| m.on_delete);
    let on_delete = match recorded {
        Some(DeletePolicy::Delete) => OnDelete::Delete,
        _ => OnDelete::Retain,
    };
    let other = match on_delete {
        OnDelete::Delete => OnDelete::Retain,
        OnDelete::Retain => OnDelete::Delete,
    };
    let id = |on_delete| {
        ObsVolume {
            on_delete,
            bucket: bucket.clone(),
            prefix: prefix.clone(),
        }
        .to_string()
    };
    let name = match &prefix {
        Some(p) => format!("{bucket}/{p}"),
        None => bucket.clone(),
    };
    MarkedVolume {
        native_id: id(on_delete),
        aliases: vec![id(other)],
        name,
        // S3 has no size to report; the capacity in the mark is what was asked, not used.
        size_bytes: None,
        created_at,
        tags,
        on_delete: recorded,
    }
}

/// Mode `d` on something Everest did not make (a hand-written volumeHandle): refuse, naming the
/// way out, rather than delete another's data or pretend it is gone.
fn not_made_by_us(vol: &ObsVolume, what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "volume {vol}: {what} was not made by Everest (no {CREATED_BY_TAG} mark), so it is not deleted; a statically provisioned volume should use the r~ form of its volumeHandle"
    ))
}

/// A bucket these keys may not see or make is another owner's: ALREADY_EXISTS for CreateVolume.
fn foreign(e: Error, what: &str) -> Error {
    match e {
        Error::PermissionDenied(m) | Error::AlreadyExists(m) => Error::AlreadyExists(format!(
            "{what} exists and belongs to someone else ({m}); choose another volume name or bucket_prefix"
        )),
        other => other,
    }
}

#[async_trait]
impl ControllerBackend for ObsController {
    fn kind(&self) -> BackendKind {
        BackendKind::Object
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn check_capabilities(&self, caps: &[VolumeCapability]) -> Result<()> {
        caps.iter().try_for_each(check_capability)
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume> {
        self.check_capabilities(&req.capabilities)?;
        let plan = self.plan(req)?;
        let c = self.client(&req.secrets)?;
        let capacity = match plan.volume.prefix {
            None => self.create_bucket_volume(&c, req, &plan).await?,
            Some(_) => self.create_prefix_volume(&c, req, &plan).await?,
        };
        Ok(self.to_csi(&plan.volume, plan.mounter, capacity))
    }

    async fn delete_volume(&self, native_id: &str, secrets: &Secrets) -> Result<()> {
        let vol = match native_id.parse::<ObsVolume>() {
            Ok(v) => v,
            // Not one of this backend's IDs: no such volume, nothing to delete.
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if vol.on_delete == OnDelete::Retain {
            return Ok(());
        }
        let c = self.client(secrets)?;
        match vol.prefix {
            None => self.delete_bucket_volume(&c, &vol).await,
            Some(_) => self.delete_prefix_volume(&c, &vol).await,
        }
    }

    async fn publish(&self, req: &ControllerPublish) -> Result<BTreeMap<String, String>> {
        // Nothing to attach: the node mounts what the volume context names.
        req.native_id.parse::<ObsVolume>()?;
        Ok(BTreeMap::new())
    }

    async fn unpublish(&self, _native_id: &str, _node_id: Option<&str>) -> Result<()> {
        Ok(())
    }

    async fn expand(&self, native_id: &str, capacity: CapacityRange) -> Result<Expanded> {
        let vol: ObsVolume = native_id.parse()?;
        let c = self.s3.client(None)?;
        let recorded = match &vol.prefix {
            None => {
                self.record_bucket_capacity(&c, &vol, capacity.required_bytes)
                    .await?
            }
            Some(_) => {
                self.record_prefix_capacity(&c, &vol, capacity.required_bytes)
                    .await?
            }
        };
        // Nothing to grow anywhere: the new size is only recorded (never shrunk).
        Ok(Expanded {
            capacity_bytes: recorded.max(capacity.required_bytes),
            node_expansion_required: false,
        })
    }

    async fn get_volume(&self, _native_id: &str) -> Result<ListedVolume> {
        Err(unsupported(&self.name, "ControllerGetVolume"))
    }

    async fn list_volumes(&self, _token: Option<&str>, _max: u32) -> Result<VolumePage> {
        Err(unsupported(&self.name, "ListVolumes"))
    }

    async fn marked_volumes(&self) -> Result<Vec<MarkedVolume>> {
        self.marked().await
    }

    async fn probe(&self) -> Result<()> {
        // Without keys of its own the backend only works with per-volume secrets: nothing to ask.
        let Ok(c) = self.s3.client(None) else {
            return Ok(());
        };
        let call = c.list_buckets().max_buckets(1).send();
        match self.s3.observed("ListBuckets", call).await {
            Ok(_) => Ok(()),
            Err(e) => match crate::s3::s3_error("ListBuckets (probe)", e) {
                // The endpoint answered; these keys may just not list buckets.
                Error::PermissionDenied(_) => Ok(()),
                other => Err(other),
            },
        }
    }
}
