//! Sizes: CSI speaks bytes, clouds speak GiB.

use crate::error::Error;

/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// The capacity a CreateVolume or ControllerExpandVolume asks for; zero means "not set", as in CSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapacityRange {
    /// The volume must be at least this large (bytes, 0 = unset).
    pub required_bytes: u64,
    /// The volume must be at most this large (bytes, 0 = unset).
    pub limit_bytes: u64,
}

impl CapacityRange {
    /// Converts the CSI message's signed fields, rejecting negatives and an inverted range.
    pub fn new(required_bytes: i64, limit_bytes: i64) -> Result<Self, Error> {
        if required_bytes < 0 || limit_bytes < 0 {
            return Err(Error::InvalidArgument(format!(
                "capacity_range must not be negative (required_bytes={required_bytes}, limit_bytes={limit_bytes})"
            )));
        }
        let range = Self {
            required_bytes: required_bytes as u64,
            limit_bytes: limit_bytes as u64,
        };
        if range.limit_bytes != 0 && range.required_bytes > range.limit_bytes {
            return Err(Error::InvalidArgument(format!(
                "capacity_range.required_bytes ({required_bytes}) exceeds limit_bytes ({limit_bytes})"
            )));
        }
        Ok(range)
    }

    /// Picks a whole number of GiB within `[min_gib, max_gib]` that satisfies the range, or OUT_OF_RANGE.
    ///
    /// The smallest fitting size wins; an unset range gets `default_gib`.
    pub fn to_gib(&self, default_gib: u64, min_gib: u64, max_gib: u64) -> Result<u64, Error> {
        let wanted = if self.required_bytes == 0 && self.limit_bytes == 0 {
            default_gib
        } else {
            self.required_bytes.div_ceil(GIB)
        };
        let gib = wanted.max(min_gib);
        let limit_gib = if self.limit_bytes == 0 {
            max_gib
        } else {
            (self.limit_bytes / GIB).min(max_gib)
        };
        if gib > limit_gib {
            return Err(Error::OutOfRange(format!(
                "requested capacity (required {} bytes, limit {} bytes) cannot be met: this backend provisions {min_gib}-{max_gib} GiB in whole GiB",
                self.required_bytes, self.limit_bytes
            )));
        }
        Ok(gib)
    }

    /// Whether a volume of `bytes` satisfies this range (used for idempotent CreateVolume).
    pub fn is_satisfied_by(&self, bytes: u64) -> bool {
        bytes >= self.required_bytes && (self.limit_bytes == 0 || bytes <= self.limit_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_gib_within_bounds() {
        let r = CapacityRange::new(1, 0).unwrap();
        assert_eq!(r.to_gib(10, 10, 32768).unwrap(), 10);
        let r = CapacityRange::new((11 * GIB + 1) as i64, 0).unwrap();
        assert_eq!(r.to_gib(10, 10, 32768).unwrap(), 12);
        let r = CapacityRange::default();
        assert_eq!(r.to_gib(20, 10, 32768).unwrap(), 20);
    }

    #[test]
    fn out_of_range_when_limit_below_minimum_or_size_above_maximum() {
        let r = CapacityRange::new(GIB as i64, (5 * GIB) as i64).unwrap();
        assert_eq!(
            r.to_gib(10, 10, 32768).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let r = CapacityRange::new((40000 * GIB) as i64, 0).unwrap();
        assert_eq!(
            r.to_gib(10, 10, 32768).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
    }

    #[test]
    fn rejects_negative_and_inverted_ranges() {
        assert!(CapacityRange::new(-1, 0).is_err());
        assert!(CapacityRange::new(10, 5).is_err());
    }

    #[test]
    fn satisfaction() {
        let r = CapacityRange::new((10 * GIB) as i64, (20 * GIB) as i64).unwrap();
        assert!(r.is_satisfied_by(10 * GIB));
        assert!(!r.is_satisfied_by(21 * GIB));
        assert!(!r.is_satisfied_by(9 * GIB));
    }
}
