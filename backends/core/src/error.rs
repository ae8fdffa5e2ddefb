//! The error every backend returns, and its one mapping to a gRPC status.

use tonic::{Code, Status};

/// What went wrong, classified by what the caller (a CSI sidecar or the kubelet) should do about it.
///
/// Every message names the volume or the input at fault and says what to do; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something this driver does not support.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume, node or snapshot does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume with this name exists with different properties.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state forbids it (for example, the disk is still attached).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota or limit was reached (disks per node, cloud quota).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The requested capacity cannot be satisfied.
    #[error("{0}")]
    OutOfRange(String),
    /// Another operation on the same volume is in flight; retry later.
    #[error("{0}")]
    Aborted(String),
    /// A dependency (cloud API, mounter) is temporarily unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The operation did not finish in time; it may still complete, retry later.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The cloud refused the credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credentials are valid but not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A command on the host failed (mount, mkfs, resize…); one that timed out is
    /// DEADLINE_EXCEEDED instead (see the `From` below).
    #[error("{0}")]
    Host(crate::host::HostError),
    /// A bug or an unexpected answer; the message says what was being attempted.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::host::HostError> for Error {
    /// A command stopped at its time limit may yet be finished by a retry: DEADLINE_EXCEEDED,
    /// naming the command; any other failure stays a host error.
    fn from(e: crate::host::HostError) -> Self {
        if e.timed_out {
            Error::DeadlineExceeded(e.to_string())
        } else {
            Error::Host(e)
        }
    }
}

/// Shorthand used across the backends.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code this error maps to; no wildcard arm, so a new variant must choose one.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Host(_) => Code::Internal,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// Prefixes the message with what was being attempted, keeping the classification.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        let wrap = |m: String| format!("{what}: {m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(wrap(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(wrap(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(wrap(m)),
            Error::OutOfRange(m) => Error::OutOfRange(wrap(m)),
            Error::Aborted(m) => Error::Aborted(wrap(m)),
            Error::Unavailable(m) => Error::Unavailable(wrap(m)),
            Error::DeadlineExceeded(m) => Error::DeadlineExceeded(wrap(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(wrap(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(wrap(m)),
            Error::Host(e) => Error::Internal(wrap(e.to_string())),
            Error::Internal(m) => Error::Internal(wrap(m)),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code() {
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (Error::Aborted("x".into()), Code::Aborted),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::DeadlineExceeded("x".into()), Code::DeadlineExceeded),
            (Error::Unauthenticated("x".into()), Code::Unauthenticated),
            (Error::PermissionDenied("x".into()), Code::PermissionDenied),
            (Error::Internal("x".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "x");
        }
    }

    #[test]
    fn a_timed_out_host_command_is_deadline_exceeded_naming_it() {
        let e = Error::from(crate::host::HostError::timed_out(
            "mkfs.xfs -q /dev/vdb",
            std::time::Duration::from_secs(3),
        ));
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(e.to_string().contains("mkfs.xfs -q /dev/vdb"), "{e}");
        let e = Error::from(crate::host::HostError::new(
            "mkfs.xfs -q /dev/vdb",
            "exit 1",
        ));
        assert_eq!(e.code(), Code::Internal);
    }

    #[test]
    fn context_keeps_the_code() {
        let e = Error::NotFound("disk 42 is gone".into()).context("volume v1:evs:42");
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.to_string(), "volume v1:evs:42: disk 42 is gone");
    }
}
