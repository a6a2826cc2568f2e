//! Which jobs this process is running, each with its own `CancellationToken`.
//!
//! Every running job gets a child of the process's job root token: cancelling
//! the job fires only its own token; firing the root at the end of the shutdown
//! grace stops them all. A [`RunningJob`] guard removes its entry on drop, so a
//! job that ends in any way (even a panic) leaves nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::domain::JobId;

#[derive(Debug)]
struct Entry {
    token: CancellationToken,
    cancel_requested: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct CancelRegistry {
    root: CancellationToken,
    // A std Mutex: it is held only for map operations, never across an await.
    running: Mutex<HashMap<JobId, Entry>>,
}

impl CancelRegistry {
    pub fn new(root: CancellationToken) -> Arc<Self> {
        Arc::new(CancelRegistry {
            root,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Registers `id` as running here; `None` when it already is (a duplicate
    /// delivery of its queue task must not start a second copy).
    pub fn register(self: &Arc<Self>, id: JobId) -> Option<RunningJob> {
        let mut map = self.running.lock().expect("cancel registry poisoned");
        if map.contains_key(&id) {
            return None;
        }
        let token = self.root.child_token();
        let cancel_requested = Arc::new(AtomicBool::new(false));
        map.insert(
            id,
            Entry {
                token: token.clone(),
                cancel_requested: cancel_requested.clone(),
            },
        );
        Some(RunningJob {
            id,
            token,
            cancel_requested,
            registry: self.clone(),
        })
    }

    /// Tells the job's attempt to stop because a client asked to cancel it.
    /// Returns whether the job runs here.
    pub fn cancel(&self, id: JobId) -> bool {
        let map = self.running.lock().expect("cancel registry poisoned");
        match map.get(&id) {
            Some(entry) => {
                entry.cancel_requested.store(true, Ordering::SeqCst);
                entry.token.cancel();
                true
            }
            None => false,
        }
    }

    pub fn is_running(&self, id: JobId) -> bool {
        self.running
            .lock()
            .expect("cancel registry poisoned")
            .contains_key(&id)
    }

    /// Jobs running here that no cancel has reached yet.
    pub fn running_not_cancelled(&self) -> Vec<JobId> {
        self.running
            .lock()
            .expect("cancel registry poisoned")
            .iter()
            .filter(|(_, e)| !e.cancel_requested.load(Ordering::SeqCst))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("cancel registry poisoned").len()
    }

    /// Whether the process is stopping its jobs (end of the shutdown grace).
    pub fn stopping(&self) -> bool {
        self.root.is_cancelled()
    }
}

/// A job running here; dropping it unregisters the job.
#[derive(Debug)]
pub struct RunningJob {
    id: JobId,
    token: CancellationToken,
    cancel_requested: Arc<AtomicBool>,
    registry: Arc<CancelRegistry>,
}

impl RunningJob {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the token fired because a client cancelled the job (rather than
    /// because the process is shutting down).
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::SeqCst)
    }

    pub fn shutting_down(&self) -> bool {
        self.registry.stopping()
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.running.lock() {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_registers_once_and_unregisters_on_drop() {
        let reg = CancelRegistry::new(CancellationToken::new());
        let id = JobId::new();
        let guard = reg.register(id).expect("first registration");
        assert!(reg.register(id).is_none());
        assert_eq!(reg.running_count(), 1);
        drop(guard);
        assert_eq!(reg.running_count(), 0);
        assert!(!reg.cancel(id));
    }

    #[test]
    fn cancel_fires_only_that_job() {
        let reg = CancelRegistry::new(CancellationToken::new());
        let a = reg.register(JobId::new()).unwrap();
        let b = reg.register(JobId::new()).unwrap();
        assert!(reg.cancel(a.id));
        assert!(a.token().is_cancelled() && a.cancel_requested());
        assert!(!b.token().is_cancelled());
    }

    #[test]
    fn the_root_stops_every_job_without_calling_it_a_cancel() {
        let root = CancellationToken::new();
        let reg = CancelRegistry::new(root.clone());
        let a = reg.register(JobId::new()).unwrap();
        root.cancel();
        assert!(a.token().is_cancelled());
        assert!(!a.cancel_requested());
        assert!(a.shutting_down());
    }
}
