//! Per-job wake-ups. The hub carries no payload: it only says "look again", and
//! the store decides what is delivered. A burst of wake-ups while a subscriber
//! is busy collapses into one (a `watch` channel keeps only the latest version).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use crate::domain::JobId;

#[derive(Debug)]
struct Signal {
    tx: watch::Sender<u64>,
}

#[derive(Debug, Default)]
pub struct Hub {
    // Weak: a job's signal lives as long as some subscription holds it.
    jobs: Mutex<HashMap<JobId, Weak<Signal>>>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Registers interest in `id`. Subscribe before reading the store, so that an
    /// event appended in between still wakes the subscriber.
    pub fn subscribe(self: &Arc<Self>, id: JobId) -> Subscription {
        let mut jobs = self.jobs.lock().expect("hub poisoned");
        let signal = match jobs.get(&id).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Arc::new(Signal {
                    tx: watch::channel(0).0,
                });
                jobs.insert(id, Arc::downgrade(&s));
                s
            }
        };
        let rx = signal.tx.subscribe();
        Subscription {
            id,
            signal: Some(signal),
            rx,
            hub: self.clone(),
        }
    }

    /// Wakes every local subscriber of `id`.
    pub fn notify(&self, id: JobId) {
        let signal = self
            .jobs
            .lock()
            .expect("hub poisoned")
            .get(&id)
            .and_then(Weak::upgrade);
        if let Some(s) = signal {
            s.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes every subscriber of every job (after a lost cross-node listener, say).
    pub fn notify_all(&self) {
        let signals: Vec<_> = self
            .jobs
            .lock()
            .expect("hub poisoned")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for s in signals {
            s.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// How many jobs have at least one subscriber.
    pub fn watched_jobs(&self) -> usize {
        self.jobs
            .lock()
            .expect("hub poisoned")
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One subscriber's interest in one job; dropping it releases the interest.
#[derive(Debug)]
pub struct Subscription {
    id: JobId,
    signal: Option<Arc<Signal>>,
    rx: watch::Receiver<u64>,
    hub: Arc<Hub>,
}

impl Subscription {
    /// Waits for the next wake-up (returns at once if one arrived since the last call).
    pub async fn changed(&mut self) {
        // The sender lives as long as `self.signal`, so this cannot fail.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = self
            .signal
            .take()
            .is_some_and(|s| Arc::strong_count(&s) == 1);
        if last {
            if let Ok(mut jobs) = self.hub.jobs.lock() {
                if jobs.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
                    jobs.remove(&self.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn notify_wakes_subscribers_and_bursts_collapse() {
        let hub = Hub::new();
        let id = JobId::new();
        let mut sub = hub.subscribe(id);
        hub.notify(id);
        hub.notify(id);
        tokio::time::timeout(Duration::from_secs(1), sub.changed())
            .await
            .expect("woken");
        // Both notifications were seen by the one wake-up.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sub.changed())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn dropping_the_last_subscription_forgets_the_job() {
        let hub = Hub::new();
        let id = JobId::new();
        let a = hub.subscribe(id);
        let b = hub.subscribe(id);
        assert_eq!(hub.watched_jobs(), 1);
        drop(a);
        assert_eq!(hub.watched_jobs(), 1);
        drop(b);
        assert_eq!(hub.watched_jobs(), 0);
        assert!(hub.jobs.lock().unwrap().is_empty());
        hub.notify(id); // nobody listening: a no-op
    }
}
