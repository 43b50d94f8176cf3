//! The proxy's open connections and UDP sessions, one entry each, for `lbctl flows`: the
//! userspace counterpart of the XDP connection table (client, backend, last activity).
//!
//! An entry lives as long as its [`OpenGuard`]; a connection's pump and a session's relay
//! stamp its [`Activity`] on every transfer, which also drives their idle timeouts.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

// The runtime's clock, which tests can pause: the idle timeouts read these stamps.
use tokio::time::Instant;

/// When a connection or session last moved data.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last transfer either way.
    last_ms: AtomicU64,
}

impl Activity {
    /// Starting now.
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Data moved now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When data last moved (the start when none has).
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Time since data last moved.
    pub fn idle(&self) -> Duration {
        self.last().elapsed()
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// One open connection or session.
#[derive(Debug, Clone)]
pub struct OpenFlow {
    /// The client.
    pub client: SocketAddr,
    /// The backend id it was connected to.
    pub backend_id: u32,
    /// Its last transfer.
    pub activity: Arc<Activity>,
}

/// The open connections or sessions of one service.
#[derive(Debug, Default)]
pub struct OpenFlows {
    next: AtomicU64,
    map: Mutex<HashMap<u64, OpenFlow>>,
}

/// Keeps an entry in [`OpenFlows`]; removes it when dropped (the connection or session ended).
#[derive(Debug)]
pub struct OpenGuard {
    flows: Arc<OpenFlows>,
    id: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.flows.lock().remove(&self.id);
    }
}

impl OpenFlows {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, OpenFlow>> {
        // Single inserts and removes: a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an open connection or session; returns its guard and its activity stamp.
    pub fn open(
        self: &Arc<Self>,
        client: SocketAddr,
        backend_id: u32,
    ) -> (OpenGuard, Arc<Activity>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        self.lock().insert(
            id,
            OpenFlow {
                client,
                backend_id,
                activity: activity.clone(),
            },
        );
        (
            OpenGuard {
                flows: self.clone(),
                id,
            },
            activity,
        )
    }

    /// The entries now.
    pub fn snapshot(&self) -> Vec<OpenFlow> {
        self.lock().values().cloned().collect()
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_guards() {
        let flows = Arc::new(OpenFlows::default());
        let client: SocketAddr = "198.18.0.10:40000".parse().expect("addr");
        let (a, activity) = flows.open(client, 3);
        let (b, _) = flows.open(client, 4);
        assert_eq!(flows.len(), 2);
        activity.touch();
        assert!(activity.idle() < Duration::from_secs(1));
        drop(a);
        let left = flows.snapshot();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].client, left[0].backend_id), (client, 4));
        drop(b);
        assert!(flows.is_empty());
    }
}
