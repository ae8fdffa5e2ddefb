//! The controller side of file volumes. Mode `subdir`: CreateVolume makes a directory on the
//! NFS server, DeleteVolume deletes, keeps or archives it. Mode `share` ([`crate::shares`]): an
//! SFS Turbo share per volume. Nothing is attached, so ControllerPublish answers at once with
//! the export the node mounts.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::backend::{
    BackendKind, Capabilities, ControllerBackend, ControllerPublish, CreateVolume, Expanded,
    ListedVolume, MarkedVolume, Volume, VolumePage, unsupported,
};
use everest_backend::capability::VolumeCapability;
use everest_backend::capacity::CapacityRange;
use everest_backend::marker::{DeletePolicy, Marker, Owner};
use everest_backend::secrets::Secrets;
use everest_backend::{BackendName, Error, Result};

use crate::config::SfsConfig;
use crate::dirs::{DirAttrs, Directories};
use crate::marks;
use crate::params::{ModeParams, Modes, SubdirParams};
use crate::shares::Shares;
use crate::volume::{DirVolume, FileVolume, OnDelete};
use crate::{EXPORT_CONTEXT_KEY, capabilities, check_capability};

/// The controller side of one `sfs` instance.
#[derive(Debug)]
pub struct SfsController {
    name: BackendName,
    config: SfsConfig,
    /// Mode `subdir`, when an NFS server is configured.
    dirs: Option<Arc<dyn Directories>>,
    /// Mode `share`, when the SFS Turbo API is configured.
    shares: Option<Shares>,
}

impl SfsController {
    /// Builds it over `dirs` (NFSv3 in production, a fake in unit tests) and `shares`.
    pub fn new(
        name: BackendName,
        config: SfsConfig,
        dirs: Option<Arc<dyn Directories>>,
        shares: Option<Shares>,
    ) -> Self {
        Self {
            name,
            config,
            dirs,
            shares,
        }
    }

    fn modes(&self) -> Modes {
        Modes {
            subdir: self.dirs.is_some(),
            share: self.shares.is_some(),
        }
    }

    fn dirs(&self) -> Result<&Arc<dyn Directories>> {
        self.dirs.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "backend {} has no NFS server configured for directory volumes (mode subdir)",
                self.name
            ))
        })
    }

    fn shares(&self) -> Result<&Shares> {
        self.shares.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "backend {} has no SFS Turbo API configured for share volumes (mode share)",
                self.name
            ))
        })
    }

    fn on_delete(&self, asked: Option<OnDelete>) -> Result<OnDelete> {
        match asked {
            Some(p) => Ok(p),
            None => self
                .config
                .default_on_delete()
                .map_err(Error::InvalidArgument),
        }
    }

    async fn create_dir(&self, req: &CreateVolume, params: &SubdirParams) -> Result<Volume> {
        let vol = DirVolume::for_request(&req.name, self.on_delete(params.on_delete)?)?;
        let attrs = DirAttrs {
            mode: params.mode_bits()?,
            uid: params.uid,
            gid: params.gid,
        };
        let dirs = self.dirs()?;
        self.claim_dir(dirs.as_ref(), req, &vol).await?;
        let made = dirs.make_dir(&[vol.path.as_str()], attrs).await?;
        tracing::debug!(volume = %vol, made, "directory volume ready");
        // Capacity is recorded, not enforced: a directory has no size of its own.
        self.to_csi(&vol, req.capacity.required_bytes)
    }

    /// Makes sure the mark of `vol` is this request's before its directory is made (see
    /// [`marks`]): an existing mark must be this cluster's and instance's; without one, a
    /// directory already there is someone else's, and otherwise the mark is written only if
    /// no concurrent call wrote it first (then that one is read and checked).
    async fn claim_dir(
        &self,
        dirs: &dyn Directories,
        req: &CreateVolume,
        vol: &DirVolume,
    ) -> Result<()> {
        let mark_name = marks::mark_name(&vol.path);
        let mark = [marks::MARK_DIR, mark_name.as_str()];
        // The policy goes in the mark too: the volume ID that carries it goes with the PV.
        let marker = req
            .marker(&self.name)
            .with_on_delete(vol.on_delete.policy());
        let content = marks::render(&marker.to_tags());
        // Twice at most: a mark that a racing call wrote between the read and the write is
        // read on the second round.
        for _ in 0..2 {
            match dirs.read_file(&mark).await? {
                Some(found) => {
                    return match Marker::owner(&marks::parse(&found), &req.cluster, &self.name) {
                        Owner::Ours(_) => Ok(()),
                        Owner::Elsewhere(m) => Err(Error::AlreadyExists(format!(
                            "volume {}: directory {} belongs to Everest backend {} of cluster {}, not to {} of cluster {}; choose another volume name",
                            req.name, vol.path, m.backend, m.cluster, self.name, req.cluster
                        ))),
                        Owner::Foreign => Err(Error::AlreadyExists(format!(
                            "volume {}: {}/{mark_name} on the NFS server is not a mark Everest wrote; remove it by hand",
                            req.name,
                            marks::MARK_DIR
                        ))),
                    };
                }
                None => {
                    if dirs.exists(&[vol.path.as_str()]).await? {
                        return Err(Error::AlreadyExists(format!(
                            "volume {}: directory {} already exists on the NFS server and Everest did not make it; choose another volume name, or provision it statically",
                            req.name, vol.path
                        )));
                    }
                    dirs.make_dir(&[marks::MARK_DIR], marks::MARK_DIR_ATTRS)
                        .await?;
                    if dirs.write_file(&mark, &content, true).await? {
                        return Ok(());
                    }
                }
            }
        }
        Err(Error::Aborted(format!(
            "volume {}: the mark of directory {} keeps changing; retry",
            req.name, vol.path
        )))
    }

    /// The directory volumes of the marks in `<base_dir>/.everest`, with the mark's time as
    /// their creation time (the mark is written just before its directory).
    async fn marked_dirs(&self, dirs: &dyn Directories) -> Result<Vec<MarkedVolume>> {
        let mut found = Vec::new();
        for file in dirs.read_files(&[marks::MARK_DIR]).await? {
            let path = marks::unflatten(&file.name);
            let tags = marks::parse(&file.content);
            let recorded = Marker::read(&tags).and_then(|m| m.on_delete);
            // An archived volume is data kept on purpose: never deleted, nor archived again.
            let archived = path
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(ARCHIVED));
            let on_delete = match recorded {
                _ if archived => OnDelete::Retain,
                Some(p) => OnDelete::from_policy(p),
                None => OnDelete::Retain,
            };
            let id = |on_delete| DirVolume {
                on_delete,
                path: path.clone(),
            };
            // A mark name that cannot name a volume directory was not written by Everest.
            if id(on_delete).to_string().parse::<DirVolume>().is_err() {
                continue;
            }
            let aliases = [OnDelete::Delete, OnDelete::Retain, OnDelete::Archive]
                .into_iter()
                .filter(|p| *p != on_delete)
                .map(|p| id(p).to_string())
                .collect();
            found.push(MarkedVolume {
                native_id: id(on_delete).to_string(),
                aliases,
                name: path.clone(),
                // A directory has no size of its own.
                size_bytes: None,
                created_at: file.modified,
                tags,
                on_delete: if archived {
                    Some(DeletePolicy::Retain)
                } else {
                    recorded
                },
            });
        }
        Ok(found)
    }

    fn to_csi(&self, vol: &DirVolume, capacity_bytes: u64) -> Result<Volume> {
        Ok(Volume {
            native_id: vol.to_string(),
            capacity_bytes,
            context: BTreeMap::from([(
                EXPORT_CONTEXT_KEY.to_owned(),
                self.config.volume_export(&vol.path)?.to_string(),
            )]),
            // An NFS server is reachable from every node of the cluster, whatever its zone.
            topology: Vec::new(),
        })
    }
}

/// What an archived directory's name starts with.
const ARCHIVED: &str = "archived-";

/// The name an archived directory gets.
fn archived(path: &str) -> String {
    let last = path.rsplit('/').next().unwrap_or(path);
    format!("{ARCHIVED}{last}")
}

#[async_trait]
impl ControllerBackend for SfsController {
    fn kind(&self) -> BackendKind {
        BackendKind::File
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.shares.is_some())
    }

    fn check_capabilities(&self, caps: &[VolumeCapability]) -> Result<()> {
        caps.iter().try_for_each(check_capability)
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume> {
        match ModeParams::parse(&req.parameters, self.name.as_str(), self.modes())? {
            ModeParams::Subdir(params) => self.create_dir(req, &params).await,
            ModeParams::Share(params) => {
                // A backend default of archive means "keep the data" for a share.
                let on_delete = match self.on_delete(params.on_delete)? {
                    OnDelete::Archive => OnDelete::Retain,
                    other => other,
                };
                self.shares()?.create(req, &params, on_delete).await
            }
        }
    }

    async fn delete_volume(&self, native_id: &str, _secrets: &Secrets) -> Result<()> {
        let vol = match native_id.parse::<FileVolume>() {
            Ok(v) => v,
            // Not one of this backend's IDs: no such volume, nothing to delete.
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match vol {
            FileVolume::Share(share) => self.shares()?.delete(&share).await,
            FileVolume::Dir(vol) => {
                let path: Vec<&str> = vol.components().collect();
                let dirs = self.dirs()?;
                let mark_name = marks::mark_name(&vol.path);
                let mark = [marks::MARK_DIR, mark_name.as_str()];
                // The mark goes (or moves) after its directory, so an interrupted delete is
                // still recognised as Everest's when it is retried.
                match vol.on_delete {
                    OnDelete::Retain => Ok(()),
                    OnDelete::Delete => {
                        dirs.remove_tree(&path).await?;
                        dirs.remove_tree(&mark).await
                    }
                    OnDelete::Archive => {
                        let to = archived(&vol.path);
                        dirs.rename(&path, &to).await?;
                        dirs.rename(&mark, &marks::mark_name(&to)).await
                    }
                }
            }
        }
    }

    async fn publish(&self, req: &ControllerPublish) -> Result<BTreeMap<String, String>> {
        // Nothing to attach: the node mounts the export, which travels here too so that a
        // static PV needs no volume attributes.
        match req.native_id.parse::<FileVolume>()? {
            FileVolume::Share(share) => self.shares()?.publish_context(&share).await,
            FileVolume::Dir(vol) => Ok(BTreeMap::from([(
                EXPORT_CONTEXT_KEY.to_owned(),
                self.config.volume_export(&vol.path)?.to_string(),
            )])),
        }
    }

    async fn unpublish(&self, _native_id: &str, _node_id: Option<&str>) -> Result<()> {
        Ok(())
    }

    async fn expand(&self, native_id: &str, capacity: CapacityRange) -> Result<Expanded> {
        match native_id.parse::<FileVolume>()? {
            FileVolume::Share(share) if self.shares.is_some() => {
                self.shares()?.expand(&share, capacity).await
            }
            FileVolume::Share(_) => Err(unsupported(&self.name, "volume expansion")),
            FileVolume::Dir(_) => Err(unsupported(
                &self.name,
                "expansion of a directory volume (a directory has no size of its own)",
            )),
        }
    }

    async fn get_volume(&self, _native_id: &str) -> Result<ListedVolume> {
        Err(unsupported(&self.name, "ControllerGetVolume"))
    }

    async fn list_volumes(&self, _token: Option<&str>, _max: u32) -> Result<VolumePage> {
        Err(unsupported(&self.name, "ListVolumes"))
    }

    async fn marked_volumes(&self) -> Result<Vec<MarkedVolume>> {
        let mut found = Vec::new();
        if let Some(dirs) = &self.dirs {
            found.extend(self.marked_dirs(dirs.as_ref()).await?);
        }
        if let Some(shares) = &self.shares {
            found.extend(shares.marked().await?);
        }
        Ok(found)
    }

    async fn probe(&self) -> Result<()> {
        if let Some(dirs) = &self.dirs {
            dirs.check().await?;
        }
        if let Some(shares) = &self.shares {
            shares.check().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use everest_backend::capability::AccessMode;

    use super::*;
    use crate::dirs::DirFile;

    /// Directories in memory: path → attributes; `files` under a path make it non-empty.
    #[derive(Debug, Default)]
    struct MemDirs {
        dirs: Mutex<BTreeMap<String, DirAttrs>>,
        plain_files: Mutex<Vec<String>>,
        /// Files written by the controller (the marks), by path.
        files: Mutex<BTreeMap<String, Vec<u8>>>,
    }

    #[async_trait]
    impl Directories for MemDirs {
        async fn make_dir(&self, path: &[&str], attrs: DirAttrs) -> Result<bool> {
            let p = path.join("/");
            if self.plain_files.lock().unwrap().contains(&p) {
                return Err(Error::AlreadyExists(format!("{p} is not a directory")));
            }
            let mut dirs = self.dirs.lock().unwrap();
            if let Some(found) = dirs.get(&p) {
                return match attrs.conflict(found) {
                    Some(why) => Err(Error::AlreadyExists(why)),
                    None => Ok(false),
                };
            }
            dirs.insert(p, attrs);
            Ok(true)
        }
        async fn remove_tree(&self, path: &[&str]) -> Result<()> {
            self.dirs.lock().unwrap().remove(&path.join("/"));
            self.files.lock().unwrap().remove(&path.join("/"));
            Ok(())
        }
        async fn rename(&self, path: &[&str], new_name: &str) -> Result<()> {
            let mut to = path[..path.len() - 1].to_vec();
            to.push(new_name);
            let mut d = self.dirs.lock().unwrap();
            if let Some(a) = d.remove(&path.join("/")) {
                d.insert(to.join("/"), a);
            }
            let mut f = self.files.lock().unwrap();
            if let Some(c) = f.remove(&path.join("/")) {
                f.insert(to.join("/"), c);
            }
            Ok(())
        }
        async fn write_file(&self, path: &[&str], content: &[u8], exclusive: bool) -> Result<bool> {
            let mut files = self.files.lock().unwrap();
            if exclusive && files.contains_key(&path.join("/")) {
                return Ok(false);
            }
            files.insert(path.join("/"), content.to_vec());
            Ok(true)
        }
        async fn exists(&self, path: &[&str]) -> Result<bool> {
            let p = path.join("/");
            Ok(self.dirs.lock().unwrap().contains_key(&p)
                || self.files.lock().unwrap().contains_key(&p)
                || self.plain_files.lock().unwrap().contains(&p))
        }
        async fn read_file(&self, path: &[&str]) -> Result<Option<Vec<u8>>> {
            Ok(self.files.lock().unwrap().get(&path.join("/")).cloned())
        }
        async fn read_files(&self, path: &[&str]) -> Result<Vec<DirFile>> {
            let dir = format!("{}/", path.join("/"));
            Ok(self
                .files
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(p, content)| {
                    let name = p.strip_prefix(&dir).filter(|n| !n.contains('/'))?;
                    Some(DirFile {
                        name: name.to_owned(),
                        content: content.clone(),
                        modified: None,
                    })
                })
                .collect())
        }
        async fn check(&self) -> Result<()> {
            Ok(())
        }
    }

    fn controller() -> (Arc<MemDirs>, SfsController) {
        let dirs = Arc::new(MemDirs::default());
        let table =
            serde_json::json!({"server": "10.0.0.5", "export": "/exports", "base_dir": "k8s"});
        let config = SfsConfig::parse("nfs", table.as_object().unwrap()).unwrap();
        let name = BackendName::new("nfs").unwrap();
        (
            dirs.clone(),
            SfsController::new(name, config, Some(dirs), None),
        )
    }

    fn create(name: &str, params: &[(&str, &str)]) -> CreateVolume {
        let cap = VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &[]);
        CreateVolume::for_test(name, 1 << 30, cap, params)
    }

    #[tokio::test]
    async fn create_is_idempotent_and_delete_follows_the_policy() {
        let (dirs, c) = controller();
        let v = c
            .create_volume(&create("pvc-1", &[("everest.io/dir-mode", "0750")]))
            .await
            .unwrap();
        assert_eq!(v.native_id, "d~pvc-1");
        assert_eq!(v.context[EXPORT_CONTEXT_KEY], "10.0.0.5:/exports/k8s/pvc-1");
        assert_eq!(dirs.dirs.lock().unwrap()["pvc-1"].mode, 0o750);
        assert_eq!(
            c.create_volume(&create("pvc-1", &[("everest.io/dir-mode", "0750")]))
                .await
                .unwrap(),
            v
        );
        // The same name with other attributes is another volume: ALREADY_EXISTS.
        let err = c
            .create_volume(&create("pvc-1", &[("everest.io/dir-mode", "0700")]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        c.delete_volume("d~pvc-1", &Secrets::default())
            .await
            .unwrap();
        assert!(!dirs.dirs.lock().unwrap().contains_key("pvc-1"));
        assert!(dirs.files.lock().unwrap().is_empty(), "the mark went too");
        // Deleting again, or an ID that is not ours: success.
        c.delete_volume("d~pvc-1", &Secrets::default())
            .await
            .unwrap();
        c.delete_volume("not-ours", &Secrets::default())
            .await
            .unwrap();

        let kept = c
            .create_volume(&create("pvc-2", &[("everest.io/on-delete", "retain")]))
            .await
            .unwrap();
        c.delete_volume(&kept.native_id, &Secrets::default())
            .await
            .unwrap();
        assert!(dirs.dirs.lock().unwrap().contains_key("pvc-2"));
        let archived = c
            .create_volume(&create("pvc-3", &[("everest.io/on-delete", "archive")]))
            .await
            .unwrap();
        c.delete_volume(&archived.native_id, &Secrets::default())
            .await
            .unwrap();
        assert!(dirs.dirs.lock().unwrap().contains_key("archived-pvc-3"));
        // Marks follow their directories: kept, moved with the archive.
        let files: Vec<String> = dirs.files.lock().unwrap().keys().cloned().collect();
        assert_eq!(files, [".everest/archived-pvc-3", ".everest/pvc-2"]);
    }

    #[tokio::test]
    async fn marked_directories_are_listed_with_the_policy_their_mark_records() {
        let (dirs, c) = controller();
        for (name, policy) in [
            ("pvc-d", "delete"),
            ("pvc-r", "retain"),
            ("pvc-a", "archive"),
        ] {
            c.create_volume(&create(name, &[("everest.io/on-delete", policy)]))
                .await
                .unwrap();
        }
        c.delete_volume("a~pvc-a", &Secrets::default())
            .await
            .unwrap();
        // A mark written before the policy was recorded.
        dirs.files.lock().unwrap().insert(
            ".everest/pvc-old".into(),
            b"everest-backend=nfs\neverest-cluster=default\neverest-created-by=everest\n".to_vec(),
        );
        let mut found: Vec<(String, Option<DeletePolicy>, Vec<String>)> = c
            .marked_volumes()
            .await
            .unwrap()
            .into_iter()
            .map(|v| (v.native_id, v.on_delete, v.aliases))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<(&str, Option<DeletePolicy>)> =
            found.iter().map(|(id, p, _)| (id.as_str(), *p)).collect();
        assert_eq!(
            ids,
            [
                ("d~pvc-d", Some(DeletePolicy::Delete)),
                // Archived already: kept, never archived again.
                ("r~archived-pvc-a", Some(DeletePolicy::Retain)),
                // Unknown policy: listed under the form that deletes nothing.
                ("r~pvc-old", None),
                ("r~pvc-r", Some(DeletePolicy::Retain)),
            ]
        );
        assert_eq!(found[0].2, ["r~pvc-d", "a~pvc-d"]);
    }

    #[tokio::test]
    async fn a_directory_is_marked_beside_itself_and_only_its_own_is_taken() {
        let (dirs, c) = controller();
        let mut req = create("pvc-m", &[]);
        req.common.k8s.pvc_name = Some("data".into());
        c.create_volume(&req).await.unwrap();
        let mark = dirs.files.lock().unwrap()[".everest/pvc-m"].clone();
        let tags = marks::parse(&mark);
        let m = Marker::read(&tags).expect("a marker");
        assert_eq!((m.cluster.as_str(), m.backend.as_str()), ("default", "nfs"));
        assert_eq!(m.pvc_name.as_deref(), Some("data"));
        // Out of the pods' reach: not inside the volume's directory, and private.
        assert_eq!(dirs.dirs.lock().unwrap()[".everest"].mode, 0o700);
        // Again: the same volume.
        c.create_volume(&req).await.unwrap();

        // Another cluster asking for the same name: refused, its mark left as it was.
        let mut other = req.clone();
        other.cluster = everest_backend::marker::ClusterId::new("staging").unwrap();
        let err = c.create_volume(&other).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains("of cluster default"), "{err}");
        assert_eq!(dirs.files.lock().unwrap()[".everest/pvc-m"], mark);

        // A directory someone made by hand, unmarked: not claimed, and no mark is left on it.
        dirs.dirs.lock().unwrap().insert(
            "pvc-hand".into(),
            DirAttrs {
                mode: 0o777,
                uid: None,
                gid: None,
            },
        );
        let err = c.create_volume(&create("pvc-hand", &[])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains("Everest did not make it"), "{err}");
        assert!(!dirs.files.lock().unwrap().contains_key(".everest/pvc-hand"));
        // A file in the mark's place that is not a mark: refused, not overwritten.
        dirs.files
            .lock()
            .unwrap()
            .insert(".everest/pvc-junk".into(), b"junk".to_vec());
        let err = c.create_volume(&create("pvc-junk", &[])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    }

    #[tokio::test]
    async fn bad_names_parameters_and_what_it_cannot_do_are_refused() {
        let (_, c) = controller();
        for name in ["../etc", "a/b", ".x"] {
            let err = c.create_volume(&create(name, &[])).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        }
        let err = c
            .create_volume(&create("pvc-1", &[("everest.io/sfs-mode", "share")]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = c
            .expand("d~pvc-1", CapacityRange::new(2 << 30, 0).unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nfs"), "{err}");
        let err = c
            .publish(&ControllerPublish {
                native_id: "nope".into(),
                node_id: "n".into(),
                capability: create("x", &[]).capabilities.remove(0),
                readonly: false,
                context: BTreeMap::new(),
                secrets: Secrets::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
}
