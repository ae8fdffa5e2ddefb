//! CSI request secrets, which must never reach a log line or an error message.

use std::collections::BTreeMap;
use std::fmt;

/// The `secrets` map of a CSI request; `Debug` shows only the keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    /// Wraps the request's map.
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }

    /// One secret value by key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let s = Secrets::new([("sk".to_string(), "hunter2".to_string())].into());
        let shown = format!("{s:?}");
        assert!(shown.contains("sk") && !shown.contains("hunter2"));
        assert_eq!(s.get("sk"), Some("hunter2"));
    }
}
