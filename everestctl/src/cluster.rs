//! The Kubernetes API calls `everestctl` makes, each one request (the client's own retries are
//! off: a command that fails says so, and running it again is always safe).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// A connection to the cluster's API server.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cluster")
    }
}

impl Cluster {
    /// Connects with the kubeconfig at `path`, or the usual places (`KUBECONFIG`,
    /// `~/.kube/config`, the in-cluster service account) when there is none.
    pub async fn connect(path: Option<&Path>) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| Error::Kubeconfig(e.to_string());
        let mut config = match path {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| bad(&e))?
            }
            None => kube::Config::infer().await.map_err(|e| bad(&e))?,
        };
        config.default_retry = false;
        config.connect_timeout = Some(Duration::from_secs(10));
        let client = Client::try_from(config).map_err(|e| bad(&e))?;
        Ok(Self { client })
    }

    fn cluster_api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>,
        K::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    async fn list<K>(&self, api: Api<K>, what: &str) -> Result<Vec<K>>
    where
        K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| Error::kube(format!("listing {what}"), e))
    }

    /// Every PersistentVolume.
    pub async fn persistent_volumes(&self) -> Result<Vec<PersistentVolume>> {
        self.list(self.cluster_api(), "PersistentVolumes").await
    }

    /// Every PersistentVolumeClaim, in all namespaces.
    pub async fn claims(&self) -> Result<Vec<PersistentVolumeClaim>> {
        self.list(Api::all(self.client.clone()), "PersistentVolumeClaims")
            .await
    }

    /// Every Pod, in all namespaces.
    pub async fn pods(&self) -> Result<Vec<Pod>> {
        self.list(Api::all(self.client.clone()), "Pods").await
    }

    /// Every VolumeAttachment.
    pub async fn volume_attachments(&self) -> Result<Vec<VolumeAttachment>> {
        self.list(self.cluster_api(), "VolumeAttachments").await
    }

    /// Every Node.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.list(self.cluster_api(), "Nodes").await
    }

    /// One StorageClass.
    pub async fn storage_class(&self, name: &str) -> Result<StorageClass> {
        self.cluster_api::<StorageClass>()
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("reading StorageClass {name}"), e))
    }

    /// One PersistentVolume, `None` when there is none.
    pub async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>> {
        self.cluster_api::<PersistentVolume>()
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("reading PersistentVolume {name}"), e))
    }

    /// One claim, `None` when there is none.
    pub async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| {
                Error::kube(
                    format!("reading PersistentVolumeClaim {namespace}/{name}"),
                    e,
                )
            })
    }

    /// Applies a JSON merge patch to a PersistentVolume. A `metadata.resourceVersion` in the
    /// patch makes the API server refuse it if the volume changed since it was read.
    pub async fn patch_persistent_volume(
        &self,
        name: &str,
        patch: &Value,
    ) -> Result<PersistentVolume> {
        self.cluster_api::<PersistentVolume>()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| Error::kube(format!("patching PersistentVolume {name}"), e))
    }

    /// Applies a JSON merge patch to a claim.
    pub async fn patch_claim(
        &self,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| {
                Error::kube(
                    format!("patching PersistentVolumeClaim {namespace}/{name}"),
                    e,
                )
            })
    }

    /// Deletes the PersistentVolume `name` only if it is still the object with `uid` at
    /// `resource_version` (the API server checks both).
    pub async fn delete_persistent_volume(
        &self,
        name: &str,
        uid: &str,
        resource_version: &str,
    ) -> Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: Some(resource_version.to_owned()),
            }),
            ..DeleteParams::default()
        };
        match self
            .cluster_api::<PersistentVolume>()
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::kube(format!("deleting PersistentVolume {name}"), e)),
        }
    }

    /// Creates a PersistentVolume; `Ok(None)` when one of that name already exists.
    pub async fn create_persistent_volume(
        &self,
        pv: &PersistentVolume,
    ) -> Result<Option<PersistentVolume>> {
        let name = pv.metadata.name.clone().unwrap_or_default();
        match self
            .cluster_api::<PersistentVolume>()
            .create(&PostParams::default(), pv)
            .await
        {
            Ok(created) => Ok(Some(created)),
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => Ok(None),
            Err(e) => Err(Error::kube(format!("creating PersistentVolume {name}"), e)),
        }
    }
}
