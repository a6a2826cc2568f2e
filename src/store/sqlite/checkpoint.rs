//! WAL checkpoints, mostly off the writer's path.
//!
//! SQLite's automatic checkpoint runs in the connection that commits, once the
//! WAL holds 1,000 pages: the writer then copies them into the database file and
//! waits for two `fsync`s, and commits nothing meanwhile. Under load that was
//! about 9% of the time (`perf trace`: 362 ms of `fsync` in a 3.9 s run), time
//! in which every job waits for the writer and the CPU idles.
//!
//! So the writer's connection checkpoints nothing on its own
//! (`wal_autocheckpoint=0`) and, every [`EVERY`] commits, wakes a task that
//! checkpoints on a connection of its own (PASSIVE: it copies what was
//! committed when it began, and never blocks the writer). That one cannot
//! empty the WAL under load: the writer appends while it copies, and SQLite
//! starts the WAL over only when a write begins with every page copied. So
//! every [`CATCH_UP`]th time the writer checkpoints itself, between two
//! batches: little is left to copy by then, and the next batch starts the
//! WAL over, which keeps its file small (about 10 MB at 5,000 jobs a second,
//! against 4 MB before). Both take one lock, so they never run at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use tokio::sync::{Mutex, Notify};

/// Commits between two checkpoints (about 1,000 pages under load, where a
/// commit carries about 30).
pub(super) const EVERY: u64 = 32;

/// One checkpoint in this many is the writer's own.
pub(super) const CATCH_UP: u64 = 4;

/// The writer's side: counts its commits, and ends the task when dropped.
pub(super) struct Checkpoints {
    commits: AtomicU64,
    /// The writer's own checkpoint is due before its next batch.
    catch_up: AtomicBool,
    shared: Arc<Shared>,
}

/// What the writer and the checkpoint task share.
#[derive(Default)]
struct Shared {
    due: Notify,
    /// Held by whichever checkpoint runs.
    running: Mutex<()>,
    closed: AtomicBool,
}

impl Checkpoints {
    /// Starts the checkpoint task on `pool` (a connection of its own): call
    /// inside a tokio runtime.
    pub(super) fn start(pool: SqlitePool) -> Checkpoints {
        let shared = Arc::new(Shared::default());
        let task = shared.clone();
        tokio::spawn(async move {
            loop {
                task.due.notified().await;
                if task.closed.load(Ordering::Acquire) {
                    return;
                }
                let _one = task.running.lock().await;
                checkpoint(&pool, "off the writer's path").await;
            }
        });
        Checkpoints {
            commits: AtomicU64::new(0),
            catch_up: AtomicBool::new(false),
            shared,
        }
    }

    /// After each of the writer's commits.
    pub(super) fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n % (EVERY * CATCH_UP) == 0 {
            self.catch_up.store(true, Ordering::Relaxed);
        } else if n % EVERY == 0 {
            self.shared.due.notify_one();
        }
    }

    /// Before each of the writer's batches, on the writer's `pool`: its own
    /// checkpoint when one is due (after the batch before it was answered).
    pub(super) async fn before_batch(&self, pool: &SqlitePool) {
        if self.catch_up.swap(false, Ordering::Relaxed) {
            let _one = self.shared.running.lock().await;
            checkpoint(pool, "the writer's catch-up").await;
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.due.notify_one();
    }
}

/// A PASSIVE checkpoint on `pool`. A failure is logged and the next one tries
/// again: the WAL only grows meanwhile.
async fn checkpoint(pool: &SqlitePool, which: &'static str) {
    let done: Result<(i64, i64, i64), sqlx::Error> =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await;
    match done {
        Ok((_, wal_pages, copied)) => {
            tracing::trace!(checkpoint = which, wal_pages, copied, "WAL checkpoint");
        }
        Err(e) => tracing::warn!(checkpoint = which, error = %e,
            "WAL checkpoint failed; the next one tries again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Submission;
    use crate::store::sqlite::{connect, migrate, SqliteStore};
    use crate::store::JobStore;

    /// With the writer's own checkpoints off, these keep the WAL short: it
    /// starts over every `EVERY * CATCH_UP` commits instead of growing with
    /// every one.
    #[tokio::test]
    async fn the_wal_starts_over_while_the_writer_commits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("c.db");
        let pools = connect(&format!("sqlite://{}", file.display()))
            .await
            .expect("open the test file");
        migrate(&pools.writer).await.expect("migrate");
        let store = SqliteStore::new(pools);
        let body = serde_json::json!({"kind": "demo", "input": {"steps": 1}});
        let sub = Submission::parse(&body, 3).expect("a valid submission");
        // One job at a time: a commit each. Once the WAL starts over, its
        // file stops growing; without that, it grows with every commit.
        let window = EVERY * CATCH_UP;
        let wal_pages = || {
            let wal = std::fs::metadata(file.with_extension("db-wal")).expect("the WAL file");
            wal.len() / 4096
        };
        for _ in 0..2 * window {
            store.submit("", &sub).await.expect("submit");
        }
        let early = wal_pages();
        for _ in 0..6 * window {
            store.submit("", &sub).await.expect("submit");
        }
        let late = wal_pages();
        assert!(
            late < early + early / 2,
            "the WAL grew from {early} to {late} pages over {} more commits: \
             it never started over",
            6 * window
        );
    }
}
