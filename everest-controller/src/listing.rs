//! ListVolumes and ListSnapshots across backend instances. The token is `<backend>/<that backend's token>`: the
//! backend part says where to resume, the rest is handed back to that backend untouched. An
//! empty rest means "from that backend's first page".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use everest_backend::backend::ListedVolume;
use everest_backend::registry::Registry;
use everest_backend::{BackendName, ControllerBackend, Error};

/// Where a ListVolumes call resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListToken {
    /// The backend instance to resume at.
    pub backend: BackendName,
    /// That backend's own token; `None` to start at its first page.
    pub inner: Option<String>,
}

impl ListToken {
    /// Parses a `starting_token`; anything we did not issue is ABORTED, as CSI requires.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let invalid = |why: &str| {
            Error::Aborted(format!(
                "starting_token {raw:?} is invalid ({why}); restart the listing without a token"
            ))
        };
        let (backend, inner) = raw.split_once('/').ok_or_else(|| invalid("no '/'"))?;
        let backend = BackendName::new(backend).map_err(|_| invalid("bad backend name"))?;
        Ok(Self {
            backend,
            inner: (!inner.is_empty()).then(|| inner.to_owned()),
        })
    }

    /// The token as sent to the caller.
    pub fn encode(&self) -> String {
        format!(
            "{}/{}",
            self.backend,
            self.inner.as_deref().unwrap_or_default()
        )
    }
}

/// One page: entries with their backend, and the token for the next page.
pub type Page<T> = (Vec<(BackendName, T)>, Option<String>);

/// What one backend answers for one page: its entries and its own next token.
pub type BackendPage<'a, T> =
    Pin<Box<dyn Future<Output = Result<(Vec<T>, Option<String>), Error>> + Send + 'a>>;

/// Lists up to `max_entries` volumes (0 = as many as the backends return), backend by backend
/// in name order, resuming at `start`.
pub async fn list(
    registry: &Registry<dyn ControllerBackend>,
    start: Option<ListToken>,
    max_entries: u32,
) -> Result<Page<ListedVolume>, Error> {
    // Only the kinds that list; the others' volumes are not ListVolumes' to report.
    let backends = registry
        .iter()
        .filter(|(_, b)| b.capabilities().list)
        .collect();
    walk(backends, "volumes", start, max_entries, |b, token, max| {
        Box::pin(async move {
            let page = b.list_volumes(token.as_deref(), max).await?;
            Ok((page.entries, page.next_token))
        })
    })
    .await
}

/// Pages through `backends` in order, asking each with `fetch(backend, its token, how many)`,
/// resuming at `start`; `what` names the listing in errors.
pub async fn walk<'r, T>(
    backends: Vec<(&'r BackendName, &'r Arc<dyn ControllerBackend>)>,
    what: &str,
    start: Option<ListToken>,
    max_entries: u32,
    fetch: impl for<'a> Fn(&'a dyn ControllerBackend, Option<String>, u32) -> BackendPage<'a, T>,
) -> Result<Page<T>, Error> {
    let (mut index, mut token) = match start {
        None => (0, None),
        Some(t) => {
            let index = backends
                .iter()
                .position(|(name, _)| **name == t.backend)
                .ok_or_else(|| {
                    Error::Aborted(format!(
                        "starting_token names backend {}, which is not configured; restart the listing without a token",
                        t.backend
                    ))
                })?;
            (index, t.inner)
        }
    };
    let max = max_entries as usize;
    let mut out = Vec::new();
    while let Some((name, backend)) = backends.get(index) {
        let remaining = if max == 0 {
            0
        } else {
            max.saturating_sub(out.len())
        };
        let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
        let (entries, next) = fetch(backend.as_ref(), token.take(), remaining)
            .await
            .map_err(|e| e.context(format!("listing {what} of backend {name}")))?;
        out.extend(entries.into_iter().map(|v| ((*name).clone(), v)));
        if let Some(next) = next {
            let next = ListToken {
                backend: (*name).clone(),
                inner: Some(next),
            };
            return Ok((out, Some(next.encode())));
        }
        index += 1;
        if max != 0 && out.len() >= max {
            break;
        }
    }
    let next = backends.get(index).map(|(name, _)| {
        ListToken {
            backend: (*name).clone(),
            inner: None,
        }
        .encode()
    });
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = ListToken::parse("disks-default/abc/def").unwrap();
        assert_eq!(t.backend.as_str(), "disks-default");
        assert_eq!(t.inner.as_deref(), Some("abc/def"));
        assert_eq!(t.encode(), "disks-default/abc/def");
        let start = ListToken::parse("disks-fast/").unwrap();
        assert_eq!(start.inner, None);
        for bad in ["", "nobackend", "Bad_Name/x", "/x"] {
            let err = ListToken::parse(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Aborted, "{bad:?}");
            assert!(err.to_string().contains("starting_token"));
        }
    }
}
