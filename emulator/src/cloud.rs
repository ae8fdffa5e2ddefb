//! The cloud itself: config, credentials, state behind one lock, and the host effects.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use crate::auth::{Credentials, CredentialsError};
use crate::config::Config;
use crate::effects::{Effects, by_id_link};
use crate::errors::ApiError;
use crate::faults::Faults;
use crate::state::{State, Store};

/// State plus the shutdown flag, guarded together so no job touches the host after cleanup.
#[derive(Debug)]
pub struct Inner {
    /// The persisted state.
    pub state: State,
    /// Set once shutdown cleanup has begun; jobs then leave the host alone.
    pub shutting_down: bool,
}

/// The emulated cloud.
#[derive(Debug)]
pub struct Cloud {
    /// The configuration.
    pub cfg: Config,
    /// Accepted credentials; replaced by [`Cloud::reload_credentials`] (key rotation).
    creds: RwLock<Credentials>,
    /// Host effects.
    pub effects: Arc<dyn Effects>,
    /// Injected faults, changeable at run time.
    pub faults: Mutex<Faults>,
    store: Store,
    inner: Mutex<Inner>,
}

impl Cloud {
    /// Opens the state dir and loads the state (does not touch the host yet).
    pub fn new(
        cfg: Config,
        creds: Credentials,
        effects: Arc<dyn Effects>,
    ) -> std::io::Result<Self> {
        let store = Store::open(&cfg.state_dir)?;
        let state = store.load()?;
        let faults = Faults {
            error_rate: cfg.fault_error_rate,
            throttle_rate: cfg.fault_throttle_rate,
            delay_ms: cfg.fault_delay_ms,
            share_create_fail_rate: 0.0,
        };
        faults
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(Cloud {
            cfg,
            creds: RwLock::new(creds),
            effects,
            faults: Mutex::new(faults),
            store,
            inner: Mutex::new(Inner {
                state,
                shutting_down: false,
            }),
        })
    }

    /// The credentials accepted now.
    pub fn creds(&self) -> RwLockReadGuard<'_, Credentials> {
        self.creds.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the credentials file again, so keys can be rotated while the cloud runs; on an
    /// error the accepted credentials stay as they were.
    pub fn reload_credentials(&self) -> Result<(), CredentialsError> {
        let fresh = Credentials::load(&self.cfg.credentials_file)?;
        *self.creds.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the last committed state on disk; the
        // in-memory copy is still the best knowledge we have, so keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists the state after a change.
    pub fn commit(&self, inner: &mut Inner) -> Result<(), ApiError> {
        inner.state.prune(chrono::Utc::now());
        self.store.save(&inner.state).map_err(|e| {
            tracing::error!(error = %e, "cannot persist state");
            ApiError::internal("the emulator could not persist its state")
        })
    }

    /// The image file of a disk.
    pub fn image_path(&self, disk_id: &str) -> PathBuf {
        self.store.image_path(disk_id)
    }

    /// The image file of a snapshot.
    pub fn snapshot_path(&self, snapshot_id: &str) -> PathBuf {
        self.store.snapshot_path(snapshot_id)
    }

    /// The directory of an SFS Turbo share.
    pub fn share_dir(&self, share_id: &str) -> PathBuf {
        self.cfg.share_root().join(share_id)
    }

    /// The by-id link of a disk.
    pub fn link_path(&self, disk_id: &str) -> PathBuf {
        by_id_link(&self.cfg.by_id_dir, disk_id)
    }

    /// Rejects a project id this cloud does not know (EVS.0001, as EVS does).
    pub fn check_project(&self, project_id: &str) -> Result<(), ApiError> {
        if project_id == self.cfg.project_id {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                "EVS.0001",
                format!("invalid tenant id! project {project_id} is not known"),
            ))
        }
    }

    /// The name of this machine's server.
    pub fn server_name(&self) -> String {
        server_name_of(&self.cfg.server_id)
    }

    /// Whether `server_id` is a server of this cloud: this machine's, or a remote one.
    pub fn knows_server(&self, server_id: &str) -> bool {
        self.is_local(server_id) || self.cfg.remote_servers.iter().any(|s| s == server_id)
    }

    /// Whether `server_id` is this machine, where attaches have host effects.
    pub fn is_local(&self, server_id: &str) -> bool {
        server_id == self.cfg.server_id
    }

    /// Re-creates the host side of every attachment after a (re)start.
    ///
    /// A loop device still backed by the image is reused; a missing one is made again.
    pub fn reconcile_attachments(&self) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let ids: Vec<String> = inner
            .state
            .disks
            .values()
            .filter(|d| {
                d.attachment
                    .as_ref()
                    .is_some_and(|a| self.is_local(&a.server_id))
            })
            .map(|d| d.id.clone())
            .collect();
        for id in ids {
            let image = self.image_path(&id);
            let found = self.effects.find_loop(&image).map_err(host_err)?;
            let dev = match found {
                Some(dev) => dev,
                None => self.effects.attach_loop(&image).map_err(host_err)?,
            };
            self.effects
                .create_link(&self.link_path(&id), &dev)
                .map_err(host_err)?;
            if let Some(att) = inner
                .state
                .disks
                .get_mut(&id)
                .and_then(|d| d.attachment.as_mut())
            {
                if att.loop_device.as_deref() != Some(dev.as_str()) {
                    tracing::info!(volume_id = %id, loop_device = %dev, "reconciled attachment");
                }
                att.loop_device = Some(dev);
            }
        }
        self.commit(&mut inner)
    }

    /// Removes every link and loop device this cloud made (the `--cleanup-on-exit` net).
    ///
    /// The cloud's view (disks `in-use`) is kept, so a restart re-creates them.
    pub fn cleanup_host(&self) {
        let mut inner = self.lock();
        inner.shutting_down = true;
        for disk in inner.state.disks.values() {
            let image = self.image_path(&disk.id);
            if let Err(e) = self.effects.remove_link(&self.link_path(&disk.id)) {
                tracing::warn!(volume_id = %disk.id, error = %e, "cleanup: cannot remove link");
            }
            // Detach whatever loop device backs the image, attached or mid-job.
            match self.effects.find_loop(&image) {
                Ok(Some(dev)) => {
                    if let Err(e) = self.effects.detach_loop(&dev) {
                        tracing::warn!(volume_id = %disk.id, error = %e, "cleanup: cannot detach");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(volume_id = %disk.id, error = %e, "cleanup: losetup -j failed")
                }
            }
        }
    }
}

/// The name of a server, derived from its id.
pub fn server_name_of(server_id: &str) -> String {
    let short: String = server_id.chars().take(8).collect();
    format!("everest-emu-{short}")
}

fn host_err(e: crate::effects::EffectError) -> ApiError {
    tracing::error!(error = %e, "host effect failed");
    ApiError::internal(format!("host effect failed: {e}"))
}
