//! TLS on the collector's listeners (rustls, with the `ring` provider).
//!
//! `--tls-cert` and `--tls-key` turn TLS on for all three listeners: tonic
//! terminates it on the OTLP/gRPC port, [`TlsListener`] on the two HTTP
//! ports (OTLP/HTTP and the query API) in front of `axum::serve`.
//! `--tls-client-ca` also requires a client certificate signed by that CA
//! (mutual TLS) on the two ingest ports, OTLP/gRPC and OTLP/HTTP: a client
//! without one fails the handshake. The query API and UI port never asks for
//! one, as browsers rarely hold a client certificate; it keeps its bearer
//! tokens.
//!
//! The PEM files are read and checked once at start-up, so a missing or
//! broken file stops the collector with an error that names it.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFlags;

/// How long a client may take to finish its TLS handshake on an HTTP port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for `axum::serve` to take them.
const ACCEPT_QUEUE: usize = 64;

/// The collector's TLS settings, checked and ready for the listeners.
#[derive(Clone)]
pub struct ServerTls {
    /// For the query API and UI listener: no client certificates.
    acceptor: TlsAcceptor,
    /// For the OTLP/HTTP listener: client certificates required with
    /// `--tls-client-ca`, else the same as `acceptor`.
    ingest_acceptor: TlsAcceptor,
    /// For tonic, which builds its own rustls configuration from the PEMs.
    grpc: tonic::transport::ServerTlsConfig,
}

impl ServerTls {
    /// Reads the files named by the flags; `None` when TLS is off.
    pub fn from_flags(flags: &TlsFlags) -> anyhow::Result<Option<Self>> {
        let (cert_path, key_path) = match (&flags.tls_cert, &flags.tls_key) {
            (None, None) => {
                anyhow::ensure!(
                    flags.tls_client_ca.is_none(),
                    "--tls-client-ca needs --tls-cert and --tls-key"
                );
                return Ok(None);
            }
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert"),
        };
        let cert_pem = read(cert_path, "--tls-cert")?;
        let key_pem = read(key_path, "--tls-key")?;
        let chain = certificates(&cert_pem, cert_path, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
            anyhow::anyhow!(
                "--tls-key {}: no usable PEM private key: {error}",
                key_path.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("rustls refused its default protocol versions")?;
        let mut http_config = builder
            .clone()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .with_context(|| {
                format!(
                    "--tls-cert {} and --tls-key {} do not form a usable certificate and key",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
        // axum serves HTTP/1.1 here (no HTTP/2 feature).
        http_config.alpn_protocols = vec![b"http/1.1".to_vec()];

        let acceptor = TlsAcceptor::from(Arc::new(http_config));
        let mut ingest_acceptor = acceptor.clone();

        let mut grpc = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
        if let Some(ca_path) = &flags.tls_client_ca {
            let ca_pem = read(ca_path, "--tls-client-ca")?;
            let roots = certificates(&ca_pem, ca_path, "--tls-client-ca")?;
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store.add(root).with_context(|| {
                    format!(
                        "--tls-client-ca {}: not a usable CA certificate",
                        ca_path.display()
                    )
                })?;
            }
            grpc = grpc.client_ca_root(tonic::transport::Certificate::from_pem(&ca_pem));
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider,
            )
            .build()
            .with_context(|| {
                format!(
                    "--tls-client-ca {}: no usable CA certificate",
                    ca_path.display()
                )
            })?;
            let mut ingest_config = builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .context("rustls refused the certificate and key for OTLP/HTTP")?;
            ingest_config.alpn_protocols = vec![b"http/1.1".to_vec()];
            ingest_acceptor = TlsAcceptor::from(Arc::new(ingest_config));
        }
        Ok(Some(Self {
            acceptor,
            ingest_acceptor,
            grpc,
        }))
    }

    /// For the query API and UI listener.
    pub fn query_acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// For the OTLP/HTTP listener (client certificates required with
    /// `--tls-client-ca`).
    pub fn ingest_acceptor(&self) -> TlsAcceptor {
        self.ingest_acceptor.clone()
    }

    /// tonic's configuration for the OTLP/gRPC port.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        self.grpc.clone()
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read the file", path.display()))
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    pem: &[u8],
    path: &Path,
    flag: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("{flag} {}: bad PEM: {error}", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{flag} {}: no PEM certificate in the file",
        path.display()
    );
    Ok(certificates)
}

/// Serves `router` on `listener`, over TLS when `tls` is set; handlers see
/// the client's address as `ConnectInfo<SocketAddr>` either way.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let listener = TlsListener::new(listener, tls)?;
            axum::serve(listener.tap_io(|_| {}), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A TCP listener that hands out connections once their TLS handshake is
/// done. Handshakes run in their own tasks, so a slow or silent client holds
/// up nobody else; one that fails or times out is logged and dropped.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; stops when this value is dropped.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(%local_addr, %error, "failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %local_addr, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, %local_addr, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self {
            handshaken,
            local_addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept task is gone only if this listener is; never here.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
