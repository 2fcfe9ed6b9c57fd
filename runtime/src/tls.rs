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

/// The client side, for bridges: the remote's certificate must chain to `cacertfile`; a
/// client certificate is presented when one is configured.
pub fn client_config(
    ssl: &tidemq_core::config::BridgeTls,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let cafile = ssl
        .cacertfile
        .as_deref()
        .ok_or("bridge ssl.cacertfile is required for TLS")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(cafile, "bridge ssl.cacertfile")? {
        roots
            .add(cert)
            .map_err(|e| format!("bridge ssl.cacertfile {cafile}: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match (&ssl.certfile, &ssl.keyfile) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certs(cert, "bridge ssl.certfile")?,
                read_key(key, None)?,
            )
            .map_err(|e| format!("bridge ssl.certfile {cert} / ssl.keyfile {key}: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
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

/// One DER element: (tag, contents, rest). `None` on anything malformed.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3, commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject common name of an X.509 certificate (the last one if several), as text.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der(certificate)? else {
        return None;
    };
    // version [0] (optional), serial, signature algorithm, issuer, validity, subject.
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 6 {
        let (tag, contents, rest) = der(tbs)?;
        if tag != 0xA0 {
            fields.push((tag, contents));
        }
        tbs = rest;
    }
    let &(SEQUENCE, mut subject) = fields.get(4)? else {
        return None;
    };
    let mut name = None;
    while !subject.is_empty() {
        let (SET, mut set, rest) = der(subject)? else {
            return None;
        };
        subject = rest;
        while !set.is_empty() {
            let (SEQUENCE, pair, rest) = der(set)? else {
                return None;
            };
            set = rest;
            let (OID, oid, value) = der(pair)? else {
                return None;
            };
            if oid == COMMON_NAME {
                let (tag, text, _) = der(value)?;
                // UTF8String, PrintableString, IA5String, TeletexString (as Latin-1-ish ASCII).
                if matches!(tag, 0x0C | 0x13 | 0x16 | 0x14) {
                    name = std::str::from_utf8(text).ok().map(str::to_owned);
                }
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_certificates_give_no_name() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 0, 0, 0, 0, 0],
            &[0x30, 0x02, 0x30, 0x05],
        ] {
            assert_eq!(subject_common_name(bad), None);
        }
    }
}
