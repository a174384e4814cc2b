//! TLS termination with rustls: certificate and key read from PEM files, re-read when the
//! files change (checked every second), so a renewed certificate (cert-manager, a
//! rotated Secret) takes effect without a restart. A broken new pair is reported and the
//! old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file holds no certificate or key.
    #[error("{0}: no PEM certificate or private key found")]
    Empty(PathBuf),
    /// The key is unusable.
    #[error("{path}: unusable private key: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        message: String,
    },
}

#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.to_owned(),
        source,
    })
}

/// The PEM certificates of `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_owned()));
    }
    Ok(certs)
}

/// The PEM private key of `path`.
fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut read(path)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty(path.to_owned()))
}

/// The CA certificates of `path` as trust anchors (at least one).
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|_| TlsError::Empty(path.to_owned()))?;
    }
    Ok(roots)
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = read_key(key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            message: e.to_string(),
        })?;
    Ok(CertifiedKey::new(certs, signing))
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

/// Builds an acceptor (ALPN `h2`, `http/1.1`) from PEM files and starts watching them.
pub fn acceptor(cert: PathBuf, key: PathBuf) -> Result<TlsAcceptor, TlsError> {
    acceptor_with_clients(cert, key, None)
}

/// [`acceptor`], asking clients for a certificate issued by a CA of `client_ca` (PEM):
/// optional (a client without one is served; its mTLS-bound tokens are refused), but one
/// presented must verify (RFC 8705 section 2: the certificate mTLS-bound tokens name).
pub fn acceptor_with_clients(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> Result<TlsAcceptor, TlsError> {
    server_acceptor(cert, key, client_ca, false, false)
}

/// [`acceptor_with_clients`], also taking client certificates no CA of `client_ca` issued,
/// self-signed ones included (RFC 8705 section 2.2, `self_signed_tls_client_auth`). The
/// handshake still proves the client holds the certificate's private key (its
/// CertificateVerify is checked), and a certificate-bound token names the exact
/// certificate by its SHA-256, so binding needs no chain. Nothing else here trusts a
/// client certificate.
pub fn acceptor_with_any_client_certificate(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> Result<TlsAcceptor, TlsError> {
    server_acceptor(cert, key, client_ca, false, true)
}

/// Takes any client certificate whose key signs the handshake; one that `chained` verifies
/// is taken the same way. Client authentication is never mandatory.
#[derive(Debug)]
struct AnyClientCertificate {
    chained: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chained
            .as_ref()
            .map_or(&[], |v| v.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Any certificate: it is only ever compared with a token's `cnf.x5t#S256`, and the
        // signature checks below prove the client holds its key (a malformed certificate
        // fails there).
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// [`acceptor`] for the controller's push port: with `client_ca`, every client must
/// present a certificate it issued (mutual TLS, besides the ServiceAccount token).
pub fn acceptor_requiring_clients(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> Result<TlsAcceptor, TlsError> {
    server_acceptor(cert, key, client_ca, true, false)
}

fn server_acceptor(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    require_client: bool,
    any_client: bool,
) -> Result<TlsAcceptor, TlsError> {
    let resolver = Arc::new(Resolver(ArcSwap::from_pointee(load(&cert, &key)?)));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions are valid");
    let builder = match client_ca {
        None if any_client => builder.with_client_cert_verifier(Arc::new(AnyClientCertificate {
            chained: None,
            algorithms: provider.signature_verification_algorithms,
        })),
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(&ca)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            );
            let verifier = if require_client {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|_| TlsError::Empty(ca))?;
            if any_client {
                builder.with_client_cert_verifier(Arc::new(AnyClientCertificate {
                    chained: Some(verifier),
                    algorithms: provider.signature_verification_algorithms,
                }))
            } else {
                builder.with_client_cert_verifier(verifier)
            }
        }
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut seen = mtimes(&cert, &key);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = mtimes(&cert, &key);
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            match load(&cert, &key) {
                Ok(ck) => {
                    resolver.0.store(Arc::new(ck));
                    info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
                }
            }
        }
    });
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS client configuration that trusts only the CA certificates in `ca` (PEM), read
/// now (call again to pick up a rotated bundle), presenting `client_cert` (certificate
/// chain, private key; PEM) when given, offering `alpn`.
pub fn client_config(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = read_roots(ca)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default protocol versions are valid")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Key {
                path: key.to_owned(),
                message: e.to_string(),
            })?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
