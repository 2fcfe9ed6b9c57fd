//! TLS for the `tls` and `wss` listeners: rustls with the ring provider, certificates and
//! keys from PEM files, optional client certificates.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tidemq_core::config::TlsConfig;

/// The one crypto provider of the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs the process-wide default provider (once; later calls are harmless).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certs(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key} {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key} {path}: no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &str, password: Option<&str>) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("tls.keyfile {path}: {e}"))?;
    if text.contains("ENCRYPTED") {
        let hint = if password.is_some() {
            "tls.key_password is set, but"
        } else {
            "the key is encrypted and"
        };
        return Err(format!(
            "tls.keyfile {path}: {hint} encrypted private keys are not supported; \
             decrypt it (e.g. `openssl pkcs8 -in {path} -out plain.pem`) and use an unencrypted \
             PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM key"
        ));
    }
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
        format!(
            "tls.keyfile {path}: no usable private key ({e}); supported: PEM PKCS#8, PKCS#1 (RSA), SEC1 (EC)"
        )
    })
}

/// Builds the server configuration from the `tls` settings; every error names the setting
/// and the file.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certfile = tls
        .certfile
        .as_deref()
        .ok_or("tls.certfile is required for TLS listeners")?;
    let keyfile = tls
        .keyfile
        .as_deref()
        .ok_or("tls.keyfile is required for TLS listeners")?;
    let certs = read_certs(certfile, "tls.certfile")?;
    let key = read_key(keyfile, tls.key_password.as_deref())?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if tls.verify_peer {
        let cafile = tls
            .cacertfile
            .as_deref()
            .ok_or("tls.cacertfile is required when tls.verify_peer is true")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(cafile, "tls.cacertfile")? {
            roots
                .add(cert)
                .map_err(|e| format!("tls.cacertfile {cafile}: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if tls.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|e| format!("tls.cacertfile {cafile}: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.certfile {certfile} / tls.keyfile {keyfile}: {e}"))?;
    Ok(Arc::new(config))
}

/// The TLS configuration new connections use; a reload swaps it, existing connections keep
/// theirs.
#[derive(Clone)]
pub struct SharedTls(Arc<RwLock<Arc<ServerConfig>>>);

impl SharedTls {
    pub fn new(config: Arc<ServerConfig>) -> SharedTls {
        SharedTls(Arc::new(RwLock::new(config)))
    }

    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        self.0.read().ok().map(|c| c.clone())
    }

    pub fn replace(&self, config: Arc<ServerConfig>) {
        if let Ok(mut c) = self.0.write() {
            *c = config;
        }
    }
}
