//! Per-tenant limits: open streams, and submissions per second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts each tenant's open streams against a maximum.
#[derive(Debug)]
pub struct StreamLimit {
    max: usize,
    // A std Mutex: only map updates under it, never an await.
    open: Mutex<HashMap<String, usize>>,
}

impl StreamLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(StreamLimit {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more stream of `tenant`, or `None` at the limit.
    pub fn acquire(self: &Arc<Self>, tenant: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("stream limit poisoned");
        let n = open.entry(tenant.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            limit: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

/// One open stream of a tenant; released on drop.
#[derive(Debug)]
pub struct StreamSlot {
    limit: Arc<StreamLimit>,
    tenant: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limit.open.lock() {
            if let Some(n) = open.get_mut(&self.tenant) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.tenant);
                }
            }
        }
    }
}

/// A token bucket per tenant: `rate` tokens a second, at most `rate` stored.
#[derive(Debug)]
pub struct SubmitRate {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl SubmitRate {
    pub fn new(per_sec: u32) -> Self {
        SubmitRate {
            rate: per_sec.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self, tenant: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate buckets poisoned");
        if !buckets.contains_key(tenant) {
            buckets.insert(tenant.to_owned(), (self.rate, now));
        }
        let (tokens, at) = buckets.get_mut(tenant).expect("just inserted");
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_tenant() {
        let l = StreamLimit::new(2);
        let s1 = l.acquire("a").unwrap();
        let _s2 = l.acquire("a").unwrap();
        assert!(l.acquire("a").is_none());
        assert!(l.acquire("b").is_some());
        drop(s1);
        assert!(l.acquire("a").is_some());
    }

    #[test]
    fn the_burst_equals_the_rate() {
        let r = SubmitRate::new(3);
        for _ in 0..3 {
            assert!(r.take("a").is_ok());
        }
        let wait = r.take("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(334));
        assert!(r.take("b").is_ok());
    }
}
