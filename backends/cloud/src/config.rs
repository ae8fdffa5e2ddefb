//! Where the cloud is and how to talk to it: endpoints, timeouts, retries, credentials.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::http::Service;

/// The cloud domain used when no endpoint is configured explicitly.
pub const DEFAULT_CLOUD_DOMAIN: &str = "myhuaweicloud.com";

/// Settings of the cloud API client; durations are configured in milliseconds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// EVS base URL; `https://evs.{region}.{cloud_domain}` when unset.
    #[serde(default, deserialize_with = "scalar::opt_text")]
    pub evs_endpoint: Option<String>,
    /// ECS base URL; `https://ecs.{region}.{cloud_domain}` when unset.
    #[serde(default, deserialize_with = "scalar::opt_text")]
    pub ecs_endpoint: Option<String>,
    /// IAM base URL; `https://iam.{region}.{cloud_domain}` when unset.
    #[serde(default, deserialize_with = "scalar::opt_text")]
    pub iam_endpoint: Option<String>,
    /// SFS Turbo base URL; `https://sfs-turbo.{region}.{cloud_domain}` when unset.
    #[serde(default, deserialize_with = "scalar::opt_text")]
    pub sfs_turbo_endpoint: Option<String>,
    /// The project every call is scoped to.
    #[serde(deserialize_with = "scalar::text")]
    pub project_id: String,
    /// The region, e.g. `ap-southeast-1`.
    #[serde(deserialize_with = "scalar::text")]
    pub region: String,
    /// The cloud's DNS suffix.
    #[serde(default = "default_cloud_domain", deserialize_with = "scalar::text")]
    pub cloud_domain: String,
    /// Timeout of one HTTP attempt.
    #[serde(
        rename = "request_timeout_ms",
        with = "millis",
        default = "default_request_timeout"
    )]
    pub request_timeout: Duration,
    /// How many times a retryable failure is retried (0 = never).
    #[serde(default = "default_max_retries", deserialize_with = "scalar::number")]
    pub max_retries: u32,
    /// First backoff ceiling; doubles per retry.
    #[serde(
        rename = "retry_base_ms",
        with = "millis",
        default = "default_retry_base"
    )]
    pub retry_base: Duration,
    /// Largest backoff ceiling.
    #[serde(
        rename = "retry_cap_ms",
        with = "millis",
        default = "default_retry_cap"
    )]
    pub retry_cap: Duration,
    /// First interval between two polls of a job or a disk.
    #[serde(
        rename = "job_poll_initial_ms",
        with = "millis",
        default = "default_job_poll_initial"
    )]
    pub job_poll_initial: Duration,
    /// Longest interval between two polls.
    #[serde(
        rename = "job_poll_max_ms",
        with = "millis",
        default = "default_job_poll_max"
    )]
    pub job_poll_max: Duration,
    /// Calls per second this backend instance may send, all services together (a token
    /// bucket shared by every call of the instance); 0 sends without a limit.
    #[serde(
        default = "default_rate_limit_per_second",
        deserialize_with = "scalar::number"
    )]
    pub rate_limit_per_second: u32,
    /// How many calls may go at once after a quiet spell (the bucket's size); at least 1
    /// when the rate is limited.
    #[serde(
        default = "default_rate_limit_burst",
        deserialize_with = "scalar::number"
    )]
    pub rate_limit_burst: u32,
    /// Allows `http://` endpoints (the emulator, a test cloud on loopback). Off: plain HTTP
    /// would carry signatures, tokens and the IAM password in clear, so it is refused.
    #[serde(default, deserialize_with = "scalar::flag")]
    pub allow_insecure_http: bool,
    /// A PEM bundle of CA certificates trusted in addition to the system's, for private clouds
    /// whose endpoints have certificates from their own CA.
    #[serde(default, deserialize_with = "scalar::opt_path")]
    pub ca_file: Option<PathBuf>,
}

fn default_cloud_domain() -> String {
    DEFAULT_CLOUD_DOMAIN.to_owned()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_retries() -> u32 {
    5
}
fn default_retry_base() -> Duration {
    Duration::from_millis(200)
}
fn default_retry_cap() -> Duration {
    Duration::from_secs(10)
}
fn default_job_poll_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_job_poll_max() -> Duration {
    Duration::from_secs(2)
}
// A safety cap rather than a quota (none is published for EVS): high enough that a burst of
// 64 creates or deletes in flight is not slowed by it (at 50 a second one took 3.8-8.4 × the
// ideal).
fn default_rate_limit_per_second() -> u32 {
    200
}
fn default_rate_limit_burst() -> u32 {
    400
}

mod millis {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::scalar::number::<D, u64>(d).map(Duration::from_millis)
    }
}

/// Settings as the daemons' configuration layer hands them over. It types environment values by
/// their look (`EVEREST_…__PROJECT_ID=0123456789` arrives as a number, `…=true` as a bool), and a
/// hand-written file may quote a number: so a text setting takes a number or bool as its text,
/// and a numeric setting takes a string holding a whole number. Anything else is still an error.
pub mod scalar {
    use std::path::PathBuf;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    /// A string, or a number or bool kept as its text.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok(v.to_string()),
            other => Err(D::Error::custom(format!(
                "expected a string, found {other}"
            ))),
        }
    }

    /// Like [`text`]; `null` or absent is `None`.
    pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(v) => text(v).map(Some).map_err(D::Error::custom),
        }
    }

    /// A path, read like [`text`].
    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        text(d).map(PathBuf::from)
    }

    /// Like [`path`]; `null` or absent is `None`.
    pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        opt_text(d).map(|t| t.map(PathBuf::from))
    }

    /// A bool, or the text `true` / `false` (any case, surrounding blanks allowed).
    pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(b),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
            other => Err(D::Error::custom(format!(
                "expected true or false, found {other}"
            ))),
        }
    }

    /// A whole number, or a string holding one (surrounding blanks allowed).
    pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let value = Value::deserialize(d)?;
        let n = match &value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            D::Error::custom(format!(
                "expected a non-negative whole number, found {value}"
            ))
        })?;
        T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
    }
}

impl CloudConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(project_id: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            evs_endpoint: None,
            ecs_endpoint: None,
            iam_endpoint: None,
            sfs_turbo_endpoint: None,
            project_id: project_id.into(),
            region: region.into(),
            cloud_domain: default_cloud_domain(),
            request_timeout: default_request_timeout(),
            max_retries: default_max_retries(),
            retry_base: default_retry_base(),
            retry_cap: default_retry_cap(),
            job_poll_initial: default_job_poll_initial(),
            job_poll_max: default_job_poll_max(),
            rate_limit_per_second: default_rate_limit_per_second(),
            rate_limit_burst: default_rate_limit_burst(),
            allow_insecure_http: false,
            ca_file: None,
        }
    }

    /// The configured endpoint of `service`, if one is set.
    fn endpoint(&self, service: Service) -> Option<&str> {
        match service {
            Service::Evs => self.evs_endpoint.as_deref(),
            Service::Ecs => self.ecs_endpoint.as_deref(),
            Service::Iam => self.iam_endpoint.as_deref(),
            Service::SfsTurbo => self.sfs_turbo_endpoint.as_deref(),
        }
    }

    /// The base URL of `service`, without a trailing slash.
    pub fn url(&self, service: Service) -> String {
        match self.endpoint(service) {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!(
                "https://{}.{}.{}",
                service.as_str(),
                self.region,
                self.cloud_domain
            ),
        }
    }

    /// Checks the settings for a client of `services` without side effects. An endpoint set
    /// for a service the client does not use is refused: it is a typo or a misplaced table.
    pub fn validate(&self, services: &[Service]) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Config(what));
        if self.project_id.is_empty() || !is_plain_id(&self.project_id) {
            return bad("project_id must be a non-empty id of letters, digits, '-' or '_'".into());
        }
        if self.region.is_empty() || !is_plain_id(&self.region) {
            return bad("region must be a non-empty name of letters, digits, '-' or '_'".into());
        }
        for service in ALL_SERVICES {
            if !services.contains(&service) && self.endpoint(service).is_some() {
                return bad(format!(
                    "{} is set, but this backend does not use the {} API",
                    endpoint_key(service),
                    service.as_str()
                ));
            }
        }
        let needs_domain = services.iter().any(|&s| self.endpoint(s).is_none());
        if needs_domain && self.cloud_domain.trim().is_empty() {
            return bad("cloud_domain must not be empty when an endpoint is left unset".into());
        }
        for &service in services {
            let name = endpoint_key(service);
            let url = self.url(service);
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    if u.query().is_some() || u.fragment().is_some() {
                        return bad(format!("{name} must not carry a query or fragment: {url}"));
                    }
                    if u.scheme() == "http" && !self.allow_insecure_http {
                        return bad(format!(
                            "{name} {url} is plain http, which would send signatures, tokens \
                             and passwords unencrypted; use https, or set \
                             allow_insecure_http = true for a test cloud"
                        ));
                    }
                }
                _ => return bad(format!("{name} is not an http(s) URL: {url}")),
            }
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout_ms must be positive".into());
        }
        if self.retry_base > self.retry_cap {
            return bad("retry_base_ms must not exceed retry_cap_ms".into());
        }
        if self.job_poll_initial.is_zero() || self.job_poll_initial > self.job_poll_max {
            return bad("job_poll_initial_ms must be positive and at most job_poll_max_ms".into());
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return bad(
                "rate_limit_burst must be at least 1 when rate_limit_per_second is set".into(),
            );
        }
        self.ca_certificates()?;
        Ok(())
    }

    /// The certificates of `ca_file` (none when unset); an unreadable file or one without a
    /// PEM certificate is an error naming the file.
    pub fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, Error> {
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read ca_file {shown}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("ca_file {shown} is not a PEM bundle: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "ca_file {shown} holds no PEM certificate"
            )));
        }
        Ok(certs)
    }
}

const ALL_SERVICES: [Service; 4] = [Service::Evs, Service::Ecs, Service::Iam, Service::SfsTurbo];

/// The configuration key of a service's endpoint.
fn endpoint_key(service: Service) -> &'static str {
    match service {
        Service::Evs => "evs_endpoint",
        Service::Ecs => "ecs_endpoint",
        Service::Iam => "iam_endpoint",
        Service::SfsTurbo => "sfs_turbo_endpoint",
    }
}

fn is_plain_id(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// How the client proves who it is.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum Credentials {
    /// Access key / secret key, every request signed with `SDK-HMAC-SHA256`.
    AkSk {
        /// The access key id (not secret, but still kept out of logs).
        access_key: String,
        /// The secret key.
        secret_key: String,
        /// Set for temporary credentials; sent as `X-Security-Token`.
        #[serde(default)]
        security_token: Option<String>,
    },
    /// An IAM user; a project-scoped token is fetched and cached.
    Password {
        /// The account (domain) name.
        domain: String,
        /// The IAM user name.
        user: String,
        /// The user's password.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    // Hand-written so that no secret can reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::AkSk { security_token, .. } => f
                .debug_struct("AkSk")
                .field("access_key", &"<redacted>")
                .field("secret_key", &"<redacted>")
                .field(
                    "security_token",
                    &security_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            Credentials::Password { domain, user, .. } => f
                .debug_struct("Password")
                .field("domain", domain)
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// Rejects credentials with an empty required field.
    pub fn validate(&self) -> Result<(), Error> {
        let empty = match self {
            Credentials::AkSk {
                access_key,
                secret_key,
                ..
            } => access_key.is_empty() || secret_key.is_empty(),
            Credentials::Password {
                domain,
                user,
                password,
            } => domain.is_empty() || user.is_empty() || password.is_empty(),
        };
        if empty {
            return Err(Error::Config("credentials have an empty field".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &[Service] = &[Service::Evs, Service::Ecs, Service::Iam];

    #[test]
    fn defaults_and_resolved_endpoints() {
        let c: CloudConfig =
            serde_json::from_str(r#"{"project_id":"p1","region":"ap-southeast-1"}"#).unwrap();
        assert_eq!(c, CloudConfig::new("p1", "ap-southeast-1"));
        assert_eq!(
            c.url(Service::Evs),
            "https://evs.ap-southeast-1.myhuaweicloud.com"
        );
        assert_eq!(
            c.url(Service::Ecs),
            "https://ecs.ap-southeast-1.myhuaweicloud.com"
        );
        assert_eq!(
            c.url(Service::Iam),
            "https://iam.ap-southeast-1.myhuaweicloud.com"
        );
        assert_eq!(c.job_poll_initial, Duration::from_millis(100));
        assert_eq!(c.job_poll_max, Duration::from_secs(2));
        assert_eq!((c.rate_limit_per_second, c.rate_limit_burst), (200, 400));
        c.validate(BLOCK).unwrap();
    }

    #[test]
    fn explicit_endpoints_and_millis() {
        let c: CloudConfig = serde_json::from_str(
            r#"{"project_id":"p","region":"r","evs_endpoint":"http://127.0.0.1:9000/",
                "cloud_domain":"example.org","request_timeout_ms":1500,"retry_cap_ms":3000,
                "max_retries":2,"allow_insecure_http":true}"#,
        )
        .unwrap();
        assert_eq!(c.url(Service::Evs), "http://127.0.0.1:9000");
        assert_eq!(c.url(Service::Ecs), "https://ecs.r.example.org");
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.retry_cap, Duration::from_secs(3));
        assert_eq!(c.max_retries, 2);
        c.validate(BLOCK).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(
            serde_json::from_str::<CloudConfig>(r#"{"project_id":"p","region":"r","regoin":"x"}"#)
                .is_err()
        );
        let mut c = CloudConfig::new("p/../x", "r");
        assert!(c.validate(BLOCK).is_err());
        c.project_id = "p".into();
        c.evs_endpoint = Some("ftp://x".into());
        assert!(c.validate(BLOCK).is_err());
        c.evs_endpoint = None;
        c.job_poll_initial = Duration::from_secs(5);
        assert!(c.validate(BLOCK).is_err());
        c.job_poll_initial = Duration::from_millis(100);
        c.validate(BLOCK).unwrap();
        // A limited rate with an empty bucket would never send anything.
        c.rate_limit_burst = 0;
        assert!(c.validate(BLOCK).is_err());
        c.rate_limit_per_second = 0;
        c.validate(BLOCK).unwrap();
    }

    #[test]
    fn plain_http_needs_the_switch() {
        for key in ["evs_endpoint", "ecs_endpoint", "iam_endpoint"] {
            let mut table = serde_json::json!({"project_id": "p", "region": "r"});
            table[key] = "http://127.0.0.1:9000".into();
            let c: CloudConfig = serde_json::from_value(table.clone()).unwrap();
            let err = c.validate(BLOCK).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("allow_insecure_http"),
                "{err}"
            );
            table["allow_insecure_http"] = "true".into();
            let c: CloudConfig = serde_json::from_value(table.clone()).unwrap();
            c.validate(BLOCK).unwrap();
            table[key] = "https://127.0.0.1:9000".into();
            table["allow_insecure_http"] = false.into();
            let c: CloudConfig = serde_json::from_value(table).unwrap();
            c.validate(BLOCK).unwrap();
        }
        let bad =
            serde_json::json!({"project_id": "p", "region": "r", "allow_insecure_http": "yes"});
        assert!(serde_json::from_value::<CloudConfig>(bad).is_err());
    }

    #[test]
    fn ca_file_must_hold_a_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CloudConfig::new("p", "r");
        c.ca_file = Some(dir.path().join("missing.pem"));
        let err = c.validate(BLOCK).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        c.ca_file = Some(empty);
        let err = c.validate(BLOCK).unwrap_err().to_string();
        assert!(err.contains("empty.pem"), "{err}");
        let good = dir.path().join("ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["test-ca".to_owned()]).unwrap();
        std::fs::write(&good, ca.cert.pem()).unwrap();
        c.ca_file = Some(good);
        c.validate(BLOCK).unwrap();
        assert_eq!(c.ca_certificates().unwrap().len(), 1);
    }

    #[test]
    fn credentials_debug_redacts_secrets() {
        let ak: Credentials = serde_json::from_str(
            r#"{"type":"ak_sk","access_key":"AKVALUE","secret_key":"SKVALUE","security_token":"STVALUE"}"#,
        )
        .unwrap();
        let pw: Credentials = serde_json::from_str(
            r#"{"type":"password","domain":"dom","user":"bob","password":"PWVALUE"}"#,
        )
        .unwrap();
        let text = format!("{ak:?} {pw:?} {ak:#?}");
        for secret in ["AKVALUE", "SKVALUE", "STVALUE", "PWVALUE"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(text.contains("bob") && text.contains("dom"));
        ak.validate().unwrap();
        pw.validate().unwrap();
    }

    #[test]
    fn an_endpoint_for_an_unused_service_is_refused() {
        let mut c = CloudConfig::new("p", "r");
        c.sfs_turbo_endpoint = Some("https://sfs-turbo.example".into());
        let err = c.validate(BLOCK).unwrap_err().to_string();
        assert!(err.contains("sfs_turbo_endpoint"), "{err}");
        c.validate(&[Service::SfsTurbo, Service::Iam]).unwrap();
        assert_eq!(c.url(Service::SfsTurbo), "https://sfs-turbo.example");
        c.sfs_turbo_endpoint = None;
        assert_eq!(
            c.url(Service::SfsTurbo),
            "https://sfs-turbo.r.myhuaweicloud.com"
        );
    }
}
