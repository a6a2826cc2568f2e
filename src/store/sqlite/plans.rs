//! The query plans of the reads that requests and streams make, on a file
//! migrated with herald's migrations and holding some history: each read must
//! start from an index on what it asks for. A full `SCAN` of a table of
//! herald's, or a temp b-tree (a sort of everything matched), is a cost that
//! grows with the history, and fails here.
//!
//! Each plan is checked twice: as herald runs (it never runs `ANALYZE`, so
//! SQLite plans from the schema alone) and after `ANALYZE` (which an operator
//! or `PRAGMA optimize` may run), whose statistics must not lead it astray.

use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqlitePool};
use sqlx::{AssertSqlSafe, Row, Sqlite};
use tempfile::TempDir;
use uuid::Uuid;

use super::feed::{FEED_AFTER, FEED_HEAD};
use super::jobs::{list_sql, CANCEL_REQUESTED_AMONG, EVENTS_AFTER, ITEMS, JOB_BY_ID};
use super::nodes::RUNNING_LOCAL;
use super::queue::QUEUE_STATS;
use super::remote::{LEASES_OVER, REMOTE_HEAD, REMOTE_HEAD_OF_TENANTS};
use super::writes::{JOB_BY_IDEMPOTENCY_KEY, QUEUE_HEAD, START_JOBS};
use crate::domain::JobStatus;
use crate::store::ListQuery;

/// Stored jobs: enough that a walk and a lookup differ, few enough to seed fast.
const JOBS: i64 = 20_000;

/// A migrated file with `JOBS` jobs: most of tenant `''`, one in a hundred
/// of tenant `other`; one in seven of kind `import`, the others `demo`; the
/// newest hundred `running`, one in ninety-seven `failed`, the rest
/// `succeeded`; four events each (every tenth job also ten items).
async fn seeded() -> (TempDir, SqlitePool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let pools = super::connect(&url).await.expect("open the test file");
    super::migrate(&pools.writer).await.expect("migrate");
    let pool = pools.writer;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
           max_attempts, idempotency_key, created_at, started_at, finished_at, updated_at, last_seq) \
         SELECT printf('%08x-0000-7000-8000-000000000000', i), printf('task-%d', i), \
           CASE WHEN i % 100 = 0 THEN 'other' ELSE '' END, \
           CASE WHEN i % 7 = 0 THEN 'import' ELSE 'demo' END, \
           CASE WHEN i > ?1 - 100 THEN 'running' WHEN i % 97 = 0 THEN 'failed' \
             ELSE 'succeeded' END, \
           '{}', 1, 3, CASE WHEN i % 3 = 0 THEN printf('key-%d', i) END, \
           i, i, CASE WHEN i > ?1 - 100 THEN NULL ELSE i END, i, 4 \
         FROM n",
    )
    .bind(JOBS)
    .execute(&pool)
    .await
    .expect("seed jobs");
    sqlx::query(
        "WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 14) \
         INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT j.id, s.seq, CASE WHEN s.seq <= 2 THEN 'status' WHEN s.seq = 3 THEN 'progress' \
           WHEN s.seq = 4 THEN 'result' ELSE 'item' END, '{}', j.created_at \
         FROM herald_jobs j, s WHERE s.seq <= 4 OR j.created_at % 10 = 0 \
         ORDER BY j.created_at, s.seq",
    )
    .execute(&pool)
    .await
    .expect("seed events");
    (dir, pool)
}

type Bind = fn(Query<'static, Sqlite, SqliteArguments>) -> Query<'static, Sqlite, SqliteArguments>;

/// `sql`'s plan with the values `bind` gives it, one step a line, as
/// `EXPLAIN QUERY PLAN` prints them (`SEARCH e USING INTEGER PRIMARY KEY (rowid>?)`).
async fn plan(pool: &SqlitePool, sql: &str, bind: Bind) -> Vec<String> {
    let explain = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
    bind(explain)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN QUERY PLAN {sql}: {e}"))
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect()
}

/// What a read must do: these steps, each naming the index it uses and the
/// terms it starts from, as SQLite prints them; and no step that reads a
/// whole table of herald's or sorts.
struct Expect {
    what: &'static str,
    sql: &'static str,
    bind: Bind,
    /// Each step that must appear, as the ways it may be printed: equally
    /// good indexes the planner may choose between.
    steps: &'static [&'static [&'static str]],
}

fn check(plan: &[String], e: &Expect, stats: &str) {
    let what = format!("{} ({stats})", e.what);
    // See `BOUND_LIMIT` in `sqlite/mod.rs`.
    for bound in ["LIMIT ?", "OFFSET ?"] {
        assert!(
            !e.sql.contains(bound),
            "{what}: `{bound}` makes SQLite plan the statement again at every run; write `{}`",
            bound.replace('?', "+?")
        );
    }
    for step in plan {
        // A walk of a partial index of queued or running jobs reads the
        // queue or the jobs in flight, not the history: it holds nothing else.
        const IN_FLIGHT_ONLY: [&str; 4] = [
            "herald_jobs_ready",
            "herald_jobs_ready_remote",
            "herald_jobs_leased",
            "herald_jobs_running_local",
        ];
        let walks_in_flight = IN_FLIGHT_ONLY.iter().any(|index| {
            step.replace("USING COVERING INDEX", "USING INDEX")
                .ends_with(&format!("USING INDEX {index}"))
        });
        let whole_table =
            step.starts_with("SCAN ") && !step.contains("VIRTUAL TABLE") && !walks_in_flight;
        assert!(
            !whole_table && !step.contains("TEMP B-TREE"),
            "{what}: `{step}` reads every row, a cost that grows with history; plan: {plan:#?}"
        );
    }
    for expected in e.steps {
        // Whether the index also holds every column read does not matter here.
        let uses = |s: &String| {
            let s = s.replace("USING COVERING INDEX", "USING INDEX");
            expected.iter().any(|e| s == *e)
        };
        assert!(
            plan.iter().any(uses),
            "{what}: expected a step {expected:?}; plan: {plan:#?}"
        );
    }
}

fn list(status: Option<JobStatus>, kind: Option<&str>) -> &'static str {
    list_sql(&ListQuery {
        status,
        kind: kind.map(str::to_owned),
        ..ListQuery::default()
    })
}

fn expectations() -> Vec<Expect> {
    // The feed starts from the events after the cursor (the rowid's range,
    // in feed order), then looks each one's job up by id (with statistics,
    // SQLite may look it up in the (tenant, id) index instead: as good).
    const FEED: &[&[&str]] = &[
        &["SEARCH e USING INTEGER PRIMARY KEY (rowid>?)"],
        &[
            "SEARCH j USING INDEX sqlite_autoindex_herald_jobs_1 (id=?) LEFT-JOIN",
            "SEARCH j USING INDEX herald_jobs_tenant_id (tenant=? AND id=?) LEFT-JOIN",
        ],
    ];
    vec![
        Expect {
            what: "feed_after, every job of the tenant",
            sql: FEED_AFTER,
            bind: |q| {
                q.bind(JOBS * 4 - 100)
                    .bind("")
                    .bind(None::<String>)
                    .bind(None::<String>)
                    .bind(256)
            },
            steps: FEED,
        },
        Expect {
            what: "feed_after, a rare kind of a small tenant",
            sql: FEED_AFTER,
            bind: |q| {
                q.bind(0)
                    .bind("other")
                    .bind(Some("import"))
                    .bind(None::<String>)
                    .bind(256)
            },
            steps: FEED,
        },
        Expect {
            what: "feed_after, some jobs",
            sql: FEED_AFTER,
            bind: |q| {
                q.bind(0)
                    .bind("")
                    .bind(None::<String>)
                    .bind(Some(r#"["00000001-0000-7000-8000-000000000000"]"#))
                    .bind(256)
            },
            steps: FEED,
        },
        Expect {
            what: "feed_head",
            sql: FEED_HEAD,
            bind: |q| q,
            steps: &[&["SEARCH herald_job_events"]],
        },
        Expect {
            what: "get",
            sql: JOB_BY_ID,
            bind: |q| q.bind("00000001-0000-7000-8000-000000000000"),
            steps: &[&["SEARCH herald_jobs USING INDEX sqlite_autoindex_herald_jobs_1 (id=?)"]],
        },
        Expect {
            what: "list",
            sql: list(None, None),
            bind: |q| q.bind("").bind(Uuid::max().to_string()).bind(51),
            steps: &[&["SEARCH herald_jobs USING INDEX herald_jobs_tenant_id (tenant=? AND id<?)"]],
        },
        Expect {
            what: "list by status",
            sql: list(Some(JobStatus::Running), None),
            bind: |q| {
                q.bind("")
                    .bind(Uuid::max().to_string())
                    .bind(51)
                    .bind("running")
            },
            steps: &[&[
                "SEARCH herald_jobs USING INDEX herald_jobs_tenant_status_id \
                   (tenant=? AND status=? AND id<?)",
            ]],
        },
        Expect {
            what: "list by kind",
            sql: list(None, Some("import")),
            bind: |q| {
                q.bind("other")
                    .bind(Uuid::max().to_string())
                    .bind(51)
                    .bind("import")
            },
            steps: &[
                &["SEARCH herald_jobs USING INDEX herald_jobs_tenant_kind_id \
                   (tenant=? AND kind=? AND id<?)"],
            ],
        },
        Expect {
            what: "list by status and kind",
            sql: list(Some(JobStatus::Failed), Some("import")),
            bind: |q| {
                q.bind("")
                    .bind(Uuid::max().to_string())
                    .bind(51)
                    .bind("failed")
                    .bind("import")
            },
            steps: &[&[
                "SEARCH herald_jobs USING INDEX herald_jobs_tenant_status_id \
                   (tenant=? AND status=? AND id<?)",
            ]],
        },
        Expect {
            what: "events_after",
            sql: EVENTS_AFTER,
            bind: |q| {
                q.bind("00000001-0000-7000-8000-000000000000")
                    .bind(2)
                    .bind(256)
            },
            steps: &[&[
                "SEARCH herald_job_events USING INDEX sqlite_autoindex_herald_job_events_1 \
                   (job_id=? AND seq>?)",
            ]],
        },
        Expect {
            what: "items",
            sql: ITEMS,
            bind: |q| {
                q.bind("0000000a-0000-7000-8000-000000000000")
                    .bind(5)
                    .bind(100)
            },
            steps: &[&["SEARCH herald_job_events USING INDEX herald_job_events_items (job_id=?)"]],
        },
        Expect {
            what: "submit's idempotency lookup",
            sql: JOB_BY_IDEMPOTENCY_KEY,
            bind: |q| q.bind("").bind("key-3"),
            steps: &[&["SEARCH herald_jobs USING INDEX herald_jobs_idempotency \
                   (tenant=? AND idempotency_key=?)"]],
        },
        Expect {
            what: "the queue's claim",
            sql: QUEUE_HEAD,
            bind: |q| q.bind(50),
            steps: &[&["SCAN herald_jobs USING INDEX herald_jobs_ready"]],
        },
        Expect {
            what: "the claim's update of the jobs it starts",
            sql: START_JOBS,
            bind: |q| q.bind(r#"[["00004e20-0000-7000-8000-000000000000"]]"#),
            // Each started job found by its key, never a walk of the table.
            steps: &[&["SEARCH herald_jobs USING INDEX sqlite_autoindex_herald_jobs_1 (id=?)"]],
        },
        Expect {
            what: "a remote worker's claim, per kind",
            sql: REMOTE_HEAD,
            bind: |q| q.bind("crew_plan").bind(i64::MAX).bind(10),
            steps: &[&[
                "SEARCH herald_jobs USING INDEX herald_jobs_ready_remote (kind=? AND run_at<?)",
            ]],
        },
        Expect {
            what: "a remote worker's claim, per kind, for a key limited to tenants",
            sql: REMOTE_HEAD_OF_TENANTS,
            bind: |q| {
                q.bind("crew_plan")
                    .bind(i64::MAX)
                    .bind(10)
                    .bind(r#"["acme"]"#)
            },
            steps: &[&[
                "SEARCH herald_jobs USING INDEX herald_jobs_ready_remote (kind=? AND run_at<?)",
            ]],
        },
        Expect {
            what: "the remote lease sweep",
            sql: LEASES_OVER,
            bind: |q| q.bind(i64::MAX).bind(500),
            // The partial index holds running remote jobs only.
            steps: &[&["SCAN herald_jobs USING INDEX herald_jobs_leased"]],
        },
        Expect {
            what: "cancel_requested_among",
            sql: CANCEL_REQUESTED_AMONG,
            bind: |q| q.bind(r#"["00004e20-0000-7000-8000-000000000000"]"#),
            // Each id looked up by key.
            steps: &[&["SEARCH herald_jobs USING INDEX sqlite_autoindex_herald_jobs_1 (id=?)"]],
        },
        Expect {
            what: "the queue's figures",
            sql: QUEUE_STATS,
            bind: |q| q,
            steps: &[
                &["SCAN herald_jobs USING INDEX herald_jobs_ready"],
                &["SCAN herald_jobs USING INDEX herald_jobs_ready_remote"],
            ],
        },
        Expect {
            what: "start-up recovery of running local jobs",
            sql: RUNNING_LOCAL,
            bind: |q| q,
            steps: &[&["SCAN herald_jobs USING INDEX herald_jobs_running_local"]],
        },
    ]
}

#[tokio::test]
async fn every_read_starts_from_an_index_on_what_it_asks_for() {
    let (_dir, pool) = seeded().await;
    for stats in ["no statistics, as herald runs", "after ANALYZE"] {
        if stats == "after ANALYZE" {
            sqlx::query("ANALYZE")
                .execute(&pool)
                .await
                .expect("ANALYZE");
        }
        for e in expectations() {
            let plan = plan(&pool, e.sql, e.bind).await;
            check(&plan, &e, stats);
        }
    }
}
