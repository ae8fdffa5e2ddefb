//! PVC annotations: a StorageClass may let the claims that use it override some of its
//! parameters with `everest.io/*` annotations (disk type, IOPS, encryption key, …).
//!
//! The StorageClass parameter [`ALLOWED_KEY`] lists the keys a claim may set, so a namespace
//! user can only choose what the cluster admin allowed. Without it the controller never asks
//! the API server (clusters that give it no RBAC keep working) and annotations are ignored.
//! With it, CreateVolume reads the claim once (`get`, no watch, no cache) and:
//! - an `everest.io/*` annotation that is not listed, or whose value is malformed, fails the
//!   call with INVALID_ARGUMENT naming the annotation and the claim;
//! - other annotations are none of Everest's business and are ignored;
//! - the API server unreachable or answering an error gives UNAVAILABLE (the provisioner
//!   retries), never a volume made with the class's settings instead of the claim's;
//! - the API server refusing the controller (401, 403: credentials or RBAC) gives
//!   FAILED_PRECONDITION naming the fix, final for the reason below;
//! - a claim that does not exist gives FAILED_PRECONDITION, a final answer: csi-provisioner
//!   keeps retrying calls that failed UNAVAILABLE or ABORTED even after the claim is deleted,
//!   and a deleted claim will never appear again.
//!
//! See `docs/annotations.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use everest_backend::Error;
use everest_backend::backend::CreateVolume;
use everest_backend::daemon::config::{ControllerSection, KubernetesAccess};
use everest_backend::params::{BACKEND_KEY, K8sMeta};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;

/// The StorageClass parameter listing the annotations a claim may set, comma separated.
pub const ALLOWED_KEY: &str = "everest.io/allowed-pvc-annotations";
/// Annotations with this prefix are Everest's; all others are ignored.
const PREFIX: &str = "everest.io/";
/// How long one read of a claim may take before CreateVolume answers UNAVAILABLE.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The annotation keys a StorageClass lets its claims set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist(BTreeSet<String>);

impl Allowlist {
    /// Takes [`ALLOWED_KEY`] out of the StorageClass parameters (no backend knows it) and
    /// parses it; `None` when the class allows no annotations.
    pub fn take(
        params: &mut BTreeMap<String, String>,
        mutable_keys: &[String],
    ) -> Result<Option<Self>, Error> {
        if mutable_keys.iter().any(|k| k == ALLOWED_KEY) {
            return Err(Error::InvalidArgument(format!(
                "{ALLOWED_KEY} is a StorageClass parameter, not a VolumeAttributesClass one"
            )));
        }
        params
            .remove(ALLOWED_KEY)
            .map(|v| Self::parse(&v))
            .transpose()
    }

    /// Parses the comma-separated list. An empty list is allowed: the claim is read, and any
    /// `everest.io/*` annotation on it is refused rather than silently ignored.
    fn parse(value: &str) -> Result<Self, Error> {
        let bad = |why: String| {
            Error::InvalidArgument(format!("StorageClass parameter {ALLOWED_KEY}: {why}"))
        };
        let mut keys = BTreeSet::new();
        for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            if !is_everest_key(key) {
                return Err(bad(format!(
                    "{key:?} is not an {PREFIX}<name> key; only Everest's own parameters can be allowed"
                )));
            }
            // The backend instance is routed on before the claim is read, and the allowlist
            // itself is the admin's: neither is a claim's to choose.
            if key == BACKEND_KEY || key == ALLOWED_KEY {
                return Err(bad(format!("{key} cannot be set by a PVC annotation")));
            }
            keys.insert(key.to_owned());
        }
        Ok(Self(keys))
    }

    /// Whether a claim may set `key`.
    fn allows(&self, key: &str) -> bool {
        self.0.contains(key)
    }
}

impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let keys: Vec<&str> = self.0.iter().map(String::as_str).collect();
        f.write_str(&keys.join(", "))
    }
}

fn is_everest_key(key: &str) -> bool {
    key.strip_prefix(PREFIX).is_some_and(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    })
}

/// The claim a volume is provisioned for, as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
}

impl ClaimRef {
    /// The claim named by csi-provisioner's `--extra-create-metadata` parameters.
    pub fn from_meta(meta: &K8sMeta) -> Result<Self, Error> {
        match (&meta.pvc_namespace, &meta.pvc_name) {
            (Some(namespace), Some(name)) if !namespace.is_empty() && !name.is_empty() => {
                Ok(Self {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
            }
            _ => Err(Error::FailedPrecondition(format!(
                "the StorageClass sets {ALLOWED_KEY}, but the request names no PVC: run csi-provisioner with --extra-create-metadata"
            ))),
        }
    }
}

impl fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Merges the claim's allowed `everest.io/*` annotations into `params` (they win over the
/// StorageClass's), returning the keys it set. Refuses an annotation that is not allowed, is
/// malformed, or names a key the VolumeAttributesClass sets (two owners for one setting).
pub fn merge(
    allowed: &Allowlist,
    claim: &ClaimRef,
    annotations: &BTreeMap<String, String>,
    mutable_keys: &[String],
    params: &mut BTreeMap<String, String>,
) -> Result<Vec<String>, Error> {
    let refuse = |key: &str, why: String| {
        Error::InvalidArgument(format!("PVC {claim}: annotation {key}: {why}"))
    };
    let mut set = Vec::new();
    for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
        if !allowed.allows(key) {
            return Err(refuse(
                key,
                format!(
                    "not allowed by the StorageClass ({ALLOWED_KEY} lists: {allowed}); remove the annotation or ask the cluster admin to allow it"
                ),
            ));
        }
        if mutable_keys.iter().any(|k| k == key) {
            return Err(refuse(
                key,
                "the claim's VolumeAttributesClass sets it too; keep one of the two".into(),
            ));
        }
        if let Some(why) = malformed(value) {
            return Err(refuse(key, why));
        }
        params.insert(key.clone(), value.clone());
        set.push(key.clone());
    }
    Ok(set)
}

/// Why a value cannot be a parameter, if it cannot. The backend still parses the value itself
/// (a number, a known type); this catches what no parameter can be.
fn malformed(value: &str) -> Option<String> {
    if value.trim().is_empty() {
        Some("the value is empty".into())
    } else if value.trim() != value {
        Some(format!(
            "the value {value:?} has leading or trailing spaces"
        ))
    } else if value.chars().any(char::is_control) {
        Some(format!("the value {value:?} holds control characters"))
    } else {
        None
    }
}

/// Reads claims from the Kubernetes API, one `get` each time it is asked.
#[derive(Clone)]
pub struct ClaimReader {
    /// The client, or why there is none (the message CreateVolume answers with).
    client: Result<kube::Client, String>,
}

impl fmt::Debug for ClaimReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.client {
            Ok(_) => f.write_str("ClaimReader(connected)"),
            Err(why) => write!(f, "ClaimReader(unavailable: {why})"),
        }
    }
}

impl ClaimReader {
    /// A reader as the `[controller]` section says. In-cluster settings that cannot be found
    /// (the controller runs outside a cluster) are not an error at start: only a StorageClass
    /// that allows annotations needs them, and its CreateVolume says what is missing. A
    /// kubeconfig that cannot be read is a configuration error.
    pub async fn from_config(section: &ControllerSection) -> Result<Self, Error> {
        let config = match (section.kubernetes, &section.kubeconfig) {
            (KubernetesAccess::Off, _) => {
                return Ok(Self::none(
                    "controller.kubernetes = \"off\" in the controller configuration",
                ));
            }
            (KubernetesAccess::InCluster, _) => match kube::Config::incluster() {
                Ok(c) => c,
                Err(e) => {
                    let why = format!(
                        "controller.kubernetes = \"in-cluster\", but the in-cluster settings cannot be read ({e})"
                    );
                    tracing::warn!("{why}; StorageClasses that allow PVC annotations will fail");
                    return Ok(Self::none(why));
                }
            },
            (KubernetesAccess::Kubeconfig, path) => {
                let path = path.as_ref().ok_or_else(|| {
                    Error::InvalidArgument("configuration: controller.kubeconfig is unset".into())
                })?;
                let bad = |e: &dyn fmt::Display| {
                    Error::InvalidArgument(format!(
                        "configuration: controller.kubeconfig {}: {e}",
                        path.display()
                    ))
                };
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| bad(&e))?
            }
        };
        Self::connect(config)
    }

    /// Checks without connecting what [`Self::from_config`] would refuse (for
    /// `--check-config`): a kubeconfig file that cannot be read or parsed.
    pub fn check(section: &ControllerSection) -> Result<(), Error> {
        section.validate()?;
        if let (KubernetesAccess::Kubeconfig, Some(path)) =
            (section.kubernetes, &section.kubeconfig)
        {
            kube::config::Kubeconfig::read_from(path).map_err(|e| {
                Error::InvalidArgument(format!(
                    "configuration: controller.kubeconfig {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }

    /// A reader over `config`, with exactly one request per read: the client's own retries
    /// are off (csi-provisioner retries the whole call).
    fn connect(mut config: kube::Config) -> Result<Self, Error> {
        config.default_retry = false;
        config.connect_timeout = Some(READ_TIMEOUT);
        let client = kube::Client::try_from(config).map_err(|e| {
            Error::InvalidArgument(format!("configuration: the Kubernetes client: {e}"))
        })?;
        Ok(Self { client: Ok(client) })
    }

    /// A reader that refuses every read, saying `why`.
    pub fn none(why: impl Into<String>) -> Self {
        Self {
            client: Err(why.into()),
        }
    }

    /// The claim's annotations, read from the API server now.
    pub async fn annotations(&self, claim: &ClaimRef) -> Result<BTreeMap<String, String>, Error> {
        let client = self.client.as_ref().map_err(|why| {
            Error::FailedPrecondition(format!(
                "the StorageClass sets {ALLOWED_KEY}, so PVC {claim} must be read, but the Kubernetes API is not available: {why}"
            ))
        })?;
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
        let read = everest_backend::outside::outside(tokio::time::timeout(
            READ_TIMEOUT,
            api.get(&claim.name),
        ))
        .await;
        let pvc = match read {
            Ok(Ok(pvc)) => pvc,
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                return Err(Error::FailedPrecondition(format!(
                    "PVC {claim} does not exist (deleted while it was being provisioned?); no volume was made"
                )));
            }
            // Refused credentials or missing RBAC: final (as a gone claim), since no retry
            // mends it and an UNAVAILABLE would keep the provisioner calling after the claim is
            // deleted; while the claim exists the provisioner retries anyway.
            Ok(Err(kube::Error::Api(status))) if matches!(status.code, 401 | 403) => {
                return Err(Error::FailedPrecondition(format!(
                    "the Kubernetes API refused to let the controller read PVC {claim} (HTTP {} {}: {}): its credentials must be valid and allow `get` on persistentvolumeclaims (docs/annotations.md, RBAC); no volume was made",
                    status.code, status.reason, status.message
                )));
            }
            Ok(Err(kube::Error::Api(status))) => {
                return Err(Error::Unavailable(format!(
                    "reading PVC {claim} from the Kubernetes API for its annotations failed: HTTP {} {}: {}; no volume was made, retry later",
                    status.code, status.reason, status.message
                )));
            }
            Ok(Err(e)) => {
                return Err(Error::Unavailable(format!(
                    "reading PVC {claim} from the Kubernetes API for its annotations failed: {e}; no volume was made, retry later"
                )));
            }
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "reading PVC {claim} from the Kubernetes API took over {}s; no volume was made, retry later",
                    READ_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(pvc.metadata.annotations.unwrap_or_default())
    }
}

/// What a claim's annotations changed in a CreateVolume, to explain the backend's refusal.
#[derive(Debug)]
pub struct Applied {
    claim: ClaimRef,
    keys: Vec<String>,
}

impl Applied {
    /// Names the claim and its annotations in a parameter error from the backend, which only
    /// knows the parameter (`everest.io/disk-iops: invalid digit`), not where it came from.
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::InvalidArgument(_) if !self.keys.is_empty() => e.context(format!(
                "with annotations {} of PVC {}",
                self.keys.join(", "),
                self.claim
            )),
            other => other,
        }
    }
}

impl ClaimReader {
    /// Reads the claim of `create` and merges its allowed annotations into its parameters, when
    /// the StorageClass allows any (`allowed`); does nothing, and asks nothing, otherwise.
    pub async fn apply(
        &self,
        allowed: Option<&Allowlist>,
        create: &mut CreateVolume,
        mutable_keys: &[String],
    ) -> Result<Option<Applied>, Error> {
        let Some(allowed) = allowed else {
            return Ok(None);
        };
        let claim = ClaimRef::from_meta(&create.common.k8s)?;
        let annotations = self.annotations(&claim).await?;
        let keys = merge(
            allowed,
            &claim,
            &annotations,
            mutable_keys,
            &mut create.parameters,
        )?;
        if !keys.is_empty() {
            tracing::info!(pvc = %claim, annotations = ?keys, "parameters set by PVC annotations");
        }
        Ok(Some(Applied { claim, keys }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn claim() -> ClaimRef {
        ClaimRef {
            namespace: "team-a".into(),
            name: "data".into(),
        }
    }

    fn allow(list: &str) -> Allowlist {
        Allowlist::parse(list).unwrap()
    }

    #[test]
    fn the_allowlist_is_taken_out_of_the_parameters() {
        let mut params = map(&[
            (
                ALLOWED_KEY,
                " everest.io/disk-iops , everest.io/disk-volume-type,",
            ),
            ("everest.io/disk-volume-type", "SAS"),
        ]);
        let list = Allowlist::take(&mut params, &[]).unwrap().unwrap();
        assert_eq!(
            list.to_string(),
            "everest.io/disk-iops, everest.io/disk-volume-type"
        );
        assert_eq!(params, map(&[("everest.io/disk-volume-type", "SAS")]));
        assert_eq!(Allowlist::take(&mut params, &[]).unwrap(), None);
        let mut params = map(&[(ALLOWED_KEY, "")]);
        assert_eq!(
            Allowlist::take(&mut params, &[])
                .unwrap()
                .unwrap()
                .to_string(),
            "none"
        );
    }

    #[test]
    fn the_allowlist_names_only_everest_keys_a_claim_may_own() {
        for (list, says) in [
            ("csi.storage.k8s.io/fstype", "not an everest.io/<name> key"),
            ("everest.io/", "not an everest.io/<name> key"),
            ("everest.io/disk type", "not an everest.io/<name> key"),
            (BACKEND_KEY, "cannot be set by a PVC annotation"),
            (ALLOWED_KEY, "cannot be set by a PVC annotation"),
        ] {
            let err = Allowlist::parse(list).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{list}");
            assert!(err.to_string().contains(says), "{list}: {err}");
            assert!(err.to_string().contains(ALLOWED_KEY), "{err}");
        }
        let mut params = map(&[(ALLOWED_KEY, "everest.io/disk-iops")]);
        let err = Allowlist::take(&mut params, &[ALLOWED_KEY.to_owned()]).unwrap_err();
        assert!(err.to_string().contains("VolumeAttributesClass"), "{err}");
    }

    #[test]
    fn allowed_annotations_override_the_class_and_others_are_ignored() {
        let mut params = map(&[
            ("everest.io/disk-volume-type", "SSD"),
            ("everest.io/disk-iops", "3000"),
        ]);
        let annotations = map(&[
            ("everest.io/disk-volume-type", "GPSSD"),
            ("volume.kubernetes.io/storage-provisioner", "everest.csi.io"),
            ("team.example.com/owner", "alice"),
        ]);
        let set = merge(
            &allow("everest.io/disk-volume-type,everest.io/disk-iops"),
            &claim(),
            &annotations,
            &[],
            &mut params,
        )
        .unwrap();
        assert_eq!(set, ["everest.io/disk-volume-type"]);
        assert_eq!(
            params,
            map(&[
                ("everest.io/disk-volume-type", "GPSSD"),
                ("everest.io/disk-iops", "3000"),
            ])
        );
    }

    #[test]
    fn refusals_name_the_annotation_and_the_claim() {
        let cases = [
            (
                "everest.io/disk-iops",
                ("everest.io/crypt-key-id", "k1"),
                vec![],
                "not allowed by the StorageClass (everest.io/allowed-pvc-annotations lists: everest.io/disk-iops)",
            ),
            ("", ("everest.io/disk-iops", "1"), vec![], "lists: none"),
            (
                "everest.io/disk-iops",
                ("everest.io/disk-iops", " "),
                vec![],
                "empty",
            ),
            (
                "everest.io/disk-iops",
                ("everest.io/disk-iops", " 5"),
                vec![],
                "spaces",
            ),
            (
                "everest.io/disk-iops",
                ("everest.io/disk-iops", "5\n"),
                vec![],
                "spaces",
            ),
            (
                "everest.io/disk-iops",
                ("everest.io/disk-iops", "5\u{7}"),
                vec![],
                "control",
            ),
            (
                "everest.io/disk-iops",
                ("everest.io/disk-iops", "5"),
                vec!["everest.io/disk-iops".to_owned()],
                "VolumeAttributesClass",
            ),
        ];
        for (list, (key, value), mutable, says) in cases {
            let mut params = BTreeMap::new();
            let err = merge(
                &allow(list),
                &claim(),
                &map(&[(key, value)]),
                &mutable,
                &mut params,
            )
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}={value:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("PVC team-a/data: annotation {key}: ")),
                "{msg}"
            );
            assert!(msg.contains(says), "{key}={value:?}: {msg}");
            assert!(params.is_empty(), "nothing is merged from a refused claim");
        }
    }

    #[test]
    fn a_claim_must_be_named_by_the_provisioner() {
        let meta = K8sMeta {
            pv_name: Some("pvc-1".into()),
            pvc_name: Some("data".into()),
            pvc_namespace: Some("team-a".into()),
        };
        assert_eq!(ClaimRef::from_meta(&meta).unwrap(), claim());
        for meta in [
            K8sMeta::default(),
            K8sMeta {
                pvc_namespace: Some(String::new()),
                ..meta
            },
        ] {
            let err = ClaimRef::from_meta(&meta).unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
            assert!(err.to_string().contains("--extra-create-metadata"), "{err}");
        }
    }

    #[tokio::test]
    async fn without_an_api_the_read_fails_before_any_volume() {
        let err = ClaimReader::none("controller.kubernetes = \"off\"")
            .annotations(&claim())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("PVC team-a/data"), "{err}");
        assert!(err.to_string().contains("\"off\""), "{err}");
    }
}
