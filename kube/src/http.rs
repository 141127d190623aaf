//! An HTTP client with Prometheus' `tls_config` and the credentials a
//! request sends (`authorization`, `bearer_token(_file)`, `basic_auth`):
//! one per scrape job, and one per Kubernetes API server.
//!
//! [`HttpClient::build`] makes one reqwest client with its own
//! rustls configuration (ring provider): its CA (the system's trust
//! store when it names none), its client certificate for mutual TLS, a
//! `server_name` to verify the target's certificate against, or no
//! verification at all with `insecure_skip_verify`. The CA, certificate and
//! key files are read once, when the scraper starts, so a missing or broken
//! file stops the start with an error naming its user and the file, as
//! Prometheus refuses such a configuration. Credentials files are read on
//! every request, as Prometheus does, so a rotated token is picked up without
//! a restart; an unreadable one fails that request with an error naming the
//! file.
//!
//! Secrets never reach a log line or an API answer: [`Secret`] does not
//! debug-print, and errors name files, never their content.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// A password or token from the config file; never printed.
pub use sightline_vocab::secret::Secret;

/// Where PEM comes from: a file, read when the client is built, or the
/// bytes themselves (a kubeconfig's `*-data` fields).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline { origin: String, pem: Vec<u8> },
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Pem {
    /// The file, or where the inline PEM was given; never its content.
    pub fn describe(&self) -> String {
        match self {
            Pem::File(path) => path.display().to_string(),
            Pem::Inline { origin, .. } => origin.clone(),
        }
    }

    fn read(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Pem::File(path) => std::fs::read(path)
                .with_context(|| format!("{key} {}: cannot read the file", path.display())),
            Pem::Inline { pem, .. } => Ok(pem.clone()),
        }
    }
}

/// `tls_config` with its paths resolved against the config file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trusted CAs; the system's trust store when unset.
    pub ca_file: Option<Pem>,
    /// Client certificate and key, for targets that require mutual TLS.
    pub cert_file: Option<Pem>,
    pub key_file: Option<Pem>,
    /// The name the target's certificate must carry, instead of the host of
    /// the scrape URL (the URL's host is still sent as SNI).
    pub server_name: Option<String>,
    /// Accept any certificate: no protection against a man in the middle.
    pub insecure_skip_verify: bool,
}

/// A secret given inline or read from a file on every use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Inline(Secret),
    File(PathBuf),
}

impl Credentials {
    /// The secret; a file's content without surrounding whitespace, as
    /// Prometheus trims it.
    fn read(&self) -> Result<Secret, String> {
        match self {
            Credentials::Inline(secret) => Ok(secret.clone()),
            Credentials::File(path) => std::fs::read_to_string(path)
                .map(|text| Secret::new(text.trim()))
                .map_err(|error| {
                    format!("cannot read credentials file {}: {error}", path.display())
                }),
        }
    }
}

/// What a request carries to authenticate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: <scheme> <credentials>` (`Bearer` by default).
    Authorization {
        scheme: String,
        credentials: Credentials,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        password: Option<Credentials>,
    },
}

impl Auth {
    /// `Authorization: Bearer <token>`, the token read from `file` on
    /// every request (a service account's, a rotated one picked up).
    pub fn bearer_file(file: PathBuf) -> Auth {
        Auth::Authorization {
            scheme: "Bearer".into(),
            credentials: Credentials::File(file),
        }
    }
}

/// One HTTP client and its credentials; clones share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    auth: Option<Arc<Auth>>,
}

impl HttpClient {
    /// The client of `user` (`scrape job "web"`, named in errors); reads
    /// its TLS files.
    pub fn build(user: &str, tls: &TlsSettings, auth: Option<Auth>) -> anyhow::Result<Self> {
        let config =
            client_tls_config(tls).with_context(|| format!("{user}: invalid tls_config"))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("Sightline/", env!("CARGO_PKG_VERSION")))
            .use_preconfigured_tls(config)
            .build()
            .with_context(|| format!("{user}: cannot build the HTTP client"))?;
        Ok(HttpClient {
            client,
            auth: auth.map(Arc::new),
        })
    }

    /// A GET of `url` with the credentials; an error names a credentials
    /// file that cannot be read.
    pub fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, String> {
        let request = self.client.get(url);
        Ok(match self.auth.as_deref() {
            None => request,
            Some(Auth::Authorization {
                scheme,
                credentials,
            }) => {
                let secret = credentials.read()?;
                let mut value =
                    reqwest::header::HeaderValue::try_from(format!("{scheme} {}", secret.expose()))
                        .map_err(|_| {
                            "authorization credentials are not a valid header value".to_string()
                        })?;
                value.set_sensitive(true);
                request.header(reqwest::header::AUTHORIZATION, value)
            }
            Some(Auth::Basic { username, password }) => {
                let password = password.as_ref().map(Credentials::read).transpose()?;
                // reqwest marks the header sensitive.
                request.basic_auth(username, password.as_ref().map(Secret::expose))
            }
        })
    }
}

/// The rustls configuration of a client.
fn client_tls_config(tls: &TlsSettings) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls refused its default protocol versions")?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AcceptAnyCertificate { provider })
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for certificate in certificates(path, "ca_file")? {
                    roots.add(certificate).with_context(|| {
                        format!("ca_file {}: not a usable CA certificate", path.describe())
                    })?;
                }
            }
            None => {
                // Bad entries of the system bundle are skipped, as Go does.
                roots.add_parsable_certificates(system_roots());
            }
        }
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("no usable trusted CA")?;
        match &tls.server_name {
            None => webpki,
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .with_context(|| format!("server_name {name:?} is not a valid DNS name"))?;
                Arc::new(FixedServerName {
                    inner: webpki,
                    name,
                })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => {
            let chain = certificates(cert_path, "cert_file")?;
            let key =
                PrivateKeyDer::from_pem_slice(&key_path.read("key_file")?).map_err(|error| {
                    anyhow::anyhow!(
                        "key_file {}: no usable PEM private key: {error}",
                        key_path.describe()
                    )
                })?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "cert_file {} and key_file {} do not form a usable certificate and key",
                    cert_path.describe(),
                    key_path.describe()
                )
            })?
        }
        (Some(_), None) => anyhow::bail!("cert_file needs key_file"),
        (None, Some(_)) => anyhow::bail!("key_file needs cert_file"),
    };
    Ok(config)
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Pem, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = path.read(key)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("{key} {}: bad PEM: {error}", path.describe()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{key} {}: no PEM certificate in it",
        path.describe()
    );
    Ok(certificates)
}

/// The system's trusted CAs: `SSL_CERT_FILE`, else the first bundle found
/// where Linux distributions keep it (Go's list); none when there is none.
fn system_roots() -> Vec<CertificateDer<'static>> {
    const BUNDLES: [&str; 6] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let paths = from_env
        .into_iter()
        .chain(BUNDLES.iter().map(PathBuf::from));
    for path in paths {
        if let Ok(pem) = std::fs::read(&path) {
            return CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
        }
    }
    tracing::debug!("no system CA bundle found; https targets need a tls_config ca_file");
    Vec::new()
}

/// Verifies the target's certificate for `server_name` instead of the host
/// the scrape URL names.
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake
/// signatures are still checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
