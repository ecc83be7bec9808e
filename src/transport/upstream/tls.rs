//! The TLS client configuration for broker connections, built once at startup from the
//! `[upstream]` file settings; every connection then shares it. Nothing here does IO on sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName};

/// Why the upstream settings cannot be built. Each message names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A file named in the configuration could not be read.
    #[error("{setting} {}: cannot read the file: {error}", file.display())]
    Read {
        /// The configuration key that names the file.
        setting: &'static str,
        /// The file.
        file: PathBuf,
        /// What the operating system said.
        #[source]
        error: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{setting} {}: not valid PEM: {error}", file.display())]
    Pem {
        /// The configuration key that names the file.
        setting: &'static str,
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        #[source]
        error: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error(
        "{setting} {}: no certificate in the file (expected PEM `BEGIN CERTIFICATE` sections; \
         DER files are not read)",
        file.display()
    )]
    NoCertificate {
        /// The configuration key that names the file.
        setting: &'static str,
        /// The file.
        file: PathBuf,
    },
    /// A certificate in `ca_file` cannot be used as a trust anchor.
    #[error("upstream.ca_file {}: certificate #{index} is not usable as a CA: {error}", file.display())]
    BadCa {
        /// The file.
        file: PathBuf,
        /// Position of the certificate in the file, from 1.
        index: usize,
        /// Why it was refused.
        #[source]
        error: rustls::Error,
    },
    /// The client key file holds no private key.
    #[error(
        "upstream.client_key {}: no private key in the file (expected a PEM `PRIVATE KEY`, \
         `RSA PRIVATE KEY` or `EC PRIVATE KEY` section; encrypted keys are not supported)",
        file.display()
    )]
    NoPrivateKey {
        /// The file.
        file: PathBuf,
    },
    /// The client certificate and key were read but cannot be used together.
    #[error(
        "upstream.client_cert {} with upstream.client_key {}: {error}",
        cert.display(),
        key.display()
    )]
    ClientAuth {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why (for example the key does not belong to the certificate).
        #[source]
        error: rustls::Error,
    },
    /// `client_cert` without `client_key`.
    #[error("upstream.client_cert is set but upstream.client_key is not")]
    MissingClientKey,
    /// `client_key` without `client_cert`.
    #[error("upstream.client_key is set but upstream.client_cert is not")]
    MissingClientCert,
    /// No `ca_file` and the system store gave no usable root certificate.
    #[error("no usable root certificate in the system store ({detail}); set upstream.ca_file")]
    NoSystemRoots {
        /// What the loader reported.
        detail: String,
    },
    /// The broker host cannot be checked against a certificate.
    #[error("upstream.url: `{host}` cannot be used as a TLS server name: {error}")]
    ServerName {
        /// The host from the url.
        host: String,
        /// Why.
        #[source]
        error: InvalidDnsNameError,
    },
    /// rustls refused the configuration itself.
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
}

/// Builds the client configuration: trust `ca_file` (PEM) if given, else the system's roots;
/// authenticate with `client_cert` and `client_key` (PEM) if given.
pub(super) fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<ClientConfig, UpstreamError> {
    // Check the pairing before touching files, so the message is about the real mistake.
    let client_auth = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => return Err(UpstreamError::MissingClientKey),
        (None, Some(_)) => return Err(UpstreamError::MissingClientCert),
        (None, None) => None,
    };
    let roots = match ca_file {
        Some(file) => file_roots(file)?,
        None => system_roots()?,
    };
    // An explicit provider instead of the process-wide default: nothing else has to install one
    // first, and no other crate's choice can change what the gateway uses.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamError::Tls)?
        .with_root_certificates(roots);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_file, key_file)) => {
            let certs = read_certificates("upstream.client_cert", cert_file)?;
            let key = read_private_key(key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|error| UpstreamError::ClientAuth {
                    cert: cert_file.to_path_buf(),
                    key: key_file.to_path_buf(),
                    error,
                })
        }
    }
}

/// The name the broker's certificate must carry: a DNS name or an IP address.
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, UpstreamError> {
    ServerName::try_from(host.to_owned()).map_err(|error| UpstreamError::ServerName {
        host: host.to_owned(),
        error,
    })
}

fn file_roots(file: &Path) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in read_certificates("upstream.ca_file", file)?
        .into_iter()
        .enumerate()
    {
        // Unlike the system store, every certificate here was put there on purpose, so a bad
        // one is an error rather than something to skip.
        roots.add(cert).map_err(|error| UpstreamError::BadCa {
            file: file.to_path_buf(),
            index: index + 1,
            error,
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, UpstreamError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    // System stores routinely hold a few certificates webpki cannot parse and directories that
    // cannot be read; that only matters when nothing usable is left.
    if added == 0 {
        let mut detail = format!("{ignored} unusable certificate(s)");
        for error in &loaded.errors {
            detail.push_str("; ");
            detail.push_str(&error.to_string());
        }
        return Err(UpstreamError::NoSystemRoots { detail });
    }
    if ignored > 0 || !loaded.errors.is_empty() {
        tracing::debug!(
            added,
            ignored,
            errors = loaded.errors.len(),
            "system root store partly unusable"
        );
    }
    Ok(roots)
}

fn read_file(setting: &'static str, file: &Path) -> Result<Vec<u8>, UpstreamError> {
    std::fs::read(file).map_err(|error| UpstreamError::Read {
        setting,
        file: file.to_path_buf(),
        error,
    })
}

fn read_certificates(
    setting: &'static str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let text = read_file(setting, file)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| UpstreamError::Pem {
            setting,
            file: file.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(UpstreamError::NoCertificate {
            setting,
            file: file.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_private_key(file: &Path) -> Result<PrivateKeyDer<'static>, UpstreamError> {
    const SETTING: &str = "upstream.client_key";
    let text = read_file(SETTING, file)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| match error {
        pem::Error::NoItemsFound => UpstreamError::NoPrivateKey {
            file: file.to_path_buf(),
        },
        error => UpstreamError::Pem {
            setting: SETTING,
            file: file.to_path_buf(),
            error,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/transport/upstream/testdata")
            .join(name)
    }

    #[test]
    fn missing_ca_file_names_the_file() {
        let file = testdata("no-such-file.pem");
        let err = client_config(Some(&file), None, None).unwrap_err();
        assert!(matches!(err, UpstreamError::Read { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("upstream.ca_file"), "{text}");
        assert!(text.contains("no-such-file.pem"), "{text}");
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        // A key file is valid PEM but holds no certificate.
        let file = testdata("leaf.key");
        let err = client_config(Some(&file), None, None).unwrap_err();
        assert!(
            matches!(err, UpstreamError::NoCertificate { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("leaf.key"), "{err}");
    }

    #[test]
    fn file_without_pem_sections_has_no_certificate() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = client_config(Some(&file), None, None).unwrap_err();
        assert!(
            matches!(err, UpstreamError::NoCertificate { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_pem_is_refused() {
        // A certificate section without its END line.
        let file = testdata("truncated.pem");
        let err = client_config(Some(&file), None, None).unwrap_err();
        assert!(matches!(err, UpstreamError::Pem { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("truncated.pem") && text.contains("not valid PEM"),
            "{text}"
        );
    }

    #[test]
    fn client_cert_and_key_come_together() {
        let cert = testdata("leaf.pem");
        let key = testdata("leaf.key");
        let err = client_config(None, Some(&cert), None).unwrap_err();
        assert!(matches!(err, UpstreamError::MissingClientKey), "{err:?}");
        let err = client_config(None, None, Some(&key)).unwrap_err();
        assert!(matches!(err, UpstreamError::MissingClientCert), "{err:?}");
    }

    #[test]
    fn client_key_file_without_key_is_refused() {
        let ca = testdata("ca.pem");
        let cert = testdata("leaf.pem");
        let err = client_config(Some(&ca), Some(&cert), Some(&cert)).unwrap_err();
        assert!(matches!(err, UpstreamError::NoPrivateKey { .. }), "{err:?}");
        assert!(err.to_string().contains("upstream.client_key"), "{err}");
    }

    #[test]
    fn client_key_of_another_certificate_is_refused() {
        let ca = testdata("ca.pem");
        let cert = testdata("leaf.pem");
        let wrong_key = testdata("ca.key");
        let err = client_config(Some(&ca), Some(&cert), Some(&wrong_key)).unwrap_err();
        assert!(matches!(err, UpstreamError::ClientAuth { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("leaf.pem") && text.contains("ca.key"),
            "{text}"
        );
    }

    #[test]
    fn ca_file_and_client_identity_build() {
        let ca = testdata("ca.pem");
        let cert = testdata("leaf.pem");
        let key = testdata("leaf.key");
        let config = client_config(Some(&ca), Some(&cert), Some(&key)).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn system_roots_build() {
        let config = client_config(None, None, None).unwrap();
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("broker.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        let err = server_name("not a host").unwrap_err();
        assert!(err.to_string().contains("not a host"), "{err}");
    }
}
