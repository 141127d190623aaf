//! The Kubernetes API as Sightline reads it.
//!
//! - [`api`]: where the API server is (inside a pod: the service account's
//!   token and CA; a kubeconfig's current context; an explicit URL with
//!   `tls_config`) and a GET of one object;
//! - [`types`]: the fields of the upstream objects (`k8s.io/api`) that the
//!   agent and the collector read, deserialized from the API's JSON;
//! - [`watch`]: list-then-watch of one collection, as client-go's
//!   reflectors do it (paged lists, bookmarks, resuming from the last
//!   version, relisting on `410 Gone`, backoff while the server is away);
//! - [`http`]: the TLS client under all of it, also used by scrape jobs.
//!
//! A kept client (`kube` with `k8s-openapi`) does all this and much more;
//! it is not used because the agent needs two GETs and one watch and its
//! compile cost and binary size are not worth that (see ARCHITECTURE.md).

pub mod api;
pub mod http;
pub mod types;
pub mod watch;

pub use api::{Api, ApiError};
pub use types::{ObjectMeta, OwnerReference, Pod};
pub use watch::{Change, Watch, WatchStats};
