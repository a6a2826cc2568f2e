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
    attempt: i32,
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

    /// Registers attempt `attempt` of `id` as running here; `None` when that
    /// attempt or a later one already is (a duplicate delivery must not start
    /// a second copy).
    ///
    /// An earlier attempt's entry gives way. The queue hands out the next
    /// attempt only once the earlier one's outcome is stored, but the earlier
    /// runner may not have returned (and dropped its guard) by then: a retry's
    /// backoff can be shorter than the wait for its task to be polled again.
    /// Refusing the new attempt as a duplicate would leave the job `running`
    /// with nothing running it; the chaos run found that.
    pub fn register(self: &Arc<Self>, id: JobId, attempt: i32) -> Option<RunningJob> {
        let mut map = self.running.lock().expect("cancel registry poisoned");
        if map.get(&id).is_some_and(|e| e.attempt >= attempt) {
            return None;
        }
        let token = self.root.child_token();
        let cancel_requested = Arc::new(AtomicBool::new(false));
        map.insert(
            id,
            Entry {
                attempt,
                token: token.clone(),
                cancel_requested: cancel_requested.clone(),
            },
        );
        Some(RunningJob {
            id,
            attempt,
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
    attempt: i32,
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
    /// Unregisters the job, unless a later attempt has registered since.
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.running.lock() {
            if map.get(&self.id).is_some_and(|e| e.attempt == self.attempt) {
                map.remove(&self.id);
            }
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
        let guard = reg.register(id, 1).expect("first registration");
        assert!(reg.register(id, 1).is_none());
        assert_eq!(reg.running_count(), 1);
        drop(guard);
        assert_eq!(reg.running_count(), 0);
        assert!(!reg.cancel(id));
    }

    /// A retry claimed before the previous attempt's runner has returned:
    /// the new attempt runs, a cancel reaches it, and the old guard's drop
    /// leaves it registered.
    #[test]
    fn the_next_attempt_registers_while_the_previous_one_is_still_returning() {
        let reg = CancelRegistry::new(CancellationToken::new());
        let id = JobId::new();
        let first = reg.register(id, 1).unwrap();
        let second = reg
            .register(id, 2)
            .expect("attempt 2 is no duplicate of attempt 1");
        assert!(reg.register(id, 2).is_none(), "a duplicate of attempt 2");
        assert!(reg.register(id, 1).is_none(), "an earlier attempt");
        drop(first);
        assert_eq!(reg.running_count(), 1, "attempt 2 is still registered");
        assert!(reg.cancel(id));
        assert!(second.token().is_cancelled() && second.cancel_requested());
        drop(second);
        assert_eq!(reg.running_count(), 0);
    }

    #[test]
    fn cancel_fires_only_that_job() {
        let reg = CancelRegistry::new(CancellationToken::new());
        let a = reg.register(JobId::new(), 1).unwrap();
        let b = reg.register(JobId::new(), 1).unwrap();
        assert!(reg.cancel(a.id));
        assert!(a.token().is_cancelled() && a.cancel_requested());
        assert!(!b.token().is_cancelled());
    }

    #[test]
    fn the_root_stops_every_job_without_calling_it_a_cancel() {
        let root = CancellationToken::new();
        let reg = CancelRegistry::new(root.clone());
        let a = reg.register(JobId::new(), 1).unwrap();
        root.cancel();
        assert!(a.token().is_cancelled());
        assert!(!a.cancel_requested());
        assert!(a.shutting_down());
    }
}
