//! Authentication: the credentials file, `SDK-HMAC-SHA256` verification and IAM tokens.
//!
//! The verifier is written from the documented signing rules, independently of any client,
//! so a client that signs wrongly fails here the way it would against the real gateway.

use std::collections::HashMap;
use std::path::Path;

use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use serde_json::error::Category;
use sha2::{Digest, Sha256};

/// The signing algorithm name, as it appears in `Authorization` and the string to sign.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// How far the client's `X-Sdk-Date` may be from our clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// Everything but the unreserved characters is escaped, as the signing rules require.
const ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for computing a MAC or comparing a password.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Deserialize)]
struct AccessKeyEntry {
    ak: String,
    sk: Secret,
}

/// An IAM user allowed to get a token with a password.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    /// Domain (account) name.
    pub domain: String,
    /// User name.
    pub name: String,
    /// Password.
    pub password: Secret,
}

#[derive(Debug, Deserialize)]
struct CredentialsFile {
    #[serde(default)]
    access_keys: Vec<AccessKeyEntry>,
    #[serde(default)]
    users: Vec<User>,
}

/// The accepted access keys and users, loaded from the credentials file.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    access_keys: HashMap<String, Secret>,
    users: Vec<User>,
}

/// Why the credentials file could not be used (never contains a secret).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not the expected JSON (the reason gives a position, never a value).
    #[error("credentials file {path} is not valid: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl Credentials {
    /// Reads `{"access_keys":[{"ak","sk"}],"users":[{"domain","name","password"}]}`.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| CredentialsError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses the credentials JSON.
    pub fn from_json(text: &str) -> Result<Self, String> {
        // serde_json's type errors quote the value (`invalid type: string "…"`), and a misplaced
        // secret would be that value: report the kind of problem and where, nothing from the file.
        let file: CredentialsFile = serde_json::from_str(text).map_err(|e| {
            let what = match e.classify() {
                Category::Data => {
                    r#"a value of the wrong type or shape (expected {"access_keys":[{"ak","sk"}],"users":[{"domain","name","password"}]})"#
                }
                Category::Syntax | Category::Eof | Category::Io => "not valid JSON",
            };
            format!("{what} at line {} column {}", e.line(), e.column())
        })?;
        Ok(Credentials {
            access_keys: file.access_keys.into_iter().map(|e| (e.ak, e.sk)).collect(),
            users: file.users,
        })
    }

    /// The secret key of a known access key.
    pub fn secret_key(&self, ak: &str) -> Option<&Secret> {
        self.access_keys.get(ak)
    }

    /// Whether a domain/user/password triple is valid.
    pub fn check_password(&self, domain: &str, name: &str, password: &str) -> bool {
        self.users.iter().any(|u| {
            u.domain == domain && u.name == name && constant_time_eq(u.password.expose(), password)
        })
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parts of an HTTP request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub raw_path: &'a str,
    /// The query as sent, without `?`.
    pub raw_query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The body bytes.
    pub body: &'a [u8],
}

/// Lowercase hex of SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn escape(s: &str) -> String {
    utf8_percent_encode(s, ESCAPE).to_string()
}

fn unescape(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The canonical URI: every segment escaped, always ending in `/`.
pub fn canonical_uri(raw_path: &str) -> String {
    let mut out = raw_path
        .split('/')
        .map(|seg| escape(&unescape(seg)))
        .collect::<Vec<_>>()
        .join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// The canonical query: pairs sorted by key then value, both escaped (space as `%20`).
pub fn canonical_query(raw_query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            // Form-style `+` means a space in a query; the canonical form spells it `%20`.
            let dec = |s: &str| unescape(&s.replace('+', " "));
            (escape(&dec(k)), escape(&dec(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Builds the canonical request for the given (lowercase, sorted) signed headers.
pub fn canonical_request(req: &RequestParts<'_>, signed: &[String]) -> Result<String, String> {
    let mut headers = String::new();
    for name in signed {
        let value = req
            .headers
            .get(name.as_str())
            .ok_or_else(|| format!("signed header {name} is missing"))?
            .to_str()
            .map_err(|_| format!("signed header {name} is not text"))?;
        headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let body_hash = match req.headers.get("x-sdk-content-sha256") {
        Some(v) => v
            .to_str()
            .map_err(|_| "X-Sdk-Content-Sha256 is not text".to_string())?
            .to_string(),
        None => sha256_hex(req.body),
    };
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query),
        headers,
        signed.join(";"),
        body_hash
    ))
}

/// `SDK-HMAC-SHA256\n{date}\n{hex(sha256(canonical))}`.
pub fn string_to_sign(sdk_date: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{sdk_date}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

fn mac(sk: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(sk.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length")
}

/// `hex(HMAC-SHA256(sk, string_to_sign))`.
pub fn signature(sk: &str, string_to_sign: &str) -> String {
    let mut m = mac(sk);
    m.update(string_to_sign.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// The fields of an `Authorization: SDK-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthorizationHeader {
    /// The access key.
    pub access: String,
    /// Signed header names, lowercase and sorted.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Parses `SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, String> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| format!("authorization scheme is not {ALGORITHM}"))?;
    let (mut access, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "Access" => access = Some(v.trim().to_string()),
            "SignedHeaders" => signed = Some(v.trim().to_string()),
            "Signature" => sig = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let access = access.ok_or("authorization has no Access")?;
    let signed = signed.ok_or("authorization has no SignedHeaders")?;
    let signature = sig.ok_or("authorization has no Signature")?;
    let mut signed_headers: Vec<String> = signed
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    signed_headers.sort();
    Ok(AuthorizationHeader {
        access,
        signed_headers,
        signature,
    })
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub fn parse_sdk_date(value: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

/// Verifies an AK/SK-signed request; on success returns the access key.
///
/// Error strings name the problem but never a secret or the expected signature.
pub fn verify(
    creds: &Credentials,
    req: &RequestParts<'_>,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let header = req
        .headers
        .get("authorization")
        .ok_or("no Authorization or X-Auth-Token header")?
        .to_str()
        .map_err(|_| "Authorization header is not text")?;
    let auth = parse_authorization(header)?;
    let date_value = req
        .headers
        .get("x-sdk-date")
        .ok_or("X-Sdk-Date header is missing")?
        .to_str()
        .map_err(|_| "X-Sdk-Date is not text")?;
    let date = parse_sdk_date(date_value).ok_or("X-Sdk-Date is not YYYYMMDDTHHMMSSZ")?;
    if (now - date).num_seconds().abs() > MAX_CLOCK_SKEW_SECS {
        return Err("X-Sdk-Date is more than 15 minutes from the server clock".to_string());
    }
    let sk = creds
        .secret_key(&auth.access)
        .ok_or("the access key is unknown")?;
    let canonical = canonical_request(req, &auth.signed_headers)?;
    let sts = string_to_sign(date_value, &canonical);
    let given = hex::decode(&auth.signature).map_err(|_| "Signature is not hex")?;
    let mut m = mac(sk.expose());
    m.update(sts.as_bytes());
    m.verify_slice(&given)
        .map_err(|_| "the signature does not match".to_string())?;
    Ok(auth.access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn headers(date: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-sdk-date", HeaderValue::from_str(date).unwrap());
        h
    }

    fn creds() -> Credentials {
        Credentials::from_json(r#"{"access_keys":[{"ak":"AccessKey","sk":"SecretKey"}]}"#).unwrap()
    }

    fn at(date: &str) -> DateTime<Utc> {
        parse_sdk_date(date).unwrap()
    }

    #[test]
    fn known_answer_get() {
        let h = headers("20060102T150405Z");
        let req = RequestParts {
            method: "GET",
            raw_path: "/path",
            raw_query: Some("limit=1"),
            headers: &h,
            body: b"",
        };
        let signed = vec!["x-sdk-date".to_string()];
        let canonical = canonical_request(&req, &signed).unwrap();
        assert_eq!(
            canonical,
            format!("GET\n/path/\nlimit=1\nx-sdk-date:20060102T150405Z\n\nx-sdk-date\n{EMPTY_SHA}")
        );
        let sig = signature("SecretKey", &string_to_sign("20060102T150405Z", &canonical));
        assert_eq!(
            sig,
            "5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624"
        );
    }

    fn post_request<'a>(h: &'a HeaderMap, body: &'static [u8]) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            raw_path: "/path",
            raw_query: Some("key=value"),
            headers: h,
            body,
        }
    }

    /// Date and signature of the known-answer POST (`{"Name":"test","Id":1}` with `key=value`).
    fn known_answer_post_headers() -> HeaderMap {
        let mut h = headers("20060102T150405Z");
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=x-sdk-date, Signature=cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59",
            ),
        );
        h
    }

    #[test]
    fn known_answer_post_verifies() {
        let h = known_answer_post_headers();
        let req = post_request(&h, b"{\"Name\":\"test\",\"Id\":1}\n");
        assert_eq!(
            verify(&creds(), &req, at("20060102T150405Z")),
            Ok("AccessKey".to_string())
        );
    }

    /// A create as the official Python SDK 3.1.219 signs it: content-type, user-agent and
    /// x-client-token among the signed headers (signature computed by the SDK's own signer).
    #[test]
    fn sdk_signed_headers_verify() {
        let mut h = headers("20060102T150405Z");
        for (name, value) in [
            ("content-type", "application/json;charset=UTF-8"),
            ("host", "127.0.0.1:8080"),
            ("user-agent", "huaweicloud-usdk-python/3.0"),
            ("x-project-id", "p1"),
            ("x-client-token", "6fa459ea-ee8a-4ca4-894e-db77e160355e"),
            (
                "authorization",
                "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=content-type;host;user-agent;x-client-token;x-project-id;x-sdk-date, Signature=4b28c6d66bb09e7346561cad511da3e2996b6d7fa7d0f3f4ee3c1e73c21aaa2d",
            ),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        let body: &[u8] =
            br#"{"volume":{"availability_zone":"az1","name":"v","size":10,"volume_type":"SSD"}}"#;
        let req = RequestParts {
            method: "POST",
            raw_path: "/v2.1/p1/cloudvolumes",
            raw_query: None,
            headers: &h,
            body,
        };
        let now = at("20060102T150405Z");
        assert_eq!(verify(&creds(), &req, now), Ok("AccessKey".to_string()));
        // A signed header changed in transit breaks the signature.
        let mut changed = h.clone();
        changed.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        let req = RequestParts {
            headers: &changed,
            ..req
        };
        assert!(verify(&creds(), &req, now).is_err());
    }

    #[test]
    fn tampered_body_or_wrong_key_is_rejected() {
        let h = known_answer_post_headers();
        let tampered = post_request(&h, b"{\"Name\":\"test\",\"Id\":2}\n");
        let err = verify(&creds(), &tampered, at("20060102T150405Z")).unwrap_err();
        assert!(err.contains("does not match"), "{err}");

        let other =
            Credentials::from_json(r#"{"access_keys":[{"ak":"AccessKey","sk":"Other"}]}"#).unwrap();
        let ok_body = post_request(&h, b"{\"Name\":\"test\",\"Id\":1}\n");
        assert!(verify(&other, &ok_body, at("20060102T150405Z")).is_err());
    }

    #[test]
    fn stale_date_and_unknown_key_are_rejected() {
        let mut h = headers("20060102T150405Z");
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "SDK-HMAC-SHA256 Access=Nobody, SignedHeaders=x-sdk-date, Signature=00",
            ),
        );
        let req = post_request(&h, b"");
        let late = at("20060102T153500Z");
        assert!(
            verify(&creds(), &req, late)
                .unwrap_err()
                .contains("15 minutes")
        );
        let err = verify(&creds(), &req, at("20060102T150405Z")).unwrap_err();
        assert!(err.contains("unknown"), "{err}");
    }

    #[test]
    fn content_sha_header_overrides_body_hash() {
        let mut h = headers("20060102T150405Z");
        h.insert(
            "x-sdk-content-sha256",
            HeaderValue::from_static("UNSIGNED-PAYLOAD"),
        );
        let req = post_request(&h, b"anything");
        let c = canonical_request(&req, &["x-sdk-date".to_string()]).unwrap();
        assert!(c.ends_with("\nUNSIGNED-PAYLOAD"));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical_uri("/v2/p/cloudvolumes/detail"),
            "/v2/p/cloudvolumes/detail/"
        );
        assert_eq!(canonical_uri("/a%20b/"), "/a%20b/");
        assert_eq!(
            canonical_query(Some("name=a+b&limit=2&ids=%5B%27x%27%5D")),
            "ids=%5B%27x%27%5D&limit=2&name=a%20b"
        );
        assert_eq!(canonical_query(None), "");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Credentials::from_json(
            r#"{"access_keys":[{"ak":"A","sk":"topsecret"}],"users":[{"domain":"d","name":"u","password":"pw-secret"}]}"#,
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("topsecret") && !dbg.contains("pw-secret"),
            "{dbg}"
        );
        assert!(c.check_password("d", "u", "pw-secret"));
        assert!(!c.check_password("d", "u", "pw-secreT"));
    }

    #[test]
    fn a_malformed_file_never_quotes_its_values() {
        for (text, secret) in [
            (r#"{"access_keys":["AK:topsecret"]}"#, "topsecret"),
            (
                r#"{"users":[{"domain":"d","name":"u","password":918273}]}"#,
                "918273",
            ),
            (
                r#"{"access_keys":[{"ak":"A","sk":"topsecret"}"#,
                "topsecret",
            ),
        ] {
            let err = Credentials::from_json(text).unwrap_err();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("line 1"), "{err}");
        }
    }
}
