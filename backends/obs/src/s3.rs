//! The S3 API as the controller uses it, through `aws-sdk-s3`: the client built from the
//! backend table (endpoint, region, path style, CA file, credentials), the few calls the
//! controller makes, and the one place an S3 error becomes an [`Error`]. The SDK retries
//! throttling, 5xx and timeouts itself (standard mode, capped exponential backoff with jitter).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Delete, ObjectIdentifier, Tag, Tagging,
};
use everest_backend::daemon::cloud_calls;
use everest_backend::{Error, Result};

use crate::config::ObsConfig;
use crate::credentials::S3Keys;

/// Builds clients for one backend instance: with its own keys, or a volume's.
#[derive(Debug, Clone)]
pub struct S3 {
    /// The backend instance, as the `backend` label of the call metrics.
    name: String,
    base: aws_sdk_s3::config::Builder,
    region: String,
    /// Where bucket volumes' marks go on a service without bucket tagging: one object per
    /// volume bucket, outside every bucket a pod mounts.
    mark_bucket: String,
    keys: Option<S3Keys>,
}

impl S3 {
    /// Checks the table's TLS settings and reads its credentials file, without any request.
    pub fn new(name: &str, cfg: &ObsConfig) -> Result<Self> {
        let keys = cfg
            .credentials_file
            .as_deref()
            .map(S3Keys::from_file)
            .transpose()
            .map_err(|e| e.context(format!("backend {name} (kind obs)")))?;
        let mut base = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(cfg.endpoint.trim_end_matches('/'))
            .region(Region::new(cfg.region.clone()))
            .force_path_style(cfg.path_style)
            // Many S3-compatible services do not know the newer default checksums; send and
            // check them only where the API requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ca) = &cfg.ca_file {
            let bad = |what: String| {
                Error::InvalidArgument(format!(
                    "backend {name} (kind obs): ca_file {}: {what}",
                    ca.display()
                ))
            };
            let pem = std::fs::read(ca).map_err(|e| bad(format!("cannot read: {e}")))?;
            use aws_smithy_http_client::tls;
            let context = tls::TlsContext::builder()
                .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let client = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(context)
                .build_https();
            base = base.http_client(client);
        }
        Ok(Self {
            name: name.to_owned(),
            base,
            region: cfg.region.clone(),
            mark_bucket: mark_bucket(&cfg.bucket_prefix),
            keys,
        })
    }

    /// A client with `keys` (a volume's secrets) or else the backend's own.
    pub fn client(&self, keys: Option<&S3Keys>) -> Result<Client> {
        let keys = keys.or(self.keys.as_ref()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no S3 credentials: set credentials_file in the backend table, or give the provisioner secrets {} and {} (csi.storage.k8s.io/provisioner-secret-name)",
                crate::credentials::ACCESS_KEY_SECRET,
                crate::credentials::SECRET_KEY_SECRET
            ))
        })?;
        let creds = Credentials::new(
            keys.access_key.clone(),
            keys.secret_key.clone(),
            None,
            None,
            "everest-obs",
        );
        Ok(Client::from_conf(
            self.base.clone().credentials_provider(creds).build(),
        ))
    }

    /// Whether `bucket` exists (and these keys may see it).
    pub async fn bucket_exists(&self, c: &Client, bucket: &str) -> Result<bool> {
        match self
            .observed("HeadBucket", c.head_bucket().bucket(bucket).send())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(s3_error(format_args!("HeadBucket {bucket}"), e)),
        }
    }

    /// Creates `bucket`; one these keys already own is success.
    pub async fn create_bucket(&self, c: &Client, bucket: &str) -> Result<()> {
        let mut req = c.create_bucket().bucket(bucket);
        // us-east-1 is the one region that takes no location constraint.
        if self.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match self.observed("CreateBucket", req.send()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(s3_error(format_args!("CreateBucket {bucket}"), e)),
        }
    }

    /// The mark Everest keeps on a bucket volume (keys such as `everest-created-by`;
    /// none is an empty map): the bucket's tags, or on a service without bucket tagging (Garage
    /// answers NotImplemented) the metadata of the object named after the bucket in the mark
    /// bucket ([`mark_bucket`]), which no pod mounts, so no workload can delete it.
    pub async fn bucket_mark(&self, c: &Client, bucket: &str) -> Result<BTreeMap<String, String>> {
        if let Some(tags) = self.bucket_tags(c, bucket).await? {
            return Ok(tags);
        }
        if !self.bucket_exists(c, &self.mark_bucket).await? {
            return Ok(BTreeMap::new());
        }
        Ok(self
            .object_metadata(c, &self.mark_bucket, bucket)
            .await?
            .unwrap_or_default())
    }

    /// Writes the mark [`S3::bucket_mark`] reads, replacing the one there.
    pub async fn put_bucket_mark(
        &self,
        c: &Client,
        bucket: &str,
        mark: &BTreeMap<String, String>,
    ) -> Result<()> {
        if self.put_bucket_tags(c, bucket, mark).await? {
            return Ok(());
        }
        self.create_bucket(c, &self.mark_bucket).await?;
        // The mark's keys are lowercase ASCII (`everest-…`), so they serve as metadata keys as
        // they are.
        self.put_marker(c, &self.mark_bucket, bucket, mark).await
    }

    /// Removes a bucket volume's mark kept in the mark bucket (tags go with their bucket); one
    /// that is not there is fine.
    pub async fn forget_bucket_mark(&self, c: &Client, bucket: &str) -> Result<()> {
        if !self.bucket_exists(c, &self.mark_bucket).await? {
            return Ok(());
        }
        let call = c
            .delete_object()
            .bucket(&self.mark_bucket)
            .key(bucket)
            .send();
        match self.observed("DeleteObject", call).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(s3_error(
                format_args!("DeleteObject {}/{bucket}", self.mark_bucket),
                e,
            )),
        }
    }

    /// The bucket's tags (none is an empty map); `None` when the service has no bucket tagging.
    async fn bucket_tags(
        &self,
        c: &Client,
        bucket: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        match self
            .observed(
                "GetBucketTagging",
                c.get_bucket_tagging().bucket(bucket).send(),
            )
            .await
        {
            Ok(out) => Ok(Some(
                out.tag_set()
                    .iter()
                    .map(|t| (t.key().to_owned(), t.value().to_owned()))
                    .collect(),
            )),
            Err(e) if e.code() == Some("NoSuchTagSet") => Ok(Some(BTreeMap::new())),
            Err(e) if not_implemented(&e) => Ok(None),
            Err(e) => Err(s3_error(format_args!("GetBucketTagging {bucket}"), e)),
        }
    }

    /// Replaces the bucket's tags; `false` when the service has no bucket tagging.
    async fn put_bucket_tags(
        &self,
        c: &Client,
        bucket: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("bucket tags for {bucket}: {e}")))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(|e| Error::Internal(format!("bucket tags for {bucket}: {e}")))?;
        let call = c
            .put_bucket_tagging()
            .bucket(bucket)
            .tagging(tagging)
            .send();
        match self.observed("PutBucketTagging", call).await {
            Ok(_) => Ok(true),
            Err(e) if not_implemented(&e) => Ok(false),
            Err(e) => Err(s3_error(format_args!("PutBucketTagging {bucket}"), e)),
        }
    }

    /// Removes the (empty) bucket; one already gone is success.
    pub async fn delete_bucket(&self, c: &Client, bucket: &str) -> Result<()> {
        match self
            .observed("DeleteBucket", c.delete_bucket().bucket(bucket).send())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchBucket") || status(&e) == Some(404) => Ok(()),
            Err(e) => Err(s3_error(format_args!("DeleteBucket {bucket}"), e)),
        }
    }

    /// Whether any object's key starts with `prefix`.
    pub async fn has_objects(&self, c: &Client, bucket: &str, prefix: &str) -> Result<bool> {
        let call = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(1)
            .send();
        let out = self
            .observed("ListObjectsV2", call)
            .await
            .map_err(|e| s3_error(format_args!("ListObjectsV2 {bucket}/{prefix}"), e))?;
        Ok(!out.contents().is_empty())
    }

    /// Deletes every object whose key starts with `prefix` except `keep`, a page (up to 1000)
    /// at a time; how many were deleted.
    pub async fn delete_all(
        &self,
        c: &Client,
        bucket: &str,
        prefix: &str,
        keep: Option<&str>,
    ) -> Result<usize> {
        let mut deleted = 0;
        let mut token: Option<String> = None;
        loop {
            let call = c
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send();
            let page = self
                .observed("ListObjectsV2", call)
                .await
                .map_err(|e| s3_error(format_args!("ListObjectsV2 {bucket}/{prefix}"), e))?;
            let keys = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|k| Some(*k) != keep)
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Internal(format!("deleting from {bucket}: {e}")))?;
            if !keys.is_empty() {
                deleted += self.delete_keys(c, bucket, keys).await?;
            }
            // Continuation tokens stay valid while the listed keys are deleted.
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => return Ok(deleted),
            }
        }
    }

    async fn delete_keys(
        &self,
        c: &Client,
        bucket: &str,
        keys: Vec<ObjectIdentifier>,
    ) -> Result<usize> {
        let n = keys.len();
        let delete = Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()
            .map_err(|e| Error::Internal(format!("deleting from {bucket}: {e}")))?;
        let call = c.delete_objects().bucket(bucket).delete(delete).send();
        let out = self
            .observed("DeleteObjects", call)
            .await
            .map_err(|e| s3_error(format_args!("DeleteObjects {bucket}"), e))?;
        if let Some(failed) = out.errors().first() {
            return Err(Error::Unavailable(format!(
                "DeleteObjects {bucket}: {} of {n} objects were not deleted, e.g. {:?}: {} {}; retry",
                out.errors().len(),
                failed.key().unwrap_or_default(),
                failed.code().unwrap_or_default(),
                failed.message().unwrap_or_default()
            )));
        }
        Ok(n)
    }

    /// The user metadata of the object `key`, or `None` when there is none.
    pub async fn object_metadata(
        &self,
        c: &Client,
        bucket: &str,
        key: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        Ok(self.object_head(c, bucket, key).await?.map(|(m, _)| m))
    }

    /// The user metadata of the object `key` and when it was last written, or `None` when
    /// there is no such object.
    pub async fn object_head(
        &self,
        c: &Client,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(BTreeMap<String, String>, Option<SystemTime>)>> {
        match self
            .observed("HeadObject", c.head_object().bucket(bucket).key(key).send())
            .await
        {
            Ok(out) => Ok(Some((
                out.metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                out.last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
            ))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(s3_error(format_args!("HeadObject {bucket}/{key}"), e)),
        }
    }

    /// Every bucket these keys own, with its creation time when the service says.
    pub async fn list_buckets(&self, c: &Client) -> Result<Vec<(String, Option<SystemTime>)>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let call = c.list_buckets().set_continuation_token(token.take()).send();
            let page = self
                .observed("ListBuckets", call)
                .await
                .map_err(|e| s3_error("ListBuckets", e))?;
            all.extend(page.buckets().iter().filter_map(|b| {
                let created = b
                    .creation_date()
                    .and_then(|t| SystemTime::try_from(*t).ok());
                Some((b.name()?.to_owned(), created))
            }));
            match page.continuation_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(all),
            }
        }
    }

    /// The first-level prefixes of a bucket (`name/`), as a `/`-delimited listing shows them.
    pub async fn top_prefixes(&self, c: &Client, bucket: &str) -> Result<Vec<String>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let call = c
                .list_objects_v2()
                .bucket(bucket)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send();
            let page = self
                .observed("ListObjectsV2", call)
                .await
                .map_err(|e| s3_error(format_args!("ListObjectsV2 {bucket}"), e))?;
            all.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => return Ok(all),
            }
        }
    }

    /// Writes an empty object `key` with `metadata`.
    pub async fn put_marker(
        &self,
        c: &Client,
        bucket: &str,
        key: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let call = c
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .body(Vec::new().into())
            .send();
        self.observed("PutObject", call)
            .await
            .map(drop)
            .map_err(|e| s3_error(format_args!("PutObject {bucket}/{key}"), e))
    }
}

impl S3 {
    /// Runs one S3 call and counts it in the cloud call metrics (`service="s3"`), with the
    /// HTTP status of a failure, `2xx` for a success, `error` when no answer came.
    pub async fn observed<T, E>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    ) -> std::result::Result<T, SdkError<E, HttpResponse>> {
        let started = std::time::Instant::now();
        let out = everest_backend::outside::outside(call).await;
        let status = match &out {
            Ok(_) => "2xx".to_owned(),
            Err(e) => status(e).map_or_else(|| "error".to_owned(), |s| s.to_string()),
        };
        cloud_calls::record(&self.name, "s3", operation, &status, started.elapsed());
        out
    }
}

/// The bucket that holds bucket volumes' marks on a service without bucket tagging:
/// `<bucket_prefix>-volumes` (volume buckets always end in a hash, so never collide with it).
pub fn mark_bucket(bucket_prefix: &str) -> String {
    format!("{bucket_prefix}-volumes")
}

/// A call the service does not implement (Garage has no bucket tagging).
fn not_implemented<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    e.code() == Some("NotImplemented") || status(e) == Some(501)
}

fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The one mapping of an S3 failure to an [`Error`]: the S3 code and message are kept, the
/// class decides what the CO does (retry, or give up and report).
pub fn s3_error<E>(what: impl Display, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().unwrap_or_default().to_owned();
    let http = status(&e);
    let text = format!("{what}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::TimeoutError(_) => return Error::DeadlineExceeded(text),
        SdkError::DispatchFailure(_) => {
            return Error::Unavailable(format!("{text} (is the S3 endpoint reachable?)"));
        }
        _ => {}
    }
    match code.as_str() {
        "NoSuchBucket" | "NoSuchKey" => Error::NotFound(text),
        "BucketAlreadyExists" => Error::AlreadyExists(text),
        "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => {
            Error::Unauthenticated(text)
        }
        "AccessDenied" | "AllAccessDisabled" => Error::PermissionDenied(text),
        "InvalidBucketName" | "InvalidArgument" => Error::InvalidArgument(text),
        "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => {
            Error::ResourceExhausted(text)
        }
        "TooManyBuckets" => Error::ResourceExhausted(text),
        _ => match http {
            Some(404) => Error::NotFound(text),
            Some(401) => Error::Unauthenticated(text),
            Some(403) => Error::PermissionDenied(text),
            Some(429) => Error::ResourceExhausted(text),
            Some(s) if s >= 500 => Error::Unavailable(text),
            _ => Error::Internal(text),
        },
    }
}
