//! The one error type of `everestctl`. Messages say what was being done and what to do next;
//! none carries a credential (the cloud client and `kube` keep keys and tokens out of theirs).

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being attempted.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The daemon configuration file could not be used.
    #[error("configuration: {0}")]
    Config(String),
    /// A cloud API call failed.
    #[error("backend {backend}: {message}")]
    Cloud {
        /// The backend instance asked.
        backend: String,
        /// What failed.
        message: String,
    },
    /// A step found the cluster in a state where going on could lose data or a binding; the
    /// step was not taken.
    #[error("refused: {0}")]
    Refused(String),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    /// Encoding or decoding JSON failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A Kubernetes API error with what was being attempted.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            source,
        }
    }

    /// Whether this is the API server's 404 for the object asked for.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
