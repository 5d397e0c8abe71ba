//! TLS for the tests: a fresh self-signed certificate for `localhost`, a client configuration
//! that trusts only it, and a wshub server serving it from PEM files.

use std::path::PathBuf;
use std::sync::Arc;

use wshub::client::rustls;
use wshub::client::rustls::pki_types::CertificateDer;
use wshub::server::{tls_from_pem_files, ServerConfig};
use wshub::Hub;

use super::TestServer;

/// A self-signed certificate for `localhost`, and where its PEM files are.
pub struct TestCert {
    pub cert: CertificateDer<'static>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Makes a certificate and writes its chain and key as PEM into a fresh directory.
pub fn localhost_cert() -> TestCert {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    // Under the target directory (cargo's scratch space for integration tests), not /tmp.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "wshub-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let cert_pem = pem("CERTIFICATE", certified.cert.der());
    let key_pem = pem("PRIVATE KEY", &certified.signing_key.serialize_der());
    std::fs::write(&cert_file, cert_pem).expect("write cert");
    std::fs::write(&key_file, key_pem).expect("write key");
    TestCert {
        cert: certified.cert.der().clone(),
        cert_file,
        key_file,
    }
}

/// DER as PEM (RFC 7468): base64 in lines of 64 characters between the labels.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A name that differs between calls in one process.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A rustls client configuration that trusts only `cert`.
pub fn trusting(cert: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// `hub` behind the wshub server on 127.0.0.1:0, serving TLS with a fresh certificate loaded
/// from PEM files (as `--tls-cert`/`--tls-key` do); returns the server and the certificate.
pub async fn tls_server(hub: Hub) -> (TestServer, CertificateDer<'static>) {
    let cert = localhost_cert();
    let tls = tls_from_pem_files(&cert.cert_file, &cert.key_file).expect("load the PEM files");
    let server = TestServer::start_with(hub, ServerConfig::default().tls(Some(tls))).await;
    (server, cert.cert)
}
