//! A fresh database per test: a SQLite file, or a PostgreSQL database.

use std::sync::Arc;

use tempfile::TempDir;

use super::{backend, postgres_url, Backend};

/// A test's database: a SQLite file in a temp dir, or a fresh PostgreSQL
/// database (which isolates everything, LISTEN channels included), dropped
/// when the last clone goes. Clone it to restart an app
/// on the same data.
#[derive(Clone)]
pub struct TestDb(Arc<DbInner>);

struct DbInner {
    dir: TempDir,
    url: String,
    /// PostgreSQL: (admin URL, database name) to drop at the end.
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::on(backend()).await
    }

    pub async fn on(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                TestDb(Arc::new(DbInner { dir, url, pg: None }))
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = postgres_url().expect("HERALD_TEST_POSTGRES_URL is set");
                let name = format!("herald_t_{}", uuid::Uuid::now_v7().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to HERALD_TEST_POSTGRES_URL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                let mut url = url::Url::parse(&admin).expect("a URL");
                url.set_path(&name);
                TestDb(Arc::new(DbInner {
                    dir,
                    url: url.to_string(),
                    pg: Some((admin, name)),
                }))
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// A temp dir that lives as long as the database.
    pub fn dir(&self) -> &TempDir {
        &self.0.dir
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop is not async: a thread with its own runtime. FORCE ends the
        // connections of an app that is still shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
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
