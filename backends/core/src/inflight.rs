//! Serializes operations per volume: a second call while one is in flight gets ABORTED, which
//! CSI sidecars and the kubelet treat as "retry later".

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error;

/// The set of keys (volume IDs, or volume + path) with an operation in progress.
#[derive(Debug)]
pub struct InFlight<K: Eq + Hash + Clone + Display> {
    busy: Arc<Mutex<HashSet<K>>>,
}

impl<K: Eq + Hash + Clone + Display> Default for InFlight<K> {
    fn default() -> Self {
        Self {
            busy: Arc::new(Mutex::new(HashSet::new())),
        }
    }
}

impl<K: Eq + Hash + Clone + Display> Clone for InFlight<K> {
    fn clone(&self) -> Self {
        Self {
            busy: Arc::clone(&self.busy),
        }
    }
}

impl<K: Eq + Hash + Clone + Display> InFlight<K> {
    /// Claims `key` for the caller until the returned guard drops, or ABORTED if it is taken.
    pub fn claim(&self, key: &K) -> Result<Claim<K>, Error> {
        // A poisoned lock only means another thread panicked while holding it; the set is still valid.
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(key.clone()) {
            return Err(Error::Aborted(format!(
                "an operation on {key} is already in progress; retry when it finishes"
            )));
        }
        Ok(Claim {
            busy: Arc::clone(&self.busy),
            key: key.clone(),
        })
    }
}

/// Holds a key claimed; releasing it on drop means no early return can leak the claim.
#[derive(Debug)]
pub struct Claim<K: Eq + Hash + Clone + Display> {
    busy: Arc<Mutex<HashSet<K>>>,
    key: K,
}

impl<K: Eq + Hash + Clone + Display> Drop for Claim<K> {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_aborted_until_the_first_drops() {
        let inflight: InFlight<String> = InFlight::default();
        let key = "v1:evs:a".to_string();
        let first = inflight.claim(&key).unwrap();
        let err = inflight.claim(&key).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(err.to_string().contains("v1:evs:a"));
        assert!(inflight.claim(&"v1:evs:b".to_string()).is_ok());
        drop(first);
        assert!(inflight.claim(&key).is_ok());
    }
}
