//! The SQLite store: one file, WAL journal.
//!
//! Durability: `synchronous=NORMAL` in WAL mode. A committed transaction survives
//! a killed process (the WAL is written before commit returns); only an OS crash or
//! power loss can take the last few commits, which DESIGN.md accepts. FULL would
//! cost an fsync per commit (~1,700 commits/s here instead of ~48,000).
//!
//! Here: the pools, `connect`, `migrate` and [`SqliteStore`]. Every write goes
//! through one writer task (`writer.rs`, group commit), which runs the job
//! writes of `writes.rs` and the others' next to their reads: `jobs.rs`,
//! `feed.rs`, `uploads.rs` (and checkpoints), `nodes.rs` (readiness and
//! start-up recovery), `queue.rs` (the claim). `checkpoint.rs` keeps the WAL
//! short, mostly off the writer's path.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::group::Group;
use super::StoreError;
use checkpoint::Checkpoints;
use uploads::UnitWrite;
use writer::{Answer, WriteOp, Writer};

// BOUND_LIMIT: the reads write a bound LIMIT or OFFSET as `LIMIT +?N`, not
// `LIMIT ?N`. SQLite (3.51 here) reads a bare bound LIMIT's value while it
// plans, and so marks the statement to be planned again whenever that
// binding changes; sqlx clears a cached statement's bindings after every run,
// so every run re-parsed and re-planned it: 5% of herald's CPU under load
// (`perf`, SQL parsing under `sqlite3Reprepare`). `+?N` is the same number,
// not looked at while planning. `plans.rs` refuses the bare form.

/// The columns `JobRow` reads, as a macro so queries stay `&'static str`
/// (sqlx 0.9 refuses SQL built at run time unless it is asserted safe).
macro_rules! job_columns {
    () => {
        "id, tenant, kind, status, input, progress, result, error, attempt, max_attempts, \
         timeout_secs, cancel_requested, idempotency_key, created_at, started_at, finished_at, last_seq, items_count, run_at, \
         remote, worker, lease, lease_expires_at"
    };
}

mod checkpoint;
mod feed;
mod jobs;
mod nodes;
#[cfg(test)]
mod plans;
mod queue;
mod remote;
mod tail;
mod uploads;
mod writer;
mod writes;

/// The pools over one database file.
///
/// SQLite has one write lock. Several connections that contend for it wait in
/// SQLite's busy handler, which sleeps in growing steps (up to 100 ms): under
/// load that turned into 100+ ms stalls and 160 jobs/s. So all of herald's
/// writes go through `writer`, a single connection driven by one task (group
/// commit, below); the queue's claim is one of those writes. Reads run on `reader`
/// connections in parallel (WAL lets them see the last commit during a write).
#[derive(Clone, Debug)]
pub struct Pools {
    pub writer: SqlitePool,
    pub reader: SqlitePool,
    /// The WAL checkpoints' own connection (see `checkpoint.rs`).
    pub checkpointer: SqlitePool,
}

/// Opens (creating if missing) the database file with herald's settings.
pub async fn connect(url: &str) -> Result<Pools, StoreError> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // Another process on the same file (a second herald by mistake, a
        // backup tool) can still hold the lock for a moment.
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    // The writer checkpoints only when `checkpoint.rs` says so.
    // Its connection is never replaced while it works: the writer keeps
    // statements prepared on its handle (`writes/direct.rs`), and sqlx
    // refuses to close a handle with statements still open.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(false)
        .connect_with(opts.clone().pragma("wal_autocheckpoint", "0"))
        .await?;
    let checkpointer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(opts.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        // sqlx pings a connection when it comes back to the pool, and
        // drops it if its thread has died; a second ping before each use is
        // another round trip to that thread per read (3% of the feed's jobs).
        .test_before_acquire(false)
        .connect_with(opts)
        .await?;
    Ok(Pools {
        writer,
        reader,
        checkpointer,
    })
}

/// Runs herald's migrations (tracked in `herald_migrations`, a name of its
/// own: earlier versions also ran apalis's, in `_sqlx_migrations`).
pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut ours = sqlx::migrate!("./migrations/sqlite");
    ours.dangerous_set_table_name("herald_migrations");
    ours.run(pool).await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pools: Pools,
    writer: Group<Writer>,
    /// The events the writer committed last, for caught-up feeds.
    tail: Arc<tail::Tail>,
}

impl SqliteStore {
    /// Starts the store's writer task (so: call it inside a tokio runtime).
    pub fn new(pools: Pools) -> Self {
        let checkpoints = Checkpoints::start(pools.checkpointer.clone());
        let tail = Arc::new(tail::Tail::default());
        let writer = writer::start(pools.writer.clone(), checkpoints, tail.clone());
        SqliteStore {
            pools,
            writer,
            tail,
        }
    }

    /// Runs `op` on the writer and answers once its batch has committed.
    async fn write(&self, op: WriteOp) -> Result<Answer, StoreError> {
        self.writer.run(op).await
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    async fn unit(&self, write: UnitWrite) -> Result<(), StoreError> {
        self.write(WriteOp::Unit(write)).await?.done()
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction
    /// that reads first and writes later fails with SQLITE_BUSY when another
    /// writer commits in between, and busy_timeout cannot help it.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pools.writer.begin_with("BEGIN IMMEDIATE").await
    }
}
