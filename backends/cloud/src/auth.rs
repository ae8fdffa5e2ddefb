//! IAM token authentication: fetch a project-scoped token, cache it, refresh it early.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::error::{Error, Result};
use super::http::{Bound, Call, Service};

/// A string that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value, for putting on the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Validity assumed when IAM gives no readable `expires_at` (documented: 24 h).
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// How long before expiry a token is replaced.
const REFRESH_MARGIN: Duration = Duration::from_secs(600);

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Hands out a cached IAM token, fetching a new one when it nears expiry or was rejected.
pub(crate) struct TokenSource {
    domain: String,
    user: String,
    password: Secret,
    // Held across the fetch so that concurrent callers wait for one request instead of racing.
    cached: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    #[serde(default)]
    expires_at: Option<String>,
}

impl TokenSource {
    pub fn new(domain: String, user: String, password: Secret) -> Self {
        TokenSource {
            domain,
            user,
            password,
            cached: Mutex::new(None),
        }
    }

    /// A token valid for a while yet.
    pub async fn token(&self, transport: &Bound<'_>) -> Result<Secret> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch(transport).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `stale` (if it is still the cached one) after the cloud rejected it.
    pub async fn invalidate(&self, stale: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == stale) {
            *cached = None;
        }
    }

    async fn fetch(&self, transport: &Bound<'_>) -> Result<Cached> {
        let body = json!({
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self.password.expose(),
                            "domain": {"name": self.domain},
                        }
                    }
                },
                "scope": {"project": {"id": transport.config().project_id}}
            }
        });
        let call = Call::new(
            Service::Iam,
            "create_token",
            Method::POST,
            vec!["v3".into(), "auth".into(), "tokens".into()],
        )
        .json(&body)?;
        let reply = transport.execute_unauthenticated(&call).await?;
        let token = reply
            .headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::Decode {
                service: "iam",
                operation: "create_token",
                message: "no X-Subject-Token header in the answer".into(),
            })?
            .to_owned();
        let expires_at = reply
            .json::<TokenBody>(&call)
            .ok()
            .and_then(|b| b.token.expires_at)
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(Cached {
            token: Secret::new(token),
            refresh_at: Instant::now() + refresh_after(expires_at, Utc::now()),
        })
    }
}

/// How long a token fetched `now` may be used before it is replaced.
fn refresh_after(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    let lifetime = match expires_at {
        Some(t) => (t - now).to_std().unwrap_or(Duration::ZERO),
        None => ASSUMED_LIFETIME,
    };
    // Short-lived tokens are replaced halfway, long-lived ones ten minutes early.
    if lifetime > REFRESH_MARGIN * 2 {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_before_expiry() {
        let now = Utc::now();
        let day = now + chrono::Duration::hours(24);
        assert_eq!(
            refresh_after(Some(day), now),
            Duration::from_secs(24 * 3600 - 600)
        );
        let soon = now + chrono::Duration::minutes(4);
        assert_eq!(refresh_after(Some(soon), now), Duration::from_secs(120));
        let past = now - chrono::Duration::minutes(1);
        assert_eq!(refresh_after(Some(past), now), Duration::ZERO);
        assert_eq!(refresh_after(None, now), ASSUMED_LIFETIME - REFRESH_MARGIN);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
