//! `sightline-demo --secure`: the demo's own small PKI and bearer tokens,
//! made fresh at every start in `<data-dir>/secrets/`.
//!
//! ```text
//! ca.pem, ca-key.pem           the demo CA (verifies both sides)
//! server.pem, server-key.pem   the collector, for 127.0.0.1 and localhost
//! client.pem, client-key.pem   the agent and the services (mutual TLS)
//! ingest-token, query-token    random bearer tokens, 256 bits each
//! ```
//!
//! Private keys and tokens are created with mode 0600 (the directory 0700),
//! and every file is written beside its final name and renamed into place,
//! so a reader never sees half a file. The tokens are never logged; the
//! launcher prints the query token once, on stdout, for the user.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::RngCore as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Random bytes in a token (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// Where the collector's certificate is valid: what the demo's clients dial.
const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// The files of a `--secure` demo and the two tokens.
#[derive(Clone)]
pub struct Secrets {
    /// The CA certificate: give it to `curl --cacert` or a browser.
    pub ca_cert: PathBuf,
    /// The collector's certificate and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The certificate and key of the agent and the services.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The token the receivers accept, and its file.
    pub ingest_token: String,
    pub ingest_token_file: PathBuf,
    /// The token the query API and the UI accept, and its file.
    pub query_token: String,
    pub query_token_file: PathBuf,
}

impl std::fmt::Debug for Secrets {
    // The paths only: a token must not end up in a log line.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Secrets")
            .field("ca_cert", &self.ca_cert)
            .field("ingest_token_file", &self.ingest_token_file)
            .field("query_token_file", &self.query_token_file)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Makes a new CA, server and client certificate and two tokens, and
    /// writes them into `dir` (created if needed), replacing older ones.
    pub fn generate(dir: &Path) -> anyhow::Result<Secrets> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;

        let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .context("failed to set up the CA certificate")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sightline demo CA");
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("failed to sign the CA certificate")?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().context("failed to generate a key")?;
            let mut params = CertificateParams::new(names)
                .with_context(|| format!("failed to set up the {common_name} certificate"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &issuer)
                .with_context(|| format!("failed to sign the {common_name} certificate"))?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf(
            SERVER_NAMES.iter().map(|name| (*name).to_owned()).collect(),
            "sightline-collector",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key_pem) = leaf(
            vec!["sightline-demo-client".to_owned()],
            "sightline-demo-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let ingest_token = random_token();
        let query_token = random_token();

        let public = |name: &str, text: &str| write_file(&dir.join(name), text, 0o644);
        let private = |name: &str, text: &str| write_file(&dir.join(name), text, 0o600);
        private("ca-key.pem", &ca_key_pem)?;
        Ok(Secrets {
            ca_cert: public("ca.pem", &ca_cert.pem())?,
            server_cert: public("server.pem", &server_pem)?,
            server_key: private("server-key.pem", &server_key_pem)?,
            client_cert: public("client.pem", &client_pem)?,
            client_key: private("client-key.pem", &client_key_pem)?,
            ingest_token_file: private("ingest-token", &format!("{ingest_token}\n"))?,
            ingest_token,
            query_token_file: private("query-token", &format!("{query_token}\n"))?,
            query_token,
        })
    }

    /// `OTEL_EXPORTER_OTLP_HEADERS` for the services: the ingest token, in
    /// the variable's URL-encoded `key=value` form.
    pub fn otlp_headers(&self) -> String {
        format!("authorization=Bearer%20{}", self.ingest_token)
    }
}

/// 256 random bits from the thread's CSPRNG (ChaCha, seeded by the OS), as
/// lowercase hex.
fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes `text` to `path` with `mode`: into a new file beside it, then
/// renamed over it. Returns `path`.
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<PathBuf> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".new");
    let staging = PathBuf::from(staging);
    // A leftover from a crash may have another mode; `mode` applies only to
    // a file being created.
    let _ = std::fs::remove_file(&staging);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&staging)
        .with_context(|| format!("failed to create {}", staging.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", staging.display()))?;
    std::fs::rename(&staging, path)
        .with_context(|| format!("failed to move {} into place", path.display()))?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn keys_and_tokens_are_private_and_certificates_parse() {
        let dir = tempfile::tempdir().unwrap();
        let secrets_dir = dir.path().join("secrets");
        let secrets = Secrets::generate(&secrets_dir).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secrets_dir), 0o700);
        for private in [
            &secrets.server_key,
            &secrets.client_key,
            &secrets.ingest_token_file,
            &secrets.query_token_file,
            &secrets_dir.join("ca-key.pem"),
        ] {
            assert_eq!(mode(private), 0o600, "{}", private.display());
        }
        for certificate in [&secrets.ca_cert, &secrets.server_cert, &secrets.client_cert] {
            let pem = std::fs::read(certificate).unwrap();
            reqwest::Certificate::from_pem(&pem).unwrap();
            assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        }
        assert_eq!(
            std::fs::read_to_string(&secrets.query_token_file).unwrap(),
            format!("{}\n", secrets.query_token)
        );
        assert_eq!(secrets.ingest_token.len(), 2 * TOKEN_BYTES);
        assert!(secrets.ingest_token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(secrets.ingest_token, secrets.query_token);
        assert!(!format!("{secrets:?}").contains(&secrets.query_token));
        assert!(!format!("{secrets:?}").contains(&secrets.ingest_token));

        // A second start replaces everything, leaving no staging files.
        let first_ca = std::fs::read(&secrets.ca_cert).unwrap();
        let again = Secrets::generate(&secrets_dir).unwrap();
        assert_ne!(again.query_token, secrets.query_token);
        assert_ne!(std::fs::read(&again.ca_cert).unwrap(), first_ca);
        let leftovers: Vec<_> = std::fs::read_dir(&secrets_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".new"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn the_services_tls_settings_accept_the_generated_files() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::generate(dir.path()).unwrap();
        let env = [
            (crate::telemetry::OTLP_CA_ENV, &secrets.ca_cert),
            (crate::telemetry::OTLP_CLIENT_CERT_ENV, &secrets.client_cert),
            (crate::telemetry::OTLP_CLIENT_KEY_ENV, &secrets.client_key),
        ];
        let var = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, path)| path.as_os_str().to_owned())
        };
        let tls = crate::telemetry::exporter_tls("https://127.0.0.1:4317", var).unwrap();
        assert!(tls.is_some());
        assert_eq!(
            secrets.otlp_headers(),
            format!("authorization=Bearer%20{}", secrets.ingest_token)
        );
    }
}
