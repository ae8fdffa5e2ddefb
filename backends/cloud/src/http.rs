//! The one request path every call takes: URL, authentication, timeout, retries, metrics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::Retryable;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

use super::auth::Secret;
use super::backoff;
use super::config::CloudConfig;
use super::credentials::{AkSk, Auth, AuthSource};
use super::error::{ApiError, Error, Result, TransportKind};
use super::rate_limit::RateLimit;
use super::sign;
use everest_backend::daemon::cloud_calls::{self, RETRIES_TOTAL};

/// A cloud API, as named in metric labels and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Elastic Volume Service: disks and their jobs.
    Evs,
    /// Elastic Cloud Server: attach, detach, servers and their jobs.
    Ecs,
    /// Identity: tokens.
    Iam,
    /// SFS Turbo: NFS file shares.
    SfsTurbo,
}

impl Service {
    /// The lowercase name used in metric labels, errors and default endpoints
    /// (`https://{name}.{region}.{cloud_domain}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Evs => "evs",
            Service::Ecs => "ecs",
            Service::Iam => "iam",
            Service::SfsTurbo => "sfs-turbo",
        }
    }
}

/// One logical API call; it may be sent several times.
///
/// Deliberately not `Debug`: the IAM call's body holds a password.
pub struct Call {
    pub service: Service,
    pub operation: &'static str,
    pub method: Method,
    /// Decoded path segments after the endpoint's own path.
    pub path: Vec<String>,
    /// Decoded query pairs, sent in this order.
    pub query: Vec<(String, String)>,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
    /// Extra headers, signed like the others.
    pub headers: Vec<(&'static str, String)>,
}

impl Call {
    /// A call without query, body or extra headers.
    pub fn new(
        service: Service,
        operation: &'static str,
        method: Method,
        path: Vec<String>,
    ) -> Self {
        Call {
            service,
            operation,
            method,
            path,
            query: Vec::new(),
            body: None,
            headers: Vec::new(),
        }
    }

    /// Sets a JSON body.
    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            Error::InvalidInput(format!(
                "{}: cannot encode the request body: {e}",
                self.operation
            ))
        })?;
        self.body = Some(bytes);
        Ok(self)
    }
}

/// A successful (2xx) answer.
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// Decodes the JSON body.
    pub fn json<T: DeserializeOwned>(&self, call: &Call) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            service: call.service.as_str(),
            operation: call.operation,
            message: e.to_string(),
        })
    }
}

/// A failed attempt, with the delay the cloud asked for before the next one.
struct Failure {
    error: Error,
    retry_after: Option<Duration>,
}

/// How one attempt authenticates.
enum AttemptAuth<'a> {
    None,
    AkSk(&'a AkSk),
    Token(&'a Secret),
}

/// The shared HTTP machinery behind every client handle.
pub(crate) struct Transport {
    http: reqwest::Client,
    config: CloudConfig,
    /// The base URL of each service this client was built for.
    endpoints: Vec<(Service, Url)>,
    auth: AuthSource,
    /// Every attempt of every call of the instance draws from it.
    limit: RateLimit,
}

impl Transport {
    /// Validates the settings for `services` (and IAM, for tokens) and builds the HTTP client.
    pub fn new(config: CloudConfig, auth: AuthSource, services: &[Service]) -> Result<Self> {
        let mut services = services.to_vec();
        if !services.contains(&Service::Iam) {
            services.push(Service::Iam);
        }
        config.validate(&services)?;
        let parse = |url: String| {
            Url::parse(&url).map_err(|e| Error::Config(format!("bad endpoint {url}: {e}")))
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .tls_certs_merge(config.ca_certificates()?)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let endpoints = services
            .iter()
            .map(|&s| Ok((s, parse(config.url(s))?)))
            .collect::<Result<_>>()?;
        Ok(Transport {
            endpoints,
            http,
            limit: RateLimit::new(config.rate_limit_per_second, config.rate_limit_burst),
            config,
            auth,
        })
    }

    /// The configuration the transport was built from.
    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// This transport as a client handle labelled `backend` uses it.
    pub fn bound<'a>(&'a self, backend: &'a str) -> Bound<'a> {
        Bound {
            transport: self,
            backend,
        }
    }

    fn base(&self, service: Service) -> Result<&Url> {
        self.endpoints
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, url)| url)
            .ok_or_else(|| {
                Error::Config(format!(
                    "this client was not built for the {} API",
                    service.as_str()
                ))
            })
    }

    fn url(&self, call: &Call) -> Result<Url> {
        let mut url = self.base(call.service)?.clone();
        let mut path = url.path().trim_end_matches('/').to_owned();
        for seg in &call.path {
            if seg.is_empty() || seg == "." || seg == ".." || seg.contains('/') {
                return Err(Error::InvalidInput(format!(
                    "{}: {seg:?} is not a valid id",
                    call.operation
                )));
            }
            path.push('/');
            path.push_str(&sign::escape(seg));
        }
        url.set_path(&path);
        if !call.query.is_empty() {
            let query = call
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", sign::escape(k), sign::escape(v)))
                .collect::<Vec<_>>()
                .join("&");
            url.set_query(Some(&query));
        }
        Ok(url)
    }

    /// Sends `call`, retrying what may succeed unchanged (429, 5xx, timeouts, connection
    /// failures) on the request backoff, longer when the cloud asks for it with `Retry-After`.
    async fn attempts(&self, call: &Call, auth: AttemptAuth<'_>, backend: &str) -> Result<Reply> {
        let url = self.url(call)?;
        // Atomic only so the future stays `Send`; the attempts run one after another.
        let attempt = AtomicU32::new(0);
        let cap = self.config.retry_cap;
        let send = || {
            let n = attempt.fetch_add(1, Ordering::Relaxed);
            self.attempt(call, &url, &auth, backend, n)
        };
        // The cloud's time, retries and their backoff included: not the driver's own.
        let _waiting = everest_backend::outside::Waiting::start();
        send.retry(backoff::request_retries(&self.config))
            .sleep(tokio::time::sleep)
            .when(|f: &Failure| f.error.is_retryable())
            .adjust(|f: &Failure, delay| {
                delay.map(|d| f.retry_after.map_or(d, |asked| d.max(asked.min(cap))))
            })
            .notify(|f: &Failure, delay: Duration| {
                let service = call.service.as_str();
                metrics::counter!(
                    RETRIES_TOTAL,
                    "backend" => backend.to_owned(),
                    "service" => service,
                    "operation" => call.operation,
                    "reason" => retry_reason(&f.error),
                )
                .increment(1);
                tracing::debug!(
                    service,
                    operation = call.operation,
                    attempt = attempt.load(Ordering::Relaxed).saturating_sub(1),
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %f.error,
                    "retrying cloud API call"
                );
            })
            .await
            .map_err(|f| f.error)
    }

    /// One attempt, counted and timed; a non-2xx answer becomes `Error::Api`.
    async fn attempt(
        &self,
        call: &Call,
        url: &Url,
        auth: &AttemptAuth<'_>,
        backend: &str,
        attempt: u32,
    ) -> std::result::Result<Reply, Failure> {
        let service = call.service.as_str();
        self.limit.acquire().await;
        let started = Instant::now();
        let outcome = self.once(call, url, auth).await;
        let status = match &outcome {
            Ok((status, _, _)) => status.to_string(),
            Err(_) => "error".to_owned(),
        };
        cloud_calls::record(backend, service, call.operation, &status, started.elapsed());
        tracing::debug!(
            backend,
            service,
            operation = call.operation,
            method = %call.method,
            path = url.path(),
            status = %status,
            attempt,
            "cloud API call"
        );
        let (status, headers, body) = outcome.map_err(|error| Failure {
            error,
            retry_after: None,
        })?;
        if (200..300).contains(&status) {
            return Ok(Reply { headers, body });
        }
        let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
        let retry_after = retry_after(&headers);
        if status == 429 {
            // The cloud counts the whole account's calls, not this one's: slow them all.
            self.limit
                .throttled(retry_after.map(|d| d.min(self.config.retry_cap)));
        }
        Err(Failure {
            error: Error::Api {
                service,
                operation: call.operation,
                api: ApiError::from_body(status, &body, request_id),
            },
            retry_after,
        })
    }

    /// One HTTP exchange: status, headers and the whole body, or a transport error.
    async fn once(
        &self,
        call: &Call,
        url: &Url,
        auth: &AttemptAuth<'_>,
    ) -> Result<(u16, HeaderMap, Vec<u8>)> {
        let body = call.body.as_deref().unwrap_or_default();
        let mut signed: Vec<(String, String)> = Vec::new();
        if call.service != Service::Iam {
            signed.push(("X-Project-Id".into(), self.config.project_id.clone()));
        }
        for (name, value) in &call.headers {
            signed.push(((*name).to_owned(), value.clone()));
        }
        let mut secret_headers: Vec<(&'static str, String)> = Vec::new();
        match auth {
            AttemptAuth::None => {}
            AttemptAuth::Token(token) => {
                secret_headers.push(("X-Auth-Token", token.expose().to_owned()));
            }
            AttemptAuth::AkSk(keys) => {
                // reqwest derives Host from the URL the same way, so the signed value is what is sent.
                let mut host = url.host_str().unwrap_or_default().to_owned();
                if let Some(port) = url.port() {
                    host = format!("{host}:{port}");
                }
                signed.push(("Host".into(), host));
                signed.push((
                    sign::HEADER_SDK_DATE.into(),
                    sign::sdk_date(chrono::Utc::now()),
                ));
                if let Some(token) = &keys.security_token {
                    signed.push(("X-Security-Token".into(), token.expose().to_owned()));
                }
                let request = sign::SigningRequest {
                    method: call.method.as_str(),
                    path: url.path(),
                    query: &call.query,
                    headers: &signed,
                    body,
                };
                // Only `None` without an X-Sdk-Date header, which was added just above; an
                // empty Authorization would only come back as a puzzling 401.
                let authorization = sign::authorization(
                    keys.access_key.expose(),
                    keys.secret_key.expose(),
                    &request,
                )
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{}: cannot sign a request without {}",
                        call.operation,
                        sign::HEADER_SDK_DATE
                    ))
                })?;
                secret_headers.push(("Authorization", authorization));
            }
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &signed {
            if name.eq_ignore_ascii_case("host") {
                continue;
            }
            let sensitive = name.eq_ignore_ascii_case("x-security-token");
            insert_header(&mut headers, call, name, value, sensitive)?;
        }
        for (name, value) in &secret_headers {
            insert_header(&mut headers, call, name, value, true)?;
        }
        if call.body.is_some() {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }

        let transport_error = |e: reqwest::Error| Error::Transport {
            service: call.service.as_str(),
            operation: call.operation,
            kind: TransportKind::of(&e),
            message: error_chain(&e),
        };
        let response = self
            .http
            .request(call.method.clone(), url.clone())
            .headers(headers)
            .timeout(self.config.request_timeout)
            .body(body.to_vec())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport_error)?;
        Ok((status, headers, body.to_vec()))
    }
}

/// The transport as one client handle uses it: every attempt is counted under the handle's
/// backend instance, so two instances of the same kind stay apart in the metrics.
#[derive(Clone, Copy)]
pub(crate) struct Bound<'a> {
    transport: &'a Transport,
    backend: &'a str,
}

impl Bound<'_> {
    /// The configuration the transport was built from.
    pub fn config(&self) -> &CloudConfig {
        self.transport.config()
    }

    /// Sends an authenticated call with retries; a non-2xx answer becomes `Error::Api`.
    pub async fn execute(&self, call: &Call) -> Result<Reply> {
        // Checked per call, so a rotated credentials file takes effect at once.
        let auth = self.transport.auth.current();
        match &*auth {
            Auth::AkSk(keys) => self.attempts(call, AttemptAuth::AkSk(keys)).await,
            Auth::Token(source) => {
                let token = source.token(self).await?;
                match self.attempts(call, AttemptAuth::Token(&token)).await {
                    // A token can be revoked before its expiry: fetch a new one, once.
                    Err(e) if is_unauthorized(&e) => {
                        source.invalidate(&token).await;
                        let token = source.token(self).await?;
                        self.attempts(call, AttemptAuth::Token(&token)).await
                    }
                    other => other,
                }
            }
        }
    }

    /// Sends a call without credentials (the IAM token request itself).
    pub async fn execute_unauthenticated(&self, call: &Call) -> Result<Reply> {
        self.attempts(call, AttemptAuth::None).await
    }

    async fn attempts(&self, call: &Call, auth: AttemptAuth<'_>) -> Result<Reply> {
        self.transport.attempts(call, auth, self.backend).await
    }
}

fn insert_header(
    headers: &mut HeaderMap,
    call: &Call,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<()> {
    // The value may be secret, so the message names only the header.
    let bad = || {
        Error::InvalidInput(format!(
            "{}: header {name} has an invalid value",
            call.operation
        ))
    };
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
    let mut value = HeaderValue::from_str(value).map_err(|_| bad())?;
    value.set_sensitive(sensitive);
    headers.insert(name, value);
    Ok(())
}

fn is_unauthorized(e: &Error) -> bool {
    matches!(e, Error::Api { api, .. } if api.http_status == 401)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

fn retry_reason(e: &Error) -> &'static str {
    match e {
        Error::Api { api, .. } if api.http_status == 429 => "throttled",
        Error::Transport {
            kind: TransportKind::Timeout,
            ..
        } => "timeout",
        Error::Transport { .. } => "connection",
        _ => "server_error",
    }
}

/// Gives the client's metrics their help text; call once after the metrics recorder is installed.
pub fn describe_metrics() {
    cloud_calls::describe();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credentials;

    #[test]
    fn urls_escape_segments_and_keep_endpoint_prefix() {
        let mut config = CloudConfig::new("p1", "r1");
        config.evs_endpoint = Some("http://127.0.0.1:8080/prefix/".into());
        config.allow_insecure_http = true;
        let creds = Credentials::AkSk {
            access_key: "a".into(),
            secret_key: "s".into(),
            security_token: None,
        };
        let t = Transport::new(config, AuthSource::fixed(creds).unwrap(), &[Service::Evs]).unwrap();
        let mut call = Call::new(
            Service::Evs,
            "get_volume",
            Method::GET,
            vec!["v2".into(), "p1".into(), "a b".into()],
        );
        call.query = vec![("ids".into(), "['x','y']".into())];
        let url = t.url(&call).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/prefix/v2/p1/a%20b?ids=%5B%27x%27%2C%27y%27%5D"
        );
        let unbuilt = Call::new(
            Service::SfsTurbo,
            "show_share",
            Method::GET,
            vec!["x".into()],
        );
        assert!(matches!(t.url(&unbuilt), Err(Error::Config(_))));
        for bad in ["", "..", "a/b"] {
            let call = Call::new(Service::Evs, "get_volume", Method::GET, vec![bad.into()]);
            assert!(
                matches!(t.url(&call), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn retry_after_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}
