//! The PostgreSQL store: several herald nodes on one database.
//!
//! Cross-node wake-ups: after an event is committed, its job id is sent on
//! `herald_event_batch`, with the event itself when it fits (payloads are
//! capped at 8000 bytes), many events to a notification, and each node's
//! listener (`notify.rs`) hands the event to
//! its local streams, or wakes them and they read the store. The notify is NOT part of the event's transaction:
//! NOTIFY takes a database-wide lock at commit and holds it through the WAL
//! flush, so with it inside, every event-writing commit in the cluster
//! queued behind the previous one's fsync (measured: 375 jobs/s, with most
//! backends waiting on `Lock/object`). Instead a notifier task batches the
//! ids of committed events into one notify-only transaction, which writes no
//! WAL and holds the lock for microseconds. Subscribers read the store after
//! the notify, so it can only come late, never early; a notify lost to a
//! crash right after a commit is covered by the listener's periodic
//! wake-up of every local stream. A cancel request of a running job notifies
//! `herald_cancel` inside its transaction (rare, and it must not be lost).
//!
//! Writes are single statements where they can be (a transition is one
//! `WITH … UPDATE … INSERT` round trip, atomic on its own, conditional on the
//! job's `last_seq`); only a cancel request and lease recovery lock the row
//! (`FOR UPDATE`) in a transaction.
//!
//! Node liveness: a node that runs jobs upserts its row in `herald_nodes`
//! every third of the lease, with the database's clock (nodes' clocks may
//! disagree). A job is `running` on the node named in its `node_id`; once that
//! node's heartbeat is older than the lease, any node may run the job again.
//!
//! Here: the pools, `connect`, `migrate` and [`PgStore`]. The batched
//! statements are in `batch.rs`, the notifier in `notifier.rs`, the writes
//! that lock a job's row (and the conditional ones that fall back to them)
//! in `transitions.rs`; `jobs.rs`, `feed.rs`, `uploads.rs` (and checkpoints),
//! `nodes.rs` (liveness, leases, recovery) and `queue.rs` (the claim)
//! each implement their trait with their SQL.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::group::{Batching, Group};
use super::StoreError;
use batch::{Reads, Submits, Writes};
use notifier::Notifier;
pub use notifier::{EventBatch, Notice};

/// The columns `JobRow` reads (the uuid id as text), as a macro so queries
/// stay `&'static str`.
macro_rules! job_columns {
    () => {
        "id::text AS id, tenant, kind, status, input, progress, result, error, attempt, max_attempts, \
         timeout_secs, cancel_requested, idempotency_key, created_at, started_at, finished_at, last_seq, items_count, run_at, \
         remote, worker, lease, lease_expires_at"
    };
}

mod batch;
mod feed;
mod jobs;
mod nodes;
mod notifier;
#[cfg(test)]
mod plans;
mod queue;
mod remote;
mod transitions;
mod uploads;

/// The channel that carried "job X has a new event", one notification per
/// event, from nodes of earlier versions: still heard, no longer sent.
pub const EVENTS_CHANNEL: &str = "herald_events";
/// The channel that carries the events a node committed, many to a
/// notification (see [`EventBatch`]).
pub const EVENT_BATCH_CHANNEL: &str = "herald_event_batch";
/// The channel that carries "job X was asked to cancel".
pub const CANCEL_CHANNEL: &str = "herald_cancel";
/// The channel that carries "a job became queued" (no payload): workers on
/// other nodes claim now rather than at their next poll.
pub const QUEUE_CHANNEL: &str = "herald_queue";

/// Who this node is, for leases.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub id: String,
    pub role: &'static str,
    /// A node silent for this long is gone; its jobs run again elsewhere.
    pub lease: Duration,
}

/// The pools a PostgreSQL deployment uses.
#[derive(Clone, Debug)]
pub struct Pools {
    pub main: PgPool,
    /// The batched statements' connections (see `connect`).
    pub writes: PgPool,
    /// Options for the node's dedicated LISTEN connection.
    pub listen: PgConnectOptions,
    /// This process's mark on the notifications it sends: its own listener
    /// knows them by it and skips what it has already woken locally.
    pub origin: String,
}

pub async fn connect(url: &str, pool_size: u32, node: &str) -> Result<Pools, StoreError> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name(&format!("herald {node}"));
    // No ping before each acquire (sqlx's default): it doubled the round
    // trips of every query. A broken connection fails its query instead, and
    // the caller's retry (the runner's, the client's) gets a fresh one.
    let main = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(pool_size.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.clone())
        .await?;
    // The batched transitions join an array of ids against `herald_jobs` by
    // primary key. PostgreSQL plans a prepared statement once
    // for all its later runs, with the table sizes of that moment: on a new
    // database those are tiny, and it chose sequential scans and hash joins
    // that it kept as the tables grew (4 ms per batch instead of 0.5).
    // Re-planning every run cost as much as running. On these connections,
    // which run only those statements, the batched reads of jobs by id,
    // the submissions (whose check for a due job waiting must not become a
    // walk of the table as it grows) and the queue's claim, the planner may
    // use only index lookups.
    // All of them open from the start and stay open: a burst of submissions
    // after a start or a quiet spell otherwise waited for connections to be
    // set up (a p99 of 110 ms in the harness, against 35 ms without).
    let writes = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(3 * WRITERS as u32 + 1)
        .min_connections(3 * WRITERS as u32 + 1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.clone().options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]))
        .await?;
    Ok(Pools {
        main,
        writes,
        listen: opts.application_name(&format!("herald-listener {node}")),
        origin: format!("{:016x}", rand::random::<u64>()),
    })
}

/// Runs herald's migrations (tracked in `herald_migrations`).
/// Two nodes starting at once serialize on sqlx's migration lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut ours = sqlx::migrate!("./migrations/postgres");
    ours.dangerous_set_table_name("herald_migrations");
    ours.run(pool).await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct PgStore {
    pools: Pools,
    node: NodeIdentity,
    notifier: Notifier,
    /// Transitions of running jobs and spent-task deletes, group-committed.
    writes: Group<Writes>,
    /// New jobs, group-committed.
    submits: Group<Submits>,
    /// Reads of one job by id, gathered the same way: a job about to start
    /// is read first, and the jobs of one queue fetch start together.
    reads: Group<Reads>,
}

/// Batches in flight at once, per kind of write. One: a batch gathers
/// whatever came while the previous one was written, so batches are as big
/// as the load makes them and each costs one statement and one commit. Two
/// split the same load into twice as many smaller batches: in the harness
/// (one node and PostgreSQL on one core, 50 jobs in flight) 2,034 jobs/s
/// against 2,584 with one (medians of five runs each, interleaved).
const WRITERS: usize = 1;

impl PgStore {
    /// Starts the store's notifier task (so: call it inside a tokio runtime).
    pub fn new(pools: Pools, node: NodeIdentity) -> Self {
        let notifier = Notifier::start(pools.main.clone(), pools.origin.clone());
        let batching = Batching {
            writers: WRITERS,
            ..Batching::default()
        };
        let writes = Group::start(
            Writes {
                pool: pools.writes.clone(),
                node: node.id.clone(),
            },
            batching,
        );
        let submits = Group::start(
            Submits {
                pool: pools.writes.clone(),
                node: node.id.clone(),
            },
            batching,
        );
        let reads = Group::start(
            Reads {
                pool: pools.writes.clone(),
            },
            batching,
        );
        PgStore {
            pools,
            node,
            notifier,
            writes,
            submits,
            reads,
        }
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    fn lease_secs(&self) -> f64 {
        self.node.lease.as_secs_f64()
    }
}
