//! Certificates for the certificate (ECDHE-ECDSA) mode: the listener's own certificate and
//! key, and the CA roots that client certificates must chain to. dimpl hands over the client's
//! leaf certificate and checks only that the client owns its key; validating it against the
//! roots (rustls's WebPKI verifier, on the project's ring provider) and reading the names out
//! of it (x509-cert, the parser dimpl already uses) happen here.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// At most this many names are taken from a certificate, each at most this long: enough for
/// any device certificate, and a bound on what one peer makes the gateway hold.
const MAX_NAMES: usize = 16;
const MAX_NAME_LEN: usize = 255;

/// Why a certificate, key or CA file was refused. Never carries key material: PEM and DER
/// errors are reduced to fixed texts.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PEM file with a CERTIFICATE section", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PRIVATE KEY or EC PRIVATE KEY section, or malformed PEM", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: only ECDSA keys (P-256, P-384) are supported", path.display())]
    UnsupportedKey { path: PathBuf },
    #[error("{}: the key cannot be loaded (not an ECDSA P-256 or P-384 key?)", path.display())]
    BadKey { path: PathBuf },
    #[error("{}: malformed certificate", path.display())]
    BadCertificate { path: PathBuf },
    #[error("{}: cannot use the CA certificates: {reason}", path.display())]
    Roots { path: PathBuf, reason: String },
}

/// The listener's certificate (the leaf only: dimpl sends no chain) and its ECDSA key.
#[derive(Clone)]
pub struct ServerCertificate {
    certificate: Vec<u8>,
    key: Vec<u8>,
}

impl ServerCertificate {
    /// Reads a PEM certificate file (its first certificate is used) and a PEM key file with a
    /// PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) ECDSA key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerCertificate, CertError> {
        let pem = read(cert_file)?;
        let certificate = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| CertError::NoCertificate {
                path: cert_file.to_owned(),
            })?;
        let key_pem = read(key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| CertError::NoKey {
            path: key_file.to_owned(),
        })?;
        ServerCertificate::from_der(certificate.as_ref(), &key).map_err(|e| match e {
            DerError::Certificate => CertError::BadCertificate {
                path: cert_file.to_owned(),
            },
            DerError::UnsupportedKey => CertError::UnsupportedKey {
                path: key_file.to_owned(),
            },
            DerError::BadKey => CertError::BadKey {
                path: key_file.to_owned(),
            },
        })
    }

    /// From DER, checking both the way dimpl will read them (dimpl panics on a key it cannot
    /// load, so no such key may get that far).
    pub(crate) fn from_der(
        certificate: &[u8],
        key: &PrivateKeyDer<'_>,
    ) -> Result<ServerCertificate, DerError> {
        if x509_cert::Certificate::from_der(certificate).is_err() {
            return Err(DerError::Certificate);
        }
        let key = match key {
            PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der(),
            PrivateKeyDer::Sec1(key) => key.secret_sec1_der(),
            _ => return Err(DerError::UnsupportedKey),
        };
        let provider = dimpl::crypto::rust_crypto::default_provider();
        if provider.key_provider.load_private_key(key).is_err() {
            return Err(DerError::BadKey);
        }
        Ok(ServerCertificate {
            certificate: certificate.to_vec(),
            key: key.to_vec(),
        })
    }

    pub(crate) fn to_dimpl(&self) -> dimpl::DtlsCertificate {
        dimpl::DtlsCertificate {
            certificate: self.certificate.clone(),
            private_key: self.key.clone(),
        }
    }
}

/// What is wrong with DER input to [`ServerCertificate::from_der`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DerError {
    Certificate,
    UnsupportedKey,
    BadKey,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("certificate_len", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The CA certificates that client certificates are validated against (`ca_file`).
#[derive(Clone)]
pub struct ClientRoots {
    verifier: Arc<dyn ClientCertVerifier>,
    count: usize,
}

impl ClientRoots {
    /// Reads every CERTIFICATE section of a PEM file as a trust anchor.
    pub fn load(ca_file: &Path) -> Result<ClientRoots, CertError> {
        let pem = read(ca_file)?;
        let mut roots = Vec::new();
        for item in CertificateDer::pem_slice_iter(&pem) {
            roots.push(item.map_err(|_| CertError::NoCertificate {
                path: ca_file.to_owned(),
            })?);
        }
        ClientRoots::from_der(roots).map_err(|reason| CertError::Roots {
            path: ca_file.to_owned(),
            reason,
        })
    }

    pub(crate) fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<ClientRoots, String> {
        let mut store = rustls::RootCertStore::empty();
        let count = roots.len();
        for root in roots {
            store.add(root).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ClientRoots { verifier, count })
    }

    /// Validates a client's leaf certificate at `now` (dimpl passes no intermediates, so the
    /// leaf must be issued by one of the roots) and returns its names.
    pub(crate) fn verify(&self, leaf: &[u8], now: UnixTime) -> Result<Vec<Arc<str>>, String> {
        let der = CertificateDer::from(leaf);
        self.verifier
            .verify_client_cert(&der, &[], now)
            .map_err(|e| format!("client certificate refused: {e}"))?;
        certificate_names(leaf).ok_or_else(|| "client certificate has no usable name".to_owned())
    }
}

impl fmt::Debug for ClientRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRoots")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The subject CN first, then the DNS, e-mail, URI and IP subject alternative names, without
/// repeats. `None` if the certificate does not parse or has no name at all.
pub(crate) fn certificate_names(der: &[u8]) -> Option<Vec<Arc<str>>> {
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = certificate.tbs_certificate();
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut add = |name: &str| {
        if !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && names.len() < MAX_NAMES
            && !names.iter().any(|known| &**known == name)
        {
            names.push(Arc::from(name));
        }
    };
    if let Ok(Some(common_name)) = tbs.subject().common_name() {
        add(&common_name.value());
    }
    if let Ok(Some((_, SubjectAltName(general_names)))) = tbs.get_extension::<SubjectAltName>() {
        for name in &general_names {
            match name {
                GeneralName::DnsName(text)
                | GeneralName::Rfc822Name(text)
                | GeneralName::UniformResourceIdentifier(text) => add(text.as_str()),
                GeneralName::IpAddress(octets) => {
                    let bytes = octets.as_bytes();
                    let ip = <[u8; 4]>::try_from(bytes)
                        .map(IpAddr::from)
                        .or_else(|_| <[u8; 16]>::try_from(bytes).map(IpAddr::from));
                    if let Ok(ip) = ip {
                        add(&ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    (!names.is_empty()).then_some(names)
}
