//! Mode `share`: an SFS Turbo share per volume. CreateVolume finds the share by its name (the
//! API has no idempotency token, and the name is unique in a project) or creates it, then waits
//! until it is available; DeleteVolume deletes it and waits until it is gone; expansion grows
//! it by at least the API's minimum step. A share whose creation failed is deleted again, so a
//! failed create leaks nothing and the provisioner's retry starts afresh.

use std::collections::BTreeMap;

use everest_backend::backend::{CreateVolume, Expanded, MarkedVolume, Volume};
use everest_backend::capacity::{CapacityRange, GIB};
use everest_backend::marker::{DeletePolicy, Marker, Owner, SFS_TURBO_TAGS};
use everest_backend::{BackendName, Error, Result};

use crate::EXPORT_CONTEXT_KEY;
use crate::config::ShareConfig;
use crate::params::ShareParams;
use crate::turbo::{
    MAX_SIZE_GIB, MIN_EXTEND_STEP_GIB, MIN_SIZE_GIB, NewShare, Share, ShareClient, status,
};
use crate::volume::{OnDelete, ShareVolume};

/// The description of every share Everest creates, for people reading the console. The API
/// does not show it back: what tells Everest's shares apart is the marker in the share's tags.
const DESCRIPTION: &str = "Kubernetes volume provisioned by Everest: ";

/// The SFS Turbo side of one `sfs` instance.
#[derive(Debug)]
pub struct Shares {
    client: ShareClient,
    config: ShareConfig,
    /// The instance name, for messages and the marker.
    backend: BackendName,
}

/// The share name for a CreateVolume name: the name itself when the API takes it (4–64
/// characters, a letter first, then letters, digits, `-`, `_`; the provisioner's `pvc-<uuid>`
/// does), else a stable name derived from it.
pub fn share_name(request_name: &str) -> String {
    let len = request_name.len();
    let fits = (4..=64).contains(&len)
        && request_name.starts_with(|c: char| c.is_ascii_alphabetic())
        && request_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fits {
        request_name.to_owned()
    } else {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, request_name.as_bytes());
        format!("everest-{id}")
    }
}

impl Shares {
    /// Shares through `client`, placed as `config` says.
    pub fn new(client: ShareClient, config: ShareConfig, backend: BackendName) -> Self {
        Self {
            client,
            config,
            backend,
        }
    }

    /// Marks the share as Everest's, or checks the mark a found share carries. SFS Turbo takes
    /// tags only after a share exists, so a controller that died between the two calls leaves
    /// an unmarked share under the volume's own name: that one is taken as ours and marked now
    /// (the name is `pvc-<uid>`, which nobody else picks). A share marked by another cluster or
    /// instance is never taken.
    async fn mark(
        &self,
        req: &CreateVolume,
        id: &str,
        name: &str,
        on_delete: OnDelete,
    ) -> Result<()> {
        let found = self.client.tags(id).await?.unwrap_or_default();
        // The policy goes in the marker too: the volume ID that carries it goes with the PV.
        let want = req.marker(&self.backend).with_on_delete(on_delete.policy());
        match Marker::owner(&found, &req.cluster, &self.backend) {
            Owner::Elsewhere(m) => Err(Error::AlreadyExists(format!(
                "share {name} ({id}) belongs to Everest backend {} of cluster {}, not to {} of cluster {}; choose another volume name",
                m.backend, m.cluster, self.backend, req.cluster
            ))),
            Owner::Ours(m) if m == want => Ok(()),
            Owner::Ours(_) | Owner::Foreign => {
                let tags = want.with_user_tags(&BTreeMap::new(), &SFS_TURBO_TAGS)?;
                Ok(self.client.add_tags(id, &tags).await?)
            }
        }
    }

    /// Finds or creates the share of `req`, waits until it is available, and describes it.
    pub async fn create(
        &self,
        req: &CreateVolume,
        params: &ShareParams,
        on_delete: OnDelete,
    ) -> Result<Volume> {
        let size = req
            .capacity
            .to_gib(MIN_SIZE_GIB, MIN_SIZE_GIB, MAX_SIZE_GIB)?;
        let share_type = params
            .share_type
            .clone()
            .unwrap_or_else(|| self.config.settings.share_type.clone());
        let name = share_name(&req.name);
        let existing = self.client.find_by_name(&name).await?;
        let id = match existing {
            Some(share) if share.is_failed() => {
                // A creation that failed and was not cleaned up (the controller died waiting):
                // it holds no data, so remove it; the provisioner's retry creates it anew. Not
                // one another cluster's Everest made, though: that one is left to it.
                let found = self.client.tags(&share.id).await?.unwrap_or_default();
                if let Owner::Elsewhere(m) = Marker::owner(&found, &req.cluster, &self.backend) {
                    return Err(Error::AlreadyExists(format!(
                        "share {name} ({}) belongs to Everest backend {} of cluster {}; choose another volume name",
                        share.id, m.backend, m.cluster
                    )));
                }
                self.client.delete(&share.id).await?;
                return Err(Error::Unavailable(format!(
                    "share {name} ({}) had failed (status {}) and is being deleted; CreateVolume will create it anew when retried",
                    share.id, share.status
                )));
            }
            Some(share) => {
                let id = reuse(&name, share, &req.capacity, &share_type)?;
                self.mark(req, &id, &name, on_delete).await?;
                id
            }
            None => {
                let mut metadata = BTreeMap::new();
                if let Some(key) = &params.crypt_key_id {
                    metadata.insert("crypt_key_id".to_owned(), key.clone());
                }
                let s = &self.config.settings;
                let new = NewShare {
                    name: name.clone(),
                    share_proto: "NFS",
                    share_type,
                    size,
                    availability_zone: s.availability_zone.clone(),
                    vpc_id: s.vpc_id.clone(),
                    subnet_id: s.subnet_id.clone(),
                    security_group_id: s.security_group_id.clone(),
                    description: format!("{DESCRIPTION}{}", req.name),
                    metadata,
                };
                match self.client.create(&new).await {
                    // Marked at once, so the window in which it is unmarked stays short.
                    Ok(accepted) => {
                        self.mark(req, &accepted.id, &name, on_delete).await?;
                        accepted.id
                    }
                    // Created meanwhile by a concurrent call for the same name: take that one.
                    Err(e) if e.code() == Some("SFS.TURBO.0009") => {
                        let share = self.client.find_by_name(&name).await?.ok_or_else(|| {
                            Error::Aborted(format!(
                                "share {name} was being created by another call and is gone again; retry"
                            ))
                        })?;
                        let id = reuse(&name, share, &req.capacity, &new.share_type)?;
                        self.mark(req, &id, &name, on_delete).await?;
                        id
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let share = self.wait_available(&id).await?;
        tracing::info!(backend = %self.backend, share = %id, name = %name, size_gib = share.size, "share volume ready");
        self.volume(&share, on_delete)
    }

    /// Waits until the share is available; one whose creation failed is deleted again.
    async fn wait_available(&self, id: &str) -> Result<Share> {
        let waited = self
            .client
            .wait(
                "create",
                id,
                self.config.wait_timeout(),
                |share| match share {
                    None => Some(Err("it disappeared while being created".to_owned())),
                    Some(s) if s.is_available() => Some(Ok(s.clone())),
                    Some(s) if s.is_failed() => {
                        Some(Err(format!("creation ended in status {}", s.status)))
                    }
                    Some(_) => None,
                },
            )
            .await;
        match waited {
            Ok(share) => Ok(share),
            Err(everest_cloud::Error::ResourceFailed { resource, reason }) => {
                // Remove the failed share now, so nothing leaks and the retry creates anew.
                if let Err(e) = self.client.delete(id).await {
                    tracing::warn!(backend = %self.backend, share = id, error = %e, "cannot delete a share whose creation failed");
                }
                Err(Error::Unavailable(format!(
                    "{resource}: {reason}; it is being deleted, and CreateVolume will create it anew when retried"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The CSI volume of an available share.
    fn volume(&self, share: &Share, on_delete: OnDelete) -> Result<Volume> {
        let export = export_of(share)?;
        Ok(Volume {
            native_id: ShareVolume {
                on_delete,
                id: share.id.clone(),
            }
            .to_string(),
            capacity_bytes: share.size * GIB,
            context: BTreeMap::from([(EXPORT_CONTEXT_KEY.to_owned(), export)]),
            // The share is reached over the VPC from every node, whatever its zone.
            topology: Vec::new(),
        })
    }

    /// Deletes the share (unless retained) and waits until it is gone.
    pub async fn delete(&self, vol: &ShareVolume) -> Result<()> {
        if vol.on_delete == OnDelete::Retain {
            return Ok(());
        }
        match self.client.get(&vol.id).await? {
            None => return Ok(()),
            Some(s) if s.status == status::DELETED => return Ok(()),
            Some(_) => {}
        }
        if !self.client.delete(&vol.id).await? {
            return Ok(());
        }
        self.client
            .wait(
                "delete",
                &vol.id,
                self.config.wait_timeout(),
                |share| match share {
                    None => Some(Ok(())),
                    Some(s) if s.status == status::DELETED => Some(Ok(())),
                    Some(_) => None,
                },
            )
            .await
            .map_err(Error::from)
    }

    /// What the node needs to mount the share: its export.
    pub async fn publish_context(&self, vol: &ShareVolume) -> Result<BTreeMap<String, String>> {
        let share = self.get(vol).await?;
        if !share.is_available() {
            return Err(Error::FailedPrecondition(format!(
                "share {} is in status {}, not available",
                vol.id, share.status
            )));
        }
        Ok(BTreeMap::from([(
            EXPORT_CONTEXT_KEY.to_owned(),
            export_of(&share)?,
        )]))
    }

    async fn get(&self, vol: &ShareVolume) -> Result<Share> {
        self.client
            .get(&vol.id)
            .await?
            .filter(|s| s.status != status::DELETED)
            .ok_or_else(|| Error::NotFound(format!("share {} does not exist", vol.id)))
    }

    /// Grows the share to fit `capacity`, by at least the API's minimum step.
    pub async fn expand(&self, vol: &ShareVolume, capacity: CapacityRange) -> Result<Expanded> {
        let mut share = self.get(vol).await?;
        if share.sub_status == status::EXPANDING {
            share = self.wait_expanded(&vol.id, 0).await?;
        }
        let wanted = capacity.required_bytes.div_ceil(GIB);
        if share.size < wanted {
            let new_size = wanted.max(share.size + MIN_EXTEND_STEP_GIB);
            if new_size > MAX_SIZE_GIB
                || (capacity.limit_bytes != 0 && new_size * GIB > capacity.limit_bytes)
            {
                return Err(Error::OutOfRange(format!(
                    "share {} grows in steps of at least {MIN_EXTEND_STEP_GIB} GiB up to {MAX_SIZE_GIB} GiB: {new_size} GiB does not fit the requested capacity (required {} bytes, limit {} bytes)",
                    vol.id, capacity.required_bytes, capacity.limit_bytes
                )));
            }
            self.client.extend(&vol.id, new_size).await?;
            share = self.wait_expanded(&vol.id, new_size).await?;
        }
        Ok(Expanded {
            capacity_bytes: share.size * GIB,
            // NFS clients see the new size at once; nothing to do on the node.
            node_expansion_required: false,
        })
    }

    async fn wait_expanded(&self, id: &str, size: u64) -> Result<Share> {
        self.client
            .wait(
                "expand",
                id,
                self.config.wait_timeout(),
                |share| match share {
                    None => Some(Err("it disappeared while being expanded".to_owned())),
                    Some(s) if s.sub_status == status::EXPAND_FAILED => {
                        Some(Err("its expansion failed".to_owned()))
                    }
                    Some(s) if s.sub_status != status::EXPANDING && s.size >= size => {
                        Some(Ok(s.clone()))
                    }
                    Some(_) => None,
                },
            )
            .await
            .map_err(Error::from)
    }

    /// Every share of the project with its tags (for `everestctl orphans`); shares being
    /// deleted are left out. A share's native ID carries the policy its marker records (the
    /// keeping form when it records none).
    pub async fn marked(&self) -> Result<Vec<MarkedVolume>> {
        let mut found = Vec::new();
        for share in self.client.list_all().await? {
            if share.status == status::DELETED {
                continue;
            }
            // Gone between the list and this call: nothing to report.
            let Some(tags) = self.client.tags(&share.id).await? else {
                continue;
            };
            let recorded = Marker::read(&tags).and_then(|m| m.on_delete);
            // A share is deleted or kept; an archive policy never reaches a share's marker.
            let on_delete = match recorded {
                Some(DeletePolicy::Delete) => OnDelete::Delete,
                _ => OnDelete::Retain,
            };
            let id = |on_delete| {
                ShareVolume {
                    on_delete,
                    id: share.id.clone(),
                }
                .to_string()
            };
            let other = match on_delete {
                OnDelete::Delete => OnDelete::Retain,
                _ => OnDelete::Delete,
            };
            found.push(MarkedVolume {
                native_id: id(on_delete),
                aliases: vec![id(other)],
                name: share.name.clone(),
                size_bytes: Some(share.size.saturating_mul(GIB)),
                created_at: share.created(),
                tags,
                on_delete: recorded,
            });
        }
        Ok(found)
    }

    /// Whether the API answers with these credentials.
    pub async fn check(&self) -> Result<()> {
        self.client.check().await.map_err(Error::from)
    }
}

/// Checks that an existing share of the name fits the request (CreateVolume is idempotent:
/// the same name again is the same volume); returns its ID.
fn reuse(name: &str, share: Share, capacity: &CapacityRange, share_type: &str) -> Result<String> {
    if share.is_failed() {
        return Err(Error::Unavailable(format!(
            "share {name} ({}) is in failed status {}; retry",
            share.id, share.status
        )));
    }
    if share.status != status::CREATING && !capacity.is_satisfied_by(share.size * GIB) {
        return Err(Error::AlreadyExists(format!(
            "share {name} ({}) exists with {} GiB, which does not fit the requested capacity (required {} bytes, limit {} bytes)",
            share.id, share.size, capacity.required_bytes, capacity.limit_bytes
        )));
    }
    if !share.share_type.is_empty() && share.share_type != share_type {
        return Err(Error::AlreadyExists(format!(
            "share {name} ({}) exists with type {}, not the requested {share_type}",
            share.id, share.share_type
        )));
    }
    Ok(share.id)
}

/// The share's export, checked.
fn export_of(share: &Share) -> Result<String> {
    let export: everest_backend::nfs::NfsExport =
        share.export_location.parse().map_err(|e: Error| {
            Error::Internal(format!(
                "share {} has an unusable export_location {:?}: {e}",
                share.id, share.export_location
            ))
        })?;
    Ok(export.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_names_are_the_request_name_when_the_api_takes_it() {
        let pvc = "pvc-6f1c2b9e-0d4a-4f57-9a3e-1b2c3d4e5f60";
        assert_eq!(share_name(pvc), pvc);
        for odd in ["1abc", "ab", "a.b.c.d", &"x".repeat(65), "vol with space"] {
            let n = share_name(odd);
            assert!(n.starts_with("everest-") && n.len() <= 64, "{n}");
            assert_eq!(share_name(odd), n, "stable");
        }
        assert_ne!(share_name("1abc"), share_name("2abc"));
    }
}
