//! The claimer's wake-ups: each one, its echoes, and the backstop interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::Notify;

/// The wake-ups the claimer waits on. It yields on a wake-up, on each of its
/// echoes, and on every tick of the backstop interval.
///
/// Each wake-up is echoed twice, 20 ms and 200 ms later. A claim that
/// is in flight when a job is queued may miss it (on PostgreSQL its snapshot
/// can predate the other node's commit), and the wake-up that arrived during
/// the claim was absorbed by it. The echoes claim again after the one in
/// flight. A newer wake-up restarts the echoes, so a busy queue costs no
/// extra claims.
pub(super) struct Wakeups {
    notify: Arc<Notify>,
    waiting: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    echo: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    interval: tokio::time::Interval,
}

const ECHOES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(200)];

impl Wakeups {
    pub(super) fn new(notify: Arc<Notify>, every: Duration) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Wakeups {
            notify,
            waiting: None,
            echo: None,
            interval,
        }
    }
}

impl Stream for Wakeups {
    type Item = ();
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut fired = false;
        // Each source is polled until it is pending, so it is registered
        // to wake this task again whatever this poll returns.
        loop {
            let notify = self.notify.clone();
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(notify.notified_owned()));
            if waiting.as_mut().poll(cx).is_pending() {
                break;
            }
            self.waiting = None;
            self.echo = Some((Box::pin(tokio::time::sleep(ECHOES[0])), 0));
            fired = true;
        }
        while let Some((sleep, n)) = &mut self.echo {
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            let next = *n + 1;
            self.echo = ECHOES
                .get(next)
                .map(|d| (Box::pin(tokio::time::sleep(*d)), next));
            fired = true;
        }
        while self.interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{waker, ArcWake};

    use super::*;

    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A wake-up must reach the waiting claimer even when it lands between
    /// two polls (the stream re-arms everything it waits on before it yields).
    #[tokio::test]
    async fn a_wake_up_after_a_yield_reaches_the_task_without_another_poll() {
        let notify = Arc::new(Notify::new());
        let mut wakeups = Box::pin(Wakeups::new(notify.clone(), Duration::from_secs(3600)));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = waker(count.clone());
        let mut cx = Context::from_waker(&waker);

        // The interval's first tick is due at once; then nothing is.
        tokio::time::sleep(Duration::from_millis(5)).await;
        while wakeups.as_mut().poll_next(&mut cx).is_ready() {}
        let woken = || count.0.load(Ordering::SeqCst);

        let before = woken();
        notify.notify_one();
        assert_eq!(woken(), before + 1, "the first wake-up");
        assert_eq!(wakeups.as_mut().poll_next(&mut cx), Poll::Ready(Some(())));

        // Not polled since it yielded: the next wake-up must still arrive.
        notify.notify_one();
        assert_eq!(woken(), before + 2, "a wake-up after a yield");

        // And so must the echo of a wake-up that was consumed by a yield.
        assert_eq!(wakeups.as_mut().poll_next(&mut cx), Poll::Ready(Some(())));
        let before = woken();
        tokio::time::sleep(ECHOES[0] + Duration::from_millis(30)).await;
        assert!(woken() > before, "the echo woke the task");
    }
}
