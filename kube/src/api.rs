//! Where the API server is and how to ask it: inside a pod, the service
//! account's token (read again on every request, so a rotated one is used)
//! and the cluster's CA at `KUBERNETES_SERVICE_HOST`; a kubeconfig's
//! current context (its `*-data` certificates inline, its relative paths
//! relative to the file); or an explicit URL with its TLS settings and
//! token file.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::http::{Auth, Credentials, HttpClient, Pem, TlsSettings};

/// Where a pod's service account finds its token and the API's CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// One API server and the client that reaches it.
pub struct Api {
    base: String,
    client: HttpClient,
}

/// Why a request failed.
#[derive(Debug)]
pub enum ApiError {
    /// `404 Not Found`: the object is not there.
    NotFound,
    /// `410 Gone`: the resource version asked for expired.
    Gone,
    /// Anything else: the server down, refusing, or an answer that does not
    /// read.
    Other(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::NotFound => f.write_str("404 Not Found"),
            ApiError::Gone => f.write_str("410 Gone"),
            ApiError::Other(error) => f.write_str(error),
        }
    }
}

impl std::error::Error for ApiError {}

impl Api {
    /// The server of `kubeconfig`'s current context; `user` names who asks
    /// in errors (`scrape job "pods"`).
    pub fn from_kubeconfig(kubeconfig: &Path, user: &str) -> anyhow::Result<Api> {
        let (server, tls, auth) = from_kubeconfig(kubeconfig)?;
        Api::at(&server, &tls, auth, user)
    }

    /// The server at `url`.
    pub fn at(url: &str, tls: &TlsSettings, auth: Option<Auth>, user: &str) -> anyhow::Result<Api> {
        Ok(Api {
            base: url.trim_end_matches('/').to_string(),
            client: HttpClient::build(user, tls, auth)?,
        })
    }

    /// The cluster's server, seen from inside a pod.
    pub fn in_cluster(user: &str) -> anyhow::Result<Api> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            anyhow::anyhow!(
                "{user}: no API server is configured and this is not a pod (KUBERNETES_SERVICE_HOST is unset)"
            )
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let tls = TlsSettings {
            ca_file: Some(Pem::File(dir.join("ca.crt"))),
            ..TlsSettings::default()
        };
        let auth = Auth::bearer_file(dir.join("token"));
        Api::at(&format!("https://{host}:{port}"), &tls, Some(auth), user)
    }

    /// `path` (`/api/v1/pods`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A GET of `path_and_query`, answered within `timeout`.
    pub async fn request(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let url = self.url(path_and_query);
        let response = self
            .client
            .get(&url)
            .map_err(ApiError::Other)?
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| ApiError::Other(format!("GET {url}: {error}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        match status {
            reqwest::StatusCode::NOT_FOUND => Err(ApiError::NotFound),
            reqwest::StatusCode::GONE => Err(ApiError::Gone),
            _ => {
                let body = response.bytes().await.unwrap_or_default();
                Err(ApiError::Other(format!(
                    "GET {url}: {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(512)])
                )))
            }
        }
    }

    /// One object (or list page) at `path_and_query`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ApiError> {
        let response = self
            .request(path_and_query, Duration::from_secs(60))
            .await?;
        let body = response
            .bytes()
            .await
            .map_err(|error| ApiError::Other(format!("GET {path_and_query}: {error}")))?;
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::Other(format!("the answer to GET {path_and_query}: {error}"))
        })
    }
}

/// The parts of a kubeconfig file (`clientcmd/api/v1`) discovery uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<KubeContext>>,
    #[serde(default)]
    clusters: Vec<Named<KubeCluster>>,
    #[serde(default)]
    users: Vec<Named<KubeUser>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Debug, Deserialize)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    #[serde(default)]
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeUser {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    client_key_data: Option<String>,
}

/// The API server, TLS and credentials of a kubeconfig's current context;
/// relative paths are relative to the kubeconfig, inline (`*-data`)
/// certificates are used as they are.
pub(crate) fn from_kubeconfig(path: &Path) -> anyhow::Result<(String, TlsSettings, Option<Auth>)> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    let config: Kubeconfig =
        serde_norway::from_str(&text).with_context(|| format!("kubeconfig {}", path.display()))?;
    let context = config
        .contexts
        .iter()
        .find(|context| context.name == config.current_context)
        .with_context(|| {
            format!(
                "kubeconfig {}: no context named {:?} (current-context)",
                path.display(),
                config.current_context
            )
        })?;
    let cluster = config
        .clusters
        .iter()
        .find(|cluster| cluster.name == context.value.cluster)
        .with_context(|| {
            format!(
                "kubeconfig {}: no cluster named {:?}",
                path.display(),
                context.value.cluster
            )
        })?;
    let default_user = Named {
        name: String::new(),
        value: KubeUser::default(),
    };
    let user = config
        .users
        .iter()
        .find(|user| user.name == context.value.user)
        .unwrap_or(&default_user);
    let dir = path.parent().unwrap_or(Path::new("."));
    let kubeconfig = path;
    let file =
        |path: &Option<String>, data: &Option<String>, name: &str| -> anyhow::Result<Option<Pem>> {
            if let Some(data) = data {
                use base64::Engine as _;
                let origin = format!("{name}-data of kubeconfig {}", kubeconfig.display());
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .with_context(|| format!("{origin}: not base64"))?;
                return Ok(Some(Pem::Inline { origin, pem }));
            }
            Ok(path.as_deref().map(|file| Pem::File(dir.join(file))))
        };
    let tls = TlsSettings {
        ca_file: file(
            &cluster.value.certificate_authority,
            &cluster.value.certificate_authority_data,
            "certificate-authority",
        )?,
        cert_file: file(
            &user.value.client_certificate,
            &user.value.client_certificate_data,
            "client-certificate",
        )?,
        key_file: file(
            &user.value.client_key,
            &user.value.client_key_data,
            "client-key",
        )?,
        server_name: cluster.value.tls_server_name.clone(),
        insecure_skip_verify: cluster.value.insecure_skip_tls_verify,
    };
    let credentials = match (&user.value.token, &user.value.token_file) {
        (Some(token), _) => Some(Credentials::Inline(crate::http::Secret::new(token))),
        (None, Some(file)) => Some(Credentials::File(dir.join(file))),
        (None, None) => None,
    };
    let auth = credentials.map(|credentials| Auth::Authorization {
        scheme: "Bearer".into(),
        credentials,
    });
    Ok((cluster.value.server.clone(), tls, auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_gives_its_current_contexts_server_tls_and_token() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let encoded = base64::engine::general_purpose::STANDARD.encode(ca);
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: prod\ncontexts:\n- name: dev\n  context: {{cluster: dev, user: dev}}\n- name: prod\n  context: {{cluster: prod, user: ops, namespace: shop}}\nclusters:\n- name: dev\n  cluster: {{server: 'https://dev:6443'}}\n- name: prod\n  cluster:\n    server: https://prod:6443\n    certificate-authority-data: {encoded}\nusers:\n- name: ops\n  user:\n    tokenFile: secrets/token\n    client-certificate: certs/ops.pem\n    client-key: certs/ops-key.pem\n"
            ),
        )
        .unwrap();
        let (server, tls, auth) = from_kubeconfig(&path).unwrap();
        assert_eq!(server, "https://prod:6443");
        match tls.ca_file.unwrap() {
            Pem::Inline { origin, pem } => {
                assert_eq!(pem, ca.as_bytes());
                assert!(
                    origin.starts_with("certificate-authority-data of kubeconfig"),
                    "{origin}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            tls.cert_file.unwrap(),
            Pem::File(dir.path().join("certs/ops.pem"))
        );
        assert_eq!(
            auth,
            Some(Auth::Authorization {
                scheme: "Bearer".into(),
                credentials: Credentials::File(dir.path().join("secrets/token")),
            })
        );
        // A current context that is not there is an error naming it.
        std::fs::write(&path, "current-context: gone\ncontexts: []\n").unwrap();
        let error = format!("{:#}", from_kubeconfig(&path).unwrap_err());
        assert!(error.contains("no context named \"gone\""), "{error}");
    }
}
