//! Injected faults: delay, 500 errors and 429 throttling on cloud API calls.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::cloud::Cloud;
use crate::errors::ApiError;

/// The fault settings (`GET`/`PUT /_emulator/faults`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
/// A `PUT` replaces them all; a field left out is 0.
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability of a 500 EVS.5500 (no side effects).
    pub error_rate: f64,
    /// Probability of a 429 APIGW.0308.
    pub throttle_rate: f64,
    /// Delay before every call, in milliseconds.
    pub delay_ms: u64,
    /// Probability that an accepted SFS Turbo share creation ends in status `303`
    /// (create failed) instead of `200`.
    pub share_create_fail_rate: f64,
}

impl Faults {
    /// Rates must be probabilities.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("share_create_fail_rate", self.share_create_fail_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0.0 and 1.0, got {rate}"));
            }
        }
        Ok(())
    }

    /// Draws the fault for one call, if any. `roll` yields uniform numbers in [0, 1).
    /// `sfs` marks an SFS Turbo call, whose server errors have SFS Turbo's body.
    pub fn decide(&self, sfs: bool, mut roll: impl FnMut() -> f64) -> Option<ApiError> {
        if self.throttle_rate > 0.0 && roll() < self.throttle_rate {
            return Some(ApiError::Gateway {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "APIGW.0308",
                message: "The throttling threshold has been reached (injected fault)".into(),
            });
        }
        if self.error_rate > 0.0 && roll() < self.error_rate {
            let message = "internal error (injected fault)";
            return Some(if sfs {
                ApiError::sfs(StatusCode::INTERNAL_SERVER_ERROR, "SFS.TURBO.0005", message)
            } else {
                ApiError::internal(message)
            });
        }
        None
    }
}

/// Middleware: applies the current faults before the handler runs, so a failed call
/// never has side effects.
pub async fn inject(State(cloud): State<Arc<Cloud>>, req: Request, next: Next) -> Response {
    let faults = *cloud.faults.lock().unwrap_or_else(|p| p.into_inner());
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    let sfs = req.uri().path().contains("/sfs-turbo/");
    if let Some(err) = faults.decide(sfs, rand::random::<f64>) {
        return err.into_response();
    }
    next.run(req).await
}

/// `GET /_emulator/faults`.
pub async fn get_faults(State(cloud): State<Arc<Cloud>>) -> Json<Faults> {
    Json(*cloud.faults.lock().unwrap_or_else(|p| p.into_inner()))
}

/// `PUT /_emulator/faults`.
pub async fn put_faults(
    State(cloud): State<Arc<Cloud>>,
    body: axum::body::Bytes,
) -> Result<Json<Faults>, ApiError> {
    let faults: Faults = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_query("EMU.0001", format!("invalid faults body: {e}")))?;
    faults
        .validate()
        .map_err(|e| ApiError::bad_query("EMU.0001", e))?;
    *cloud.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    tracing::info!(?faults, "faults changed");
    Ok(Json(faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certain_faults_always_fire_and_zero_never() {
        let throttle = Faults {
            throttle_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(
            throttle.decide(false, || 0.999).unwrap().code(),
            "APIGW.0308"
        );
        assert_eq!(
            throttle.decide(true, || 0.999).unwrap().code(),
            "APIGW.0308"
        );
        let error = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(error.decide(false, || 0.999).unwrap().code(), "EVS.5500");
        let sfs = error.decide(true, || 0.999).unwrap();
        assert!(matches!(sfs, ApiError::Sfs { .. }), "{sfs:?}");
        assert_eq!(sfs.code(), "SFS.TURBO.0005");
        assert!(Faults::default().decide(false, || 0.0).is_none());
        assert!(Faults::default().decide(true, || 0.0).is_none());
    }

    #[test]
    fn rates_outside_zero_one_are_rejected() {
        let bad = Faults {
            error_rate: 1.5,
            ..Faults::default()
        };
        assert!(bad.validate().is_err());
        let bad = Faults {
            share_create_fail_rate: -0.1,
            ..Faults::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_partial_body_sets_what_it_names_and_zeroes_the_rest() {
        let f: Faults = serde_json::from_str(r#"{"error_rate":0.3}"#).unwrap();
        assert_eq!(
            f,
            Faults {
                error_rate: 0.3,
                ..Faults::default()
            }
        );
        assert!(serde_json::from_str::<Faults>(r#"{"eror_rate":0.3}"#).is_err());
    }
}
