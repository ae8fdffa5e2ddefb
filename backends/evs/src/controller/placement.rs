//! Where a new disk goes: the zone from the claim's topology, the StorageClass or the backend.

use everest_backend::backend::{CreateVolume, ZONE_TOPOLOGY_KEY};
use everest_backend::{Error, Result};

use super::EvsController;
use crate::params::EvsParams;

impl EvsController {
    /// The zone for a new disk: a fixed StorageClass zone (which must be one the claim allows),
    /// else the claim's preferred or requisite zones in order, else the backend's default.
    pub(super) fn zone(&self, req: &CreateVolume, params: &EvsParams) -> Result<String> {
        let candidates = req
            .topology
            .as_ref()
            .map(|t| t.candidates(ZONE_TOPOLOGY_KEY))
            .unwrap_or_default();
        let requisite = requisite_zones(req);
        if let Some(fixed) = &params.availability_zone {
            if !requisite.is_empty() && !requisite.contains(fixed) {
                return Err(Error::InvalidArgument(format!(
                    "StorageClass zone {fixed} is not among the zones the claim can use ({})",
                    requisite.join(", ")
                )));
            }
            return Ok(fixed.clone());
        }
        candidates
            .into_iter()
            .next()
            .or_else(|| self.config.backend.availability_zone.clone())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no availability zone: the request has no {ZONE_TOPOLOGY_KEY} topology, the StorageClass no everest.io/availability-zone, and backend {} no availability_zone",
                    self.name
                ))
            })
    }
}

/// The zones the request's topology requisite allows; empty when it sets no constraint.
pub(super) fn requisite_zones(req: &CreateVolume) -> Vec<String> {
    req.topology
        .as_ref()
        .map(|t| {
            t.requisite
                .iter()
                .filter_map(|s| s.get(ZONE_TOPOLOGY_KEY).cloned())
                .collect()
        })
        .unwrap_or_default()
}
