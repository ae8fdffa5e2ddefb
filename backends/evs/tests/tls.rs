//! `ca_file` for private clouds: a real TLS server on 127.0.0.1 with a certificate from a CA
//! made in the test. With the CA in `ca_file` the client talks to it; without, it refuses the
//! certificate (and never sends the signed request).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use everest_evs::api::{CloudConfig, Credentials, Error, EvsClient, JobId, Service};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto};

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, server config).
fn pki() -> (String, ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.der().clone()], key)
            .unwrap();
    (ca_cert.pem(), config)
}

/// Serves HTTP/1.1 over TLS on 127.0.0.1: every request gets a finished job. Counts requests
/// that got past the handshake.
async fn serve(config: ServerConfig) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                // Read the request head (a GET has no body).
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"job_id":"j1","job_type":"createVolume","status":"SUCCESS","entities":{"volume_id":"v1"}}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://{addr}"), served)
}

fn client(endpoint: &str, ca_file: Option<std::path::PathBuf>) -> EvsClient {
    let mut config = CloudConfig::new("p1", "r1");
    config.evs_endpoint = Some(endpoint.to_owned());
    config.ca_file = ca_file;
    config.max_retries = 0;
    EvsClient::new(
        config,
        Credentials::AkSk {
            access_key: "AK".into(),
            secret_key: "SK".into(),
            security_token: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted_and_nothing_else_is() {
    let (ca_pem, server) = pki();
    let (endpoint, served) = serve(server).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let job = client(&endpoint, Some(ca_file))
        .get_job(Service::Evs, &JobId("j1".into()))
        .await
        .expect("the CA from ca_file verifies the server");
    assert_eq!(job.volume_id(), Some("v1"));
    assert_eq!(served.load(Ordering::SeqCst), 1);

    let err = client(&endpoint, None)
        .get_job(Service::Evs, &JobId("j1".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "a request reached a server whose certificate is not trusted"
    );
}
