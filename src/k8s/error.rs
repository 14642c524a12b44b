//! The errors of the Kubernetes layer: takes kube's errors and the object and scope errors
//! below them; gives one enum for `live` and `csi`, with retryable failures told apart
//! (throttling, server errors, lost connections). Must not depend on any layer above.

use std::time::Duration;

use super::objects::ResourceError;
use super::source::ClusterError;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot load the Kubernetes configuration{}: {reason}", context.as_deref().map(|c| format!(" for context `{c}`")).unwrap_or_default())]
    Config {
        context: Option<String>,
        reason: String,
    },
    /// `error`, not `source`: the message gives its cause once ([`api_cause`]), and a source
    /// would print the client's chain around it again.
    #[error("cannot {what}: {}", api_cause(.error))]
    Api { what: String, error: kube::Error },
    #[error(transparent)]
    Malformed(#[from] ResourceError),
    #[error(transparent)]
    Scope(#[from] ClusterError),
    #[error("the capture was stopped: the backup it fed failed")]
    Stopped,
    #[error("{what}: {reason}")]
    Volume { what: String, reason: String },
    #[error("CustomResourceDefinition {name} was not Established within {after:?}; its custom resources cannot be restored yet")]
    NotEstablished { name: String, after: Duration },
}

impl LiveError {
    /// Throttling, server errors and connection failures are worth retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            LiveError::Api {
                error: kube::Error::Api(s),
                ..
            } => s.code == 429 || s.code >= 500,
            LiveError::Api {
                error: kube::Error::HyperError(_) | kube::Error::Service(_),
                ..
            } => true,
            _ => false,
        }
    }
}

/// What went wrong with an API call, once: the server's refusal with its reason and code, or
/// that the server could not be reached (with the innermost cause, e.g. `Connection refused`).
pub fn api_cause(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!(
            "the API server refused: {} ({}, HTTP {})",
            s.message, s.reason, s.code
        ),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let mut cause: &(dyn std::error::Error + 'static) = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("the API server is unreachable: {cause}")
        }
        other => other.to_string(),
    }
}
