//! The query plans of the reads that requests and streams make, on a fresh
//! database migrated with herald's migrations and holding some history: each
//! read must start from an index on what it asks for. A `Seq Scan` of a table
//! of herald's, or a `Sort` (of everything matched), is a cost that grows with
//! the history, and fails here. Needs `HERALD_TEST_POSTGRES_URL`; skipped,
//! with a note, without it.
//!
//! The planner chooses by cost, so the tables hold 20,000 jobs and their
//! events and are `ANALYZE`d first: on tiny tables a sequential scan is the
//! cheapest plan and says nothing about a real history (`enable_seqscan =
//! off` would hide that choice instead of testing it). Each plan is checked
//! twice: as a custom plan, made for the values given (what PostgreSQL runs
//! while a prepared statement's generic plan does not look cheaper), and as
//! the generic plan that a prepared statement may settle on after five runs,
//! made without the values (by `PREPARE` and `EXPLAIN EXECUTE`: an `EXPLAIN`
//! given the values plans for them, which is how an earlier version of this
//! test missed two generic plans that walked a tenant's jobs). The job lists
//! are not prepared statements, so only their custom plans count.

use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnection, PgPool};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, Postgres, Row};
use uuid::Uuid;

use super::batch::{DUE_JOB_WAITS, JOBS_BY_IDS};
use super::feed::{FEED_AFTER, FEED_HEAD};
use super::jobs::{list_sql, CANCEL_REQUESTED_AMONG, EVENTS_AFTER, ITEMS, JOB_BY_IDEMPOTENCY_KEY};
use super::queue::QUEUE_HEAD;
use super::remote::{LEASES_OVER, REMOTE_HEAD, REMOTE_HEAD_OF_TENANTS};
use crate::domain::JobStatus;
use crate::store::ListQuery;

/// Stored jobs: enough that the planner prefers a lookup to a walk.
const JOBS: i64 = 20_000;

/// A fresh database on the server of `HERALD_TEST_POSTGRES_URL`, dropped
/// when this goes (apalis fixes its schema's name, so each test needs a
/// database of its own).
pub(super) struct TestDatabase {
    admin: String,
    name: String,
    /// The test database's URL.
    pub(super) url: String,
    pub(super) pool: PgPool,
}

impl TestDatabase {
    pub(super) async fn create() -> Option<TestDatabase> {
        let Some(admin) = std::env::var("HERALD_TEST_POSTGRES_URL")
            .ok()
            .filter(|s| !s.is_empty())
        else {
            eprintln!(
                "skipped: the PostgreSQL store tests need HERALD_TEST_POSTGRES_URL \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
            return None;
        };
        let name = format!("herald_store_{}", Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to HERALD_TEST_POSTGRES_URL");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let mut url = url::Url::parse(&admin).expect("HERALD_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        let pool = PgPool::connect(url.as_str())
            .await
            .expect("connect to the test database");
        Some(TestDatabase {
            admin,
            name,
            url: url.to_string(),
            pool,
        })
    }
}

/// Dropped even when a check fails: a thread of its own runs the async
/// `DROP DATABASE` (FORCE ends the pool's connections).
impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Migrates and fills the database: `JOBS` jobs, most of tenant `''`, one in
/// a hundred of tenant `other`; one in seven of kind `import`, the others `demo`;
/// the newest hundred `running`, the thousand before them `queued` (due in
/// submission order), one in ninety-seven `failed`, the rest
/// `succeeded`; four events each (every tenth job also ten items), appended
/// by twenty transactions, as the feed's cursor orders by transaction.
async fn seed(pool: &PgPool) {
    seed_unanalyzed(pool).await;
    sqlx::query("ANALYZE").execute(pool).await.expect("ANALYZE");
}

/// [`seed`] without the `ANALYZE`: the planner's view of a database that
/// filled up since its statistics were taken (a fresh one, under load).
async fn seed_unanalyzed(pool: &PgPool) {
    super::migrate(pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
           max_attempts, idempotency_key, created_at, started_at, finished_at, updated_at, last_seq, \
           run_at) \
         SELECT (lpad(to_hex(i), 8, '0') || '-0000-7000-8000-000000000000')::uuid, 'task-' || i, \
           CASE WHEN i % 100 = 0 THEN 'other' ELSE '' END, \
           CASE WHEN i % 7 = 0 THEN 'import' ELSE 'demo' END, \
           CASE WHEN i > $1 - 100 THEN 'running' WHEN i > $1 - 1100 THEN 'queued' \
             WHEN i % 97 = 0 THEN 'failed' ELSE 'succeeded' END, \
           '{}', 1, 3, CASE WHEN i % 3 = 0 THEN 'key-' || i END, \
           i, i, CASE WHEN i > $1 - 1100 THEN NULL ELSE i END, i, 4, i \
         FROM generate_series(1, $1) AS i",
    )
    .bind(JOBS)
    .execute(pool)
    .await
    .expect("seed jobs");
    for part in 0..20 {
        sqlx::query(
            "INSERT INTO herald_job_events (job_id, seq, event, data, at) \
             SELECT j.id, s.seq, CASE WHEN s.seq <= 2 THEN 'status' WHEN s.seq = 3 THEN 'progress' \
               WHEN s.seq = 4 THEN 'result' ELSE 'item' END, '{}', j.created_at \
             FROM herald_jobs j, generate_series(1, 14) AS s(seq) \
             WHERE j.created_at % 20 = $1 AND (s.seq <= 4 OR j.created_at % 10 = 0) \
             ORDER BY j.created_at, s.seq",
        )
        .bind(part)
        .execute(pool)
        .await
        .expect("seed events");
    }
}

type Bind = fn(Query<'static, Postgres, PgArguments>) -> Query<'static, Postgres, PgArguments>;

/// What a read must do: use these indexes (each as the equally good ones
/// the planner may choose between), and never read a whole table of
/// herald's nor sort.
struct Expect {
    what: &'static str,
    sql: &'static str,
    bind: Bind,
    indexes: &'static [&'static [&'static str]],
    /// A sort of what the index found may do: one job's events, which the
    /// planner may fetch by bitmap and sort when it expects a few.
    may_sort_one_job: bool,
    /// Run as a prepared statement, so it may run a generic plan (the job
    /// lists are not: they are planned for their values every time).
    prepared: bool,
}

/// The nodes of a plan, depth first: (node type, relation, index).
fn nodes(plan: &Value, out: &mut Vec<(String, String, String)>) {
    let field = |k: &str| plan[k].as_str().unwrap_or_default().to_owned();
    out.push((
        field("Node Type"),
        field("Relation Name"),
        field("Index Name"),
    ));
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

async fn check(conn: &mut PgConnection, e: &Expect, mode: &str) {
    let what = format!("{} ({mode} plan)", e.what);
    let plan = if mode.ends_with("generic") {
        generic_plan(conn, e, &what).await
    } else {
        // Given the values, EXPLAIN plans for them: a custom plan.
        let explain = sqlx::query(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {}", e.sql)));
        let row = (e.bind)(explain)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|err| panic!("{what}: EXPLAIN failed: {err}"));
        row.get::<Value, _>(0)
    };
    let mut all = Vec::new();
    nodes(&plan[0]["Plan"], &mut all);
    let herald = |rel: &str| rel.starts_with("herald_");
    for (node, rel, _) in &all {
        // An incremental sort only orders, group by group, what an index
        // already delivers sorted by the leading keys: under a LIMIT it
        // stops with the limit. (The claim gets one over the ready index
        // when ANALYZE's sample makes `run_at` look unique.)
        let sort = node.contains("Sort") && node != "Incremental Sort" && !e.may_sort_one_job;
        let whole_table = node == "Seq Scan" && herald(rel);
        // A Materialize under a join is one scan's rows (all of a tenant's
        // jobs, say) matched against every row of the other side.
        let rescanned = node == "Materialize";
        assert!(
            !whole_table && !sort && !rescanned,
            "{what}: `{node} {rel}` reads or sorts every row, a cost that grows with \
             history; plan: {plan:#}"
        );
    }
    for index in e.indexes {
        assert!(
            all.iter().any(|(_, _, i)| index.contains(&i.as_str())),
            "{what}: expected a scan of an index of {index:?}; plan: {plan:#}"
        );
    }
}

/// The plan a prepared statement of `e.sql` runs under `plan_cache_mode =
/// force_generic_plan`: prepared by name, then explained as an `EXECUTE` of
/// it. (An `EXPLAIN` of the statement given the values plans for them, and
/// `EXECUTE` takes no bound values: it gets nulls, which a generic plan does
/// not look at.)
async fn generic_plan(conn: &mut PgConnection, e: &Expect, what: &str) -> Value {
    let params = (1..=32)
        .take_while(|n| e.sql.contains(&format!("${n}")))
        .map(|_| "NULL")
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(AssertSqlSafe(format!("PREPARE herald_plan AS {}", e.sql)))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|err| panic!("{what}: PREPARE failed: {err}"));
    let execute = if params.is_empty() {
        "EXPLAIN (FORMAT JSON) EXECUTE herald_plan".to_owned()
    } else {
        format!("EXPLAIN (FORMAT JSON) EXECUTE herald_plan ({params})")
    };
    let row = sqlx::query(AssertSqlSafe(execute))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|err| panic!("{what}: EXPLAIN EXECUTE failed: {err}"));
    sqlx::query("DEALLOCATE herald_plan")
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|err| panic!("{what}: DEALLOCATE failed: {err}"));
    row.get(0)
}

fn list(status: Option<JobStatus>, kind: Option<&str>) -> &'static str {
    list_sql(&ListQuery {
        status,
        kind: kind.map(str::to_owned),
        ..ListQuery::default()
    })
}

fn job(i: u32) -> Uuid {
    format!("{i:08x}-0000-7000-8000-000000000000")
        .parse()
        .expect("a uuid")
}

fn expectations() -> Vec<Expect> {
    // It starts from the events after the cursor, in feed order, and looks
    // each one's job up by its id.
    const FEED: &[&[&str]] = &[&["herald_job_events_feed"], &["herald_jobs_pkey"]];
    vec![
        Expect {
            what: "feed_after, every job of the tenant",
            sql: FEED_AFTER,
            bind: |q| {
                q.bind("0")
                    .bind(JOBS * 4 - 100)
                    .bind("")
                    .bind(None::<String>)
                    .bind(None::<Vec<Uuid>>)
                    .bind(256_i64)
            },
            indexes: FEED,
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "feed_after, a rare kind of a small tenant",
            sql: FEED_AFTER,
            bind: |q| {
                q.bind("0")
                    .bind(0_i64)
                    .bind("other")
                    .bind(Some("import"))
                    .bind(None::<Vec<Uuid>>)
                    .bind(256_i64)
            },
            indexes: FEED,
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "feed_after, some jobs",
            sql: FEED_AFTER,
            bind: |q| {
                q.bind("0")
                    .bind(0_i64)
                    .bind("")
                    .bind(None::<String>)
                    .bind(Some(vec![job(1), job(2)]))
                    .bind(256_i64)
            },
            indexes: FEED,
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "feed_head",
            sql: FEED_HEAD,
            bind: |q| q,
            indexes: &[&["herald_job_events_feed"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "get (batched)",
            sql: JOBS_BY_IDS,
            bind: |q| q.bind(vec![job(1), job(2)]),
            indexes: &[&["herald_jobs_pkey"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "list, a small tenant",
            sql: list(None, None),
            bind: |q| q.bind("other").bind(Uuid::max()).bind(51_i64),
            indexes: &[&["herald_jobs_tenant_id"]],
            may_sort_one_job: false,
            prepared: false,
        },
        Expect {
            what: "list, the tenant of most jobs",
            sql: list(None, None),
            bind: |q| q.bind("").bind(Uuid::max()).bind(51_i64),
            // Nearly all jobs are the tenant's: the primary key read
            // backwards finds its page as fast.
            indexes: &[&["herald_jobs_tenant_id", "herald_jobs_pkey"]],
            may_sort_one_job: false,
            prepared: false,
        },
        // The filters below are selective (a small tenant, a rare status, a
        // rare kind): only an index that starts from all of them reads just
        // the page. (For the values of most jobs, walking a shorter index
        // backwards finds a page as fast, and the planner may rightly do so.)
        Expect {
            what: "list by status",
            sql: list(Some(JobStatus::Failed), None),
            bind: |q| {
                q.bind("other")
                    .bind(Uuid::max())
                    .bind(51_i64)
                    .bind("failed")
            },
            indexes: &[&["herald_jobs_tenant_status_id"]],
            may_sort_one_job: false,
            prepared: false,
        },
        Expect {
            what: "list by kind",
            sql: list(None, Some("import")),
            bind: |q| {
                q.bind("other")
                    .bind(Uuid::max())
                    .bind(51_i64)
                    .bind("import")
            },
            indexes: &[&["herald_jobs_tenant_kind_id"]],
            may_sort_one_job: false,
            prepared: false,
        },
        Expect {
            what: "list by status and kind",
            sql: list(Some(JobStatus::Failed), Some("import")),
            bind: |q| {
                q.bind("other")
                    .bind(Uuid::max())
                    .bind(51_i64)
                    .bind("failed")
                    .bind("import")
            },
            // No index holds both (one fewer entry to move at each status
            // change): either filter's index starts from the tenant and it.
            indexes: &[&["herald_jobs_tenant_status_id", "herald_jobs_tenant_kind_id"]],
            may_sort_one_job: false,
            prepared: false,
        },
        Expect {
            what: "events_after",
            sql: EVENTS_AFTER,
            bind: |q| q.bind(job(1)).bind(2_i64).bind(256_i64),
            indexes: &[&["herald_job_events_pkey"]],
            may_sort_one_job: true,
            prepared: true,
        },
        Expect {
            what: "items",
            sql: ITEMS,
            bind: |q| q.bind(job(10)).bind(5_i64).bind(100_i64),
            indexes: &[&["herald_job_events_items"]],
            may_sort_one_job: true,
            prepared: true,
        },
        Expect {
            what: "submit's idempotency lookup",
            sql: JOB_BY_IDEMPOTENCY_KEY,
            bind: |q| q.bind("").bind("key-3"),
            indexes: &[&["herald_jobs_idempotency"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "the queue's claim",
            sql: QUEUE_HEAD,
            bind: |q| q.bind(50_i64),
            indexes: &[&["herald_jobs_ready"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "a submission's look for a due job waiting",
            sql: DUE_JOB_WAITS,
            bind: |q| q.bind(i64::MAX),
            indexes: &[&["herald_jobs_ready"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "a remote worker's claim, per kind",
            sql: REMOTE_HEAD,
            bind: |q| q.bind("crew_plan").bind(i64::MAX).bind(10_i64),
            indexes: &[&["herald_jobs_ready_remote"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "a remote worker's claim, per kind, for a key limited to tenants",
            sql: REMOTE_HEAD_OF_TENANTS,
            bind: |q| {
                q.bind("crew_plan")
                    .bind(i64::MAX)
                    .bind(10_i64)
                    .bind(vec!["acme".to_owned()])
            },
            indexes: &[&["herald_jobs_ready_remote"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "the remote lease sweep",
            sql: LEASES_OVER,
            bind: |q| q.bind(i64::MAX).bind(500_i64),
            indexes: &[&["herald_jobs_leased"]],
            may_sort_one_job: false,
            prepared: true,
        },
        Expect {
            what: "cancel_requested_among",
            sql: CANCEL_REQUESTED_AMONG,
            bind: |q| q.bind(vec![job(JOBS as u32), job(JOBS as u32 - 1)]),
            indexes: &[&["herald_jobs_pkey"]],
            may_sort_one_job: false,
            prepared: true,
        },
    ]
}

#[tokio::test]
async fn every_read_starts_from_an_index_on_what_it_asks_for() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    seed(&db.pool).await;
    check_both_plans(&db.pool, "", |_| true).await;
}

/// [`check`]s the expectations `which` picks with the custom plan, then the
/// generic one.
async fn check_both_plans(pool: &PgPool, label: &str, which: impl Fn(&Expect) -> bool) {
    check_plans(pool, &["custom", "generic"], label, which).await;
}

/// [`check`]s the expectations `which` picks with each plan of `modes`.
async fn check_plans(pool: &PgPool, modes: &[&str], label: &str, which: impl Fn(&Expect) -> bool) {
    let mut conn = pool.acquire().await.expect("a connection");
    for mode in modes {
        sqlx::query(AssertSqlSafe(format!(
            "SET plan_cache_mode = force_{mode}_plan"
        )))
        .execute(&mut *conn)
        .await
        .expect("SET plan_cache_mode");
        let runs = |e: &Expect| *mode != "generic" || e.prepared;
        for e in expectations().iter().filter(|e| which(e) && runs(e)) {
            check(&mut conn, e, &format!("{label}{mode}")).await;
        }
    }
}

/// The feed's reads on a database whose statistics predate its rows: each
/// event's job is still looked up by key, never all of a tenant's jobs
/// matched against every event.
#[tokio::test]
async fn the_feed_looks_each_job_up_without_statistics() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    seed_unanalyzed(&db.pool).await;
    check_both_plans(&db.pool, "unanalyzed, ", |e| e.sql == FEED_AFTER).await;
}

/// The feed's reads as a new database's first connections plan them, on
/// empty tables: a prepared statement keeps its generic plan as the tables
/// fill up (until an `ANALYZE` replans it), so that plan must look each
/// event's job up by its id. (A custom plan is made again at every run: on
/// empty tables it may rightly read them whole.)
#[tokio::test]
async fn the_feed_looks_each_job_up_by_its_id_on_a_new_database() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    super::migrate(&db.pool).await.expect("migrate");
    check_plans(&db.pool, &["generic"], "empty tables, ", |e| {
        e.sql == FEED_AFTER
    })
    .await;
}
