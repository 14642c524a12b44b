//! Waiting on the API server by watching, never by polling: takes an `Api` (typed or
//! dynamic), a time limit and a verdict over every object it lists, and gives the first
//! verdict reached, or none after the limit. One list, then a watch that re-asks the verdict
//! on each change (kube-runtime's `watcher`, its objects kept in a reflector store). Must not
//! know what the objects mean: callers judge them.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;

use super::error::LiveError;

/// Lists the objects of `api` and watches them, asking `verdict` about all of them after the
/// first complete list and after every change; gives its first `Some`, or `None` when `limit`
/// passes first. A failure before the first list is complete is returned (typically a role
/// without `list` or `watch` on them); a watch interrupted later resumes with the watcher's
/// backoff. `dyntype` is `()` for a typed `K`, the `ApiResource` for a `DynamicObject`.
pub async fn until<K, T>(
    what: &str,
    api: Api<K>,
    dyntype: K::DynamicType,
    limit: Duration,
    mut verdict: impl FnMut(&[Arc<K>]) -> Option<T>,
) -> Result<Option<T>, LiveError>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut store = Writer::new(dyntype);
    let objects = store.as_reader();
    let watched = async {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        let mut listed = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    store.apply_watcher_event(&event);
                    listed |= matches!(event, Event::InitDone);
                    let changed =
                        matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_));
                    if listed && changed {
                        if let Some(t) = verdict(&objects.state()) {
                            return Ok(Some(t));
                        }
                    }
                }
                Err(e) if !listed => return Err(watch_error(what, e)),
                Err(e) => tracing::debug!(what, "watch interrupted, resuming: {e}"),
            }
        }
        Ok(None)
    };
    tokio::time::timeout(limit, watched)
        .await
        .unwrap_or(Ok(None))
}

/// A watch that could not start, as the layer's error: the API call that failed, or why.
pub fn watch_error(what: &str, e: watcher::Error) -> LiveError {
    let what = format!("watch {what} (lifeboat needs `list` and `watch` on them)");
    match e {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => LiveError::Api { what, error },
        other => LiveError::Volume {
            what,
            reason: other.to_string(),
        },
    }
}
