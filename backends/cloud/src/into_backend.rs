//! The one translation from the cloud client's errors into the backend error, which maps to gRPC.

use everest_backend::Error;

use crate::ErrorClass;

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        let message = e.to_string();
        match e.class() {
            ErrorClass::NotFound => Error::NotFound(message),
            ErrorClass::ResourceExhausted => Error::ResourceExhausted(message),
            ErrorClass::Unavailable => Error::Unavailable(message),
            ErrorClass::DeadlineExceeded => Error::DeadlineExceeded(message),
            ErrorClass::InvalidArgument => Error::InvalidArgument(message),
            ErrorClass::FailedPrecondition => Error::FailedPrecondition(message),
            ErrorClass::Unauthenticated => Error::Unauthenticated(message),
            ErrorClass::PermissionDenied => Error::PermissionDenied(message),
            ErrorClass::Internal => Error::Internal(message),
        }
    }
}
