//! Fills a herald database with a finished history, to measure what a long
//! history costs: `--jobs` `demo` jobs (`{"steps": 1, "step_ms": 0}`), all
//! `succeeded`, each with the four events herald appends for one: `status`
//! queued, `status` running, `progress`, `result`. The rows are built by
//! herald's own domain code (the submission parsed as `POST /v1/jobs` parses
//! it, then the transitions a runner applies), so herald reads them back as
//! its own. The database is migrated first, as herald does at start.
//!
//! ```sh
//! cargo run --release --example seed_history -- sqlite://history.db
//! cargo run --release --example seed_history -- postgres://postgres@127.0.0.1:5432/history --jobs 100000
//! HERALD_DATABASE_URL=sqlite://history.db target/release/herald
//! ```
//!
//! A PostgreSQL database must exist (`createdb history`); a SQLite file is
//! created. The jobs were created one millisecond apart, the newest a moment
//! ago, so retention (HERALD_RETENTION_HOURS, a week by default) keeps them
//! unless the history spans more than that. Seeding twice adds to the history.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection, SqliteConnection};
use uuid::Uuid;

use herald::domain::{JobId, JobRecord, NewEvent, Progress, Submission, Timestamp, Transition};
use herald::store::{postgres, sqlite};

#[derive(Parser)]
struct Args {
    /// The database: `sqlite://FILE` or `postgres://…/DATABASE`.
    url: String,
    /// Finished jobs to add.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
    /// Their tenant (`''` is the one herald uses without authentication).
    #[arg(long, default_value = "")]
    tenant: String,
    /// Jobs per INSERT statement (on SQLite at most 1,600: a statement
    /// binds at most 32,766 values, and a job's events take 20).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Jobs per transaction.
    #[arg(long, default_value_t = 50_000)]
    per_transaction: usize,
}

/// One finished job as herald stores it, and its events.
struct Seeded {
    job: JobRecord,
    events: Vec<NewEvent>,
}

/// Job `i` of `n`: created `n - i` milliseconds before `end`, run as a
/// runner runs a one-step demo (start, one progress report, success), each
/// step 200 µs after the previous.
fn seeded(i: usize, n: usize, end: Timestamp, tenant: &str) -> Seeded {
    let created = Timestamp(end.0 - (n - i) as i64 * 1_000);
    let at = |k: i64| Timestamp(created.0 + k * 200);
    // A UUIDv7 of the creation time, as herald's ids are: they sort by it.
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (created.0 / 1_000_000) as u64,
        (created.0 % 1_000_000) as u32 * 1_000,
    );
    let mut sub = Submission::parse(
        &json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}),
        3,
    )
    .expect("the demo submission is valid");
    sub.job_id = Some(JobId(Uuid::new_v7(ts)));
    let queued = sub.new_job(tenant, created);
    let mut events = vec![queued.created_event()];
    let progress = Progress::new(
        Some(100.0),
        Some("step".to_owned()),
        Some("1/1".to_owned()),
        Some(json!({"step": 1})),
    )
    .expect("a valid percent");
    let mut job = queued;
    for (k, t) in [
        Transition::Start,
        Transition::Progress(progress),
        Transition::Succeed(json!({"steps": 1})),
    ]
    .into_iter()
    .enumerate()
    {
        let (next, ev) = job
            .apply(&t, at(k as i64 + 1))
            .expect("a demo's transitions");
        events.push(ev);
        job = next;
    }
    Seeded { job, events }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

/// Prints what has been written so far and how fast.
struct Meter {
    started: Instant,
    last: Instant,
    jobs_at_last: usize,
}

impl Meter {
    fn new() -> Self {
        Meter {
            started: Instant::now(),
            last: Instant::now(),
            jobs_at_last: 0,
        }
    }

    fn report(&mut self, jobs: usize, events_per_job: usize) {
        let now = Instant::now();
        let span = now.duration_since(self.last).as_secs_f64().max(1e-9);
        let rows = (jobs - self.jobs_at_last) * (1 + events_per_job);
        println!(
            "{jobs} jobs ({} rows) in {:.1} s: {:.0} rows/s ({:.0} jobs/s) now",
            jobs * (1 + events_per_job),
            now.duration_since(self.started).as_secs_f64(),
            rows as f64 / span,
            (jobs - self.jobs_at_last) as f64 / span,
        );
        self.last = now;
        self.jobs_at_last = jobs;
    }
}

/// `INSERT INTO table (columns) VALUES (?, …), …` for `rows` rows.
fn multi_row_insert(table_and_columns: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!(
        "INSERT INTO {table_and_columns} VALUES {}",
        vec![row; rows].join(", ")
    )
}

const SQLITE_JOBS: &str = "herald_jobs (id, task_id, tenant, kind, status, input, progress, \
    result, attempt, max_attempts, created_at, started_at, finished_at, updated_at, last_seq)";
const SQLITE_JOB_COLUMNS: usize = 15;
const SQLITE_EVENTS: &str = "herald_job_events (job_id, seq, event, data, at)";

async fn insert_sqlite(conn: &mut SqliteConnection, chunk: &[Seeded]) -> anyhow::Result<()> {
    let sql = multi_row_insert(SQLITE_JOBS, SQLITE_JOB_COLUMNS, chunk.len());
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for s in chunk {
        let j = &s.job;
        q = q
            .bind(j.id.to_string())
            .bind(j.id.task_id().to_string())
            .bind(j.tenant.clone())
            .bind(j.kind.clone())
            .bind(j.status.as_str())
            .bind(to_json(&j.input))
            .bind(j.progress.as_ref().map(to_json))
            .bind(j.result.as_ref().map(to_json))
            .bind(j.attempt)
            .bind(j.max_attempts)
            .bind(j.created_at.0)
            .bind(j.started_at.map(|t| t.0))
            .bind(j.finished_at.map(|t| t.0))
            .bind(j.finished_at.unwrap_or(j.created_at).0)
            .bind(j.last_seq.0);
    }
    q.execute(&mut *conn).await?;
    let events: usize = chunk.iter().map(|s| s.events.len()).sum();
    let sql = multi_row_insert(SQLITE_EVENTS, 5, events);
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for s in chunk {
        for e in &s.events {
            q = q
                .bind(s.job.id.to_string())
                .bind(e.seq.0)
                .bind(e.kind.as_str())
                .bind(e.data.clone())
                .bind(e.at.0);
        }
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

async fn insert_postgres(
    conn: &mut PgConnection,
    chunk: &[Seeded],
    node: &str,
) -> anyhow::Result<()> {
    let jobs = |f: &dyn Fn(&JobRecord) -> Option<String>| -> Vec<Option<String>> {
        chunk.iter().map(|s| f(&s.job)).collect()
    };
    let ints = |f: &dyn Fn(&JobRecord) -> Option<i64>| -> Vec<Option<i64>> {
        chunk.iter().map(|s| f(&s.job)).collect()
    };
    let ids: Vec<Uuid> = chunk.iter().map(|s| s.job.id.0).collect();
    sqlx::query(
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, progress, result, \
           attempt, max_attempts, created_at, started_at, finished_at, updated_at, last_seq, node_id) \
         SELECT id, task_id, tenant, kind, status, input, progress, result, attempt, max_attempts, \
           created_at, started_at, finished_at, updated_at, last_seq, $16 \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
           $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], \
           $13::int8[], $14::int8[], $15::int8[]) \
         AS v(id, task_id, tenant, kind, status, input, progress, result, attempt, max_attempts, \
           created_at, started_at, finished_at, updated_at, last_seq)",
    )
    .bind(&ids)
    .bind(jobs(&|j| Some(j.id.task_id().to_string())))
    .bind(jobs(&|j| Some(j.tenant.clone())))
    .bind(jobs(&|j| Some(j.kind.clone())))
    .bind(jobs(&|j| Some(j.status.as_str().to_owned())))
    .bind(jobs(&|j| Some(to_json(&j.input))))
    .bind(jobs(&|j| j.progress.as_ref().map(to_json)))
    .bind(jobs(&|j| j.result.as_ref().map(to_json)))
    .bind(ints(&|j| Some(j.attempt as i64)))
    .bind(ints(&|j| Some(j.max_attempts as i64)))
    .bind(ints(&|j| Some(j.created_at.0)))
    .bind(ints(&|j| j.started_at.map(|t| t.0)))
    .bind(ints(&|j| j.finished_at.map(|t| t.0)))
    .bind(ints(&|j| Some(j.finished_at.unwrap_or(j.created_at).0)))
    .bind(ints(&|j| Some(j.last_seq.0)))
    .bind(node)
    .execute(&mut *conn)
    .await?;
    let events = chunk
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (s.job.id.0, e)));
    let (mut job_id, mut seq, mut event, mut data, mut at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, e) in events {
        job_id.push(id);
        seq.push(e.seq.0);
        event.push(e.kind.as_str());
        data.push(e.data.as_str());
        at.push(e.at.0);
    }
    sqlx::query(
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int8[])",
    )
    .bind(&job_id)
    .bind(&seq)
    .bind(&event)
    .bind(&data)
    .bind(&at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

enum Target {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Target {
    /// Migrates the database as herald does at start, then opens the
    /// connection the seeding writes on.
    async fn open(url: &str) -> anyhow::Result<Target> {
        use anyhow::Context;
        if url.starts_with("sqlite:") {
            let pools = sqlite::connect(url)
                .await
                .with_context(|| format!("opening the SQLite database {url}"))?;
            sqlite::migrate(&pools.writer)
                .await
                .context("running herald's migrations")?;
            // herald's own settings (WAL, synchronous=NORMAL), on a
            // connection of our own.
            let conn = pools.writer.acquire().await?.detach();
            Ok(Target::Sqlite(conn))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pools = postgres::connect(url, 2, "seed-history")
                .await
                .with_context(|| {
                    "connecting to PostgreSQL (the database must exist: create it with `createdb`)"
                })?;
            postgres::migrate(&pools.main)
                .await
                .context("running herald's migrations")?;
            let conn = pools.main.acquire().await?.detach();
            Ok(Target::Postgres(conn))
        } else {
            anyhow::bail!("{url:?} is neither a sqlite:// nor a postgres:// URL")
        }
    }

    /// Runs a statement without an answer (BEGIN, COMMIT).
    async fn run(&mut self, sql: &'static str) -> anyhow::Result<()> {
        match self {
            Target::Sqlite(c) => {
                sqlx::query(sql).execute(c).await?;
            }
            Target::Postgres(c) => {
                sqlx::query(sql).execute(c).await?;
            }
        }
        Ok(())
    }

    async fn begin(&mut self) -> anyhow::Result<()> {
        // SQLite: take the write lock up front, as herald's writer does.
        match self {
            Target::Sqlite(_) => self.run("BEGIN IMMEDIATE").await,
            Target::Postgres(_) => self.run("BEGIN").await,
        }
    }

    async fn insert(&mut self, chunk: &[Seeded]) -> anyhow::Result<()> {
        match self {
            Target::Sqlite(c) => insert_sqlite(c, chunk).await,
            Target::Postgres(c) => insert_postgres(c, chunk, "seed-history").await,
        }
    }

    /// SQLite: folds the write-ahead log into the file, so its size is the
    /// history's.
    async fn finish(&mut self) -> anyhow::Result<()> {
        if let Target::Sqlite(c) = self {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(c)
                .await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.batch > 0 && args.per_transaction > 0,
        "--batch and --per-transaction must be at least 1"
    );
    let mut target = Target::open(&args.url).await?;
    let batch = match target {
        Target::Sqlite(_) => args.batch.min(1_600),
        Target::Postgres(_) => args.batch,
    };
    let end = Timestamp::now();
    let per_tx = args.per_transaction.max(batch);
    let mut meter = Meter::new();
    let mut done = 0;
    while done < args.jobs {
        target.begin().await?;
        let tx_end = (done + per_tx).min(args.jobs);
        while done < tx_end {
            let n = batch.min(tx_end - done);
            let chunk: Vec<Seeded> = (done..done + n)
                .map(|i| seeded(i, args.jobs, end, &args.tenant))
                .collect();
            target.insert(&chunk).await?;
            done += n;
        }
        target.run("COMMIT").await?;
        meter.report(done, 4);
    }
    target.finish().await?;
    let took = meter.started.elapsed();
    println!(
        "seeded {done} finished jobs and {} events in {:.1} s ({:.0} rows/s)",
        done * 4,
        took.as_secs_f64(),
        (done * 5) as f64 / took.max(Duration::from_millis(1)).as_secs_f64()
    );
    if let Some(path) = args
        .url
        .strip_prefix("sqlite://")
        .or(args.url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or(path);
        if let Ok(meta) = std::fs::metadata(path) {
            println!("{path}: {:.1} MB", meta.len() as f64 / 1e6);
        }
    }
    Ok(())
}
