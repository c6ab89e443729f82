//! TLS termination with rustls (aws-lc-rs): TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, and a
//! certificate that can be replaced while the listener keeps running — on SIGHUP, or when the
//! PEM files change on disk. A reload that fails keeps the certificate in use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::config::TlsConfig;

/// How often the PEM files' modification times are compared.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("certificate and key: {0}")]
    Key(#[source] rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The certificate in use, swappable without touching the listener.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.config.cert)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// Re-reads the PEM files; on failure the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.config, &self.provider)?;
        self.current.store(Arc::new(key));
        tracing::info!(cert = %self.config.cert.display(), "TLS certificate loaded");
        Ok(())
    }
}

/// The rustls server config for the main listener, and the store that reloads its
/// certificate.
pub fn server_config(
    config: &TlsConfig,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertStore>), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let store = Arc::new(CertStore {
        current: ArcSwap::from_pointee(load_certified_key(config, &provider)?),
        config: config.clone(),
        provider: provider.clone(),
    });
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(server), store))
}

fn load_certified_key(
    config: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| pem_error(&config.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&config.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(&config.cert, "no certificate found".into()));
    }
    // Never echo key material: the error names the file and the kind of failure only.
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| pem_error(&config.key, format!("no usable private key ({e})")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Key)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads the certificate when either PEM file changes, until shutdown.
pub async fn watch_files(store: Arc<CertStore>, mut shutdown: watch::Receiver<bool>) {
    let stamp = |s: &CertStore| (modified(&s.config.cert), modified(&s.config.key));
    let mut last = stamp(&store);
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        let now = stamp(&store);
        if now != last {
            last = now;
            if let Err(e) = store.reload() {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one");
            }
        }
    }
}
