//! The cloud API plumbing shared by every backend that speaks a Huawei-Cloud-like API (EVS and
//! ECS for block, SFS Turbo for file): endpoints, AK/SK signing or IAM tokens (rotated from a
//! file), retries with capped backoff, paced waiting, error classes and metrics.
//!
//! A backend builds one [`CloudClient`] for the services it calls and wraps it in its own typed
//! client; see [`error`] for how failures map to CSI codes.

mod auth;
pub mod backoff;
pub mod config;
mod credentials;
pub mod error;
mod http;
mod into_backend;
pub mod lenient;
mod rate_limit;
pub mod sign;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backoff::WaitPace;

pub use config::{CloudConfig, Credentials};
pub use credentials::read_credentials_file;
pub use error::{ApiError, Error, ErrorClass, Result, TransportKind};
pub use http::{Call, Reply, Service, describe_metrics};

use credentials::AuthSource;
use http::Transport;

/// The `backend` metric label of a client that was not given its instance name.
pub const UNNAMED_BACKEND: &str = "none";

/// A handle on the cloud's APIs; clones share one connection pool and token.
#[derive(Clone)]
pub struct CloudClient {
    transport: Arc<Transport>,
    /// The backend instance, as the `backend` label of the cloud API metrics.
    backend: Arc<str>,
    /// How long each kind of wait took lately (a moving average), by key.
    waits: Arc<Mutex<HashMap<String, Duration>>>,
}

/// The weight of the newest wait in the moving average of its kind, when it was longer.
const NEWEST_WAIT_WEIGHT: f64 = 0.3;
/// The weight of the newest wait when it was shorter: a wait's length is known only as the
/// poll that saw its end, an upper bound, so a shorter one is the better news and an expectation
/// learned too long (from a first wait polled on the slow schedule) comes down in a few waits.
const SHORTER_WAIT_WEIGHT: f64 = 0.7;

impl CloudClient {
    /// Validates the settings for `services` (IAM is always included, for tokens) and builds
    /// the client; sends nothing yet.
    pub fn new(
        config: CloudConfig,
        credentials: Credentials,
        services: &[Service],
    ) -> Result<Self> {
        Self::with_auth(config, AuthSource::fixed(credentials)?, services)
    }

    /// Like [`CloudClient::new`], with the credentials read from `path` now and again whenever
    /// the file changes (keys rotate without a restart). The file must not be readable by
    /// others (see [`read_credentials_file`]).
    pub fn from_credentials_file(
        config: CloudConfig,
        path: &Path,
        services: &[Service],
    ) -> Result<Self> {
        Self::with_auth(config, AuthSource::file(path)?, services)
    }

    fn with_auth(config: CloudConfig, auth: AuthSource, services: &[Service]) -> Result<Self> {
        Ok(CloudClient {
            transport: Arc::new(Transport::new(config, auth, services)?),
            backend: Arc::from(UNNAMED_BACKEND),
            waits: Arc::default(),
        })
    }

    /// Counts this handle's calls (and clones made from it) under the backend instance `name`,
    /// e.g. `evs-default`; without it they count under [`UNNAMED_BACKEND`].
    pub fn with_backend(mut self, name: &str) -> Self {
        self.backend = Arc::from(name);
        self
    }

    /// The backend instance its calls are counted under.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The configuration in use.
    pub fn config(&self) -> &CloudConfig {
        self.transport.config()
    }

    /// The project every call is scoped to.
    pub fn project_id(&self) -> &str {
        &self.transport.config().project_id
    }

    /// The pace of a wait of the kind `key` (e.g. `job:evs`) that may last `deadline`:
    /// expecting about as long as such waits took lately on this backend instance.
    pub fn wait_pace(&self, key: &str, deadline: Duration) -> WaitPace {
        let expected = self
            .waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied();
        WaitPace::expecting(self.config(), deadline, expected)
    }

    /// Records that a wait of the kind `key` ended well after `took`.
    pub fn record_wait(&self, key: &str, took: Duration) {
        let mut waits = self.waits.lock().unwrap_or_else(PoisonError::into_inner);
        let average = match waits.get(key) {
            Some(old) => {
                let weight = if took < *old {
                    SHORTER_WAIT_WEIGHT
                } else {
                    NEWEST_WAIT_WEIGHT
                };
                old.mul_f64(1.0 - weight) + took.mul_f64(weight)
            }
            None => took,
        };
        waits.insert(key.to_owned(), average);
    }

    /// Sends an authenticated call with retries; a non-2xx answer becomes [`Error::Api`].
    pub async fn execute(&self, call: &Call) -> Result<Reply> {
        self.transport.bound(&self.backend).execute(call).await
    }
}

impl fmt::Debug for CloudClient {
    // Only the configuration: credentials and tokens stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudClient")
            .field("backend", &self.backend)
            .field("config", self.config())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> CloudClient {
        let creds = Credentials::AkSk {
            access_key: "a".into(),
            secret_key: "s".into(),
            security_token: None,
        };
        CloudClient::new(CloudConfig::new("p", "r"), creds, &[Service::Evs]).unwrap()
    }

    fn expected(c: &CloudClient, key: &str) -> Duration {
        c.waits.lock().unwrap()[key]
    }

    #[test]
    fn learned_waits_come_down_faster_than_they_go_up() {
        let c = client();
        c.record_wait("k", Duration::from_millis(800));
        assert_eq!(expected(&c, "k"), Duration::from_millis(800));
        // Shorter: mostly the new length.
        c.record_wait("k", Duration::from_millis(500));
        assert_eq!(expected(&c, "k"), Duration::from_millis(590));
        // Longer: mostly the old one, so one slow wait does not stretch the next ones much.
        c.record_wait("k", Duration::from_millis(1590));
        assert_eq!(expected(&c, "k"), Duration::from_millis(890));
        // Kinds learn apart.
        c.record_wait("other", Duration::from_millis(10));
        assert_eq!(expected(&c, "k"), Duration::from_millis(890));
    }
}
