//! TLS from PEM files, reloaded when they change: the files are read every
//! `reload_interval` and compared byte for byte with what was last tried, which
//! works the same for files rewritten in place and for a Kubernetes Secret's
//! symlink swap (mtimes there belong to the links). A new set that does not
//! load (a half-written file, a key that does not match its certificate)
//! keeps the current configuration; the error is logged and counted.
//!
//! Servers terminate TLS themselves ([`accept_tls`]) so that every new
//! connection uses the configuration current at its handshake; connections
//! already open keep the certificate they were made with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Certificate files for TLS (PEM), reloaded when they change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
    /// CA that peers' certificates must chain to: on a server, clients must
    /// present a certificate (mutual TLS); on a client, the server's CA.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How often the files are read for changes; new connections use a new
    /// set once it loads (a set that does not load keeps the current one).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    #[schemars(schema_with = "crate::config_schema::duration")]
    pub reload_interval: Duration,
    /// On a client: the name the server's certificate must carry, instead
    /// of the host dialled (workers announce their pod IPs; one mesh
    /// certificate names them all by a DNS name). Unused on a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl TlsFiles {
    /// Checks what serde cannot; the error names the key at fault
    /// (relative to this section).
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.reload_interval < Duration::from_millis(10) {
            return Err(TlsError::Invalid {
                part: "reload_interval",
                reason: "must be at least 10ms".into(),
            });
        }
        Ok(())
    }
}

/// Why TLS could not be set up. Every message starts with the part at fault
/// (`cert`, `key`, `ca`, `cert and key`, or a key of [`TlsFiles`]), so that
/// configuration errors can name the key.
///
/// Comparable, so that a reload that keeps failing the same way is reported
/// once rather than on every tick.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{part}: cannot read {path}: {reason}")]
    Read {
        part: &'static str,
        path: String,
        reason: String,
    },
    /// A part does not hold what it should.
    #[error("{part}: {reason}")]
    Invalid { part: &'static str, reason: String },
    /// rustls refused the protocol versions (never, with the ring provider).
    #[error("{0}")]
    Protocol(String),
    /// A host that cannot be a TLS server name.
    #[error("{host:?} is not a valid TLS server name: {reason}")]
    ServerName { host: String, reason: String },
    /// The files under configuration key `what` did not load at startup.
    /// (`cause` is part of the message, so it is not also a `source()`.)
    #[error("{what}.{cause}")]
    Config {
        what: &'static str,
        cause: Box<TlsError>,
    },
}

fn invalid(part: &'static str, reason: impl ToString) -> TlsError {
    TlsError::Invalid {
        part,
        reason: reason.to_string(),
    }
}

fn read_error(part: &'static str, path: &Path, e: &std::io::Error) -> TlsError {
    TlsError::Read {
        part,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Successful and failed reloads, by what was reloaded and the outcome.
pub(crate) const RELOADS: &str = "routemesh_tls_reloads_total";
/// A TLS handshake must finish within this, so a silent client cannot hold
/// a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes of one set of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Pem {
    /// Reads the files (at startup; blocking is fine there).
    fn read_now(files: &TlsFiles) -> Result<Self, TlsError> {
        let read =
            |p: &PathBuf, what: &'static str| std::fs::read(p).map_err(|e| read_error(what, p, &e));
        Ok(Pem {
            cert: read(&files.cert, "cert")?,
            key: read(&files.key, "key")?,
            ca: files.ca.as_ref().map(|p| read(p, "ca")).transpose()?,
        })
    }

    /// Reads the files without blocking the runtime.
    async fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |p: PathBuf, what: &'static str| async move {
            tokio::fs::read(&p)
                .await
                .map_err(|e| read_error(what, &p, &e))
        };
        Ok(Pem {
            cert: read(files.cert.clone(), "cert").await?,
            key: read(files.key.clone(), "key").await?,
            ca: match &files.ca {
                Some(p) => Some(read(p.clone(), "ca").await?),
                None => None,
            },
        })
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("cert", e))?;
        if chain.is_empty() {
            return Err(invalid("cert", "no certificate in the file"));
        }
        Ok(chain)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| invalid("key", e))
    }

    fn roots(&self) -> Result<Option<RootCertStore>, TlsError> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots
                .add(cert.map_err(|e| invalid("ca", e))?)
                .map_err(|e| invalid("ca", e))?;
        }
        if roots.is_empty() {
            return Err(invalid("ca", "no certificate in the file"));
        }
        Ok(Some(roots))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration: this side's certificate, and with a CA, client
/// certificates required (mutual TLS). `alpn`: the protocols offered.
pub fn server_config(pem: &Pem, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Protocol(e.to_string()))?;
    let builder = match pem.roots()? {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| invalid("ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(pem.chain()?, pem.private_key()?)
        .map_err(|e| invalid("cert and key", e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration for gRPC (HTTP/2): the CA that servers'
/// certificates must chain to, and this side's certificate for mutual TLS.
pub fn client_config(pem: &Pem) -> Result<ClientConfig, TlsError> {
    let roots = pem
        .roots()?
        .ok_or_else(|| invalid("ca", "needed to verify the servers' certificates"))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Protocol(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(pem.chain()?, pem.private_key()?)
        .map_err(|e| invalid("cert and key", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A configuration that follows its files; cheap to clone and to read.
#[derive(Debug)]
pub struct Reloading<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<T> Reloading<T> {
    /// The configuration now (for the next handshake).
    pub fn current(&self) -> Arc<T> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.current.write() {
            Ok(mut c) => *c = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// Loads `files` with `build` now (an error here is a startup error naming
/// `what`), then re-reads them every `files.reload_interval` until `stop`,
/// swapping in each new set that builds.
pub fn watch<T, F>(
    files: &TlsFiles,
    what: &'static str,
    build: F,
    stop: CancellationToken,
) -> Result<(Reloading<T>, JoinHandle<()>), TlsError>
where
    T: Send + Sync + 'static,
    F: Fn(&Pem) -> Result<T, TlsError> + Send + 'static,
{
    let prefix = |e: TlsError| TlsError::Config {
        what,
        cause: Box::new(e),
    };
    let pem = Pem::read_now(files).map_err(prefix)?;
    let reloading = Reloading {
        current: Arc::new(RwLock::new(Arc::new(build(&pem).map_err(prefix)?))),
    };
    let files = files.clone();
    let task = tokio::spawn({
        let reloading = reloading.clone();
        async move {
            let mut tried = pem;
            let mut last_error = None;
            let mut tick = tokio::time::interval(files.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let outcome = match Pem::read(&files).await {
                    // Unchanged since the last attempt, good or bad: nothing to do.
                    Ok(pem) if pem == tried => continue,
                    Ok(pem) => {
                        let built = build(&pem);
                        tried = pem;
                        built.map(|config| reloading.set(config))
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        tracing::info!(what, "TLS certificates reloaded");
                        metrics::counter!(RELOADS, "what" => what, "result" => "ok").increment(1);
                        last_error = None;
                    }
                    Err(e) => {
                        // Once per distinct problem, not every tick.
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(what, error = %e, "new TLS certificates not loaded; keeping the current ones");
                            metrics::counter!(RELOADS, "what" => what, "result" => "error")
                                .increment(1);
                        }
                        last_error = Some(e);
                    }
                }
            }
        }
    });
    Ok((reloading, task))
}

/// The server side of a TLS connection, under its listener's limits.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<crate::conn::Guarded<TcpStream>>;

/// A TLS connection a server accepted, with its peer's address.
pub type Accepted = (ServerTlsStream, SocketAddr);

/// Completes the TLS handshakes of the connections `incoming` yields (see
/// [`crate::conn::accept_guarded`]; concurrently, each bounded in time) with
/// the configuration `config` gives at that moment. Handshakes that fail are
/// logged and dropped. Stops when `stop` is cancelled, `incoming` ends, or
/// the receiver is dropped.
pub fn accept_tls<F>(
    mut incoming: mpsc::Receiver<crate::conn::Admitted>,
    config: F,
    stop: CancellationToken,
) -> (mpsc::Receiver<Accepted>, JoinHandle<()>)
where
    F: Fn() -> Arc<ServerConfig> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        // Dropped (aborting handshakes in progress) when the loop ends.
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            while handshakes.try_join_next().is_some() {}
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                accepted = incoming.recv() => match accepted {
                    Some(a) => a,
                    None => return,
                },
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config());
            let tx = tx.clone();
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (rx, task)
}

/// Connects gRPC channels over TLS with the configuration current at each
/// (re)connection. The channel's URI must be `http://` (TLS is done here,
/// not by tonic); `server_name` is what the server's certificate must name.
#[derive(Clone)]
pub struct TlsConnector {
    config: Reloading<ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsConnector {
    pub fn new(config: Reloading<ClientConfig>, host: &str) -> Result<Self, TlsError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                TlsError::ServerName {
                    host: host.to_string(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            config,
            server_name,
        })
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<Result<Self::Response, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_refused_with_the_part_at_fault() {
        let pem = Pem {
            cert: b"not a certificate".to_vec(),
            key: Vec::new(),
            ca: None,
        };
        let e = server_config(&pem, &[b"h2"]).unwrap_err().to_string();
        assert!(e.starts_with("cert:") || e.starts_with("key:"), "{e}");
        let e = client_config(&pem).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ca: needed to verify the servers' certificates"
        );
    }

    #[test]
    fn startup_errors_name_the_configuration_key() {
        let files = TlsFiles {
            cert: "/nonexistent/routemesh-test/cert.pem".into(),
            key: "/nonexistent/routemesh-test/key.pem".into(),
            ca: None,
            reload_interval: Duration::from_secs(10),
            server_name: None,
        };
        let stop = CancellationToken::new();
        let e = watch(&files, "gateway.tls", client_config, stop).unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with(
                "gateway.tls.cert: cannot read /nonexistent/routemesh-test/cert.pem: "
            ),
            "{message}"
        );
        assert!(matches!(
            e,
            TlsError::Config { what: "gateway.tls", ref cause }
                if matches!(**cause, TlsError::Read { part: "cert", .. })
        ));
    }

    #[test]
    fn reload_interval_is_checked() {
        let mut files = TlsFiles {
            cert: "c".into(),
            key: "k".into(),
            ca: None,
            reload_interval: Duration::from_millis(10),
            server_name: None,
        };
        assert_eq!(files.validate(), Ok(()));
        files.reload_interval = Duration::from_millis(9);
        assert_eq!(
            files.validate().unwrap_err().to_string(),
            "reload_interval: must be at least 10ms"
        );
    }
}
