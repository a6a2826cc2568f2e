//! The feed: every job's events in (appending transaction, event id) order.

use async_trait::async_trait;
use uuid::Uuid;

use super::PgStore;
use crate::domain::JobId;
use crate::store::{
    FeedCursor, FeedEvent, FeedFilter, FeedRead, FeedStore, StoreError, StoredEvent,
};

/// `horizon.h`: every event with a smaller transaction id is final.
///
/// Start from the statement's snapshot: a transaction id below its `xmin` has
/// finished, and one in its in-progress list (`xip`) may still commit. But
/// those lists span the whole server, and a transaction in another database
/// cannot write our tables; left in, any long transaction anywhere on the
/// server (another application, another herald database) would hold the feed
/// back. So an in-progress id is skipped when `pg_stat_activity` shows it
/// belongs to a backend connected to another database. Only that positive
/// proof skips one: a transaction that ended between the snapshot and the
/// read of `pg_stat_activity`, or whose backend this role may not see, still
/// counts, which only delays the feed until the next read. The horizon is the
/// smallest id still counted, or the snapshot's `xmax` when none is.
/// (`backend_xid` is a 32-bit xid; `xip` holds 64-bit ones: compared on the
/// low 32 bits, which are unique among running transactions.)
macro_rules! feed_horizon {
    () => {
        "WITH snap AS (SELECT pg_current_snapshot() AS s), \
         horizon AS (SELECT coalesce( \
           (SELECT min(x) FROM snap, pg_snapshot_xip(snap.s) AS x \
             WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
               WHERE a.datname IS NOT NULL AND a.datname <> current_database() \
                 AND a.backend_xid IS NOT NULL \
                 AND a.backend_xid::text::bigint = x::text::bigint % 4294967296)), \
           (SELECT pg_snapshot_xmax(s) FROM snap)) AS h) "
    };
}

/// The events after the cursor (`$1`, `$2`) and below the horizon, at most
/// `$6` (a read's window), each with its data when its job passes the
/// filter: tenant `$3`, kind `$4`, jobs `$5`, the last two when not null.
///
/// It starts from the events after the cursor, in the order of the feed's
/// index, and looks each event's job up by its id alone (the primary key);
/// the filter is then a test of that one row. An inner join let the planner
/// start from the jobs instead when the filter looked selective (a small
/// tenant, a rare kind): all of their events, then a sort, a cost that grows
/// with their history. The lookup is a LATERAL subquery that cannot be
/// flattened (`OFFSET 0`): as a plain join, with statistics from when the
/// table was small (a fresh database filling up), the planner read all of the
/// tenant's jobs once per read and matched every event against them (17 ms a
/// read at 2,000 jobs, growing). And the tenant stays out of the lookup's
/// condition: with it there, a generic plan made on the empty tables of a
/// new database chose a (tenant, status, kind, id) index, whose scan for one
/// id walks all of the tenant's jobs, for every event (the feed fell to a
/// few hundred jobs/s). An event the filter leaves out still comes back,
/// without its data, so that the read knows how far it got (see
/// [`FeedRead`]).
pub(crate) const FEED_AFTER: &str = concat!(
    feed_horizon!(),
    "SELECT e.txid::text::bigint, e.id, coalesce(j.kept, false), e.job_id, e.seq, e.event, \
       CASE WHEN j.kept THEN e.data END, e.at \
     FROM horizon CROSS JOIN herald_job_events e \
     LEFT JOIN LATERAL (SELECT j.tenant = $3 AND ($4::text IS NULL OR j.kind = $4) \
       AND ($5::uuid[] IS NULL OR j.id = ANY($5)) AS kept \
       FROM herald_jobs j WHERE j.id = e.job_id OFFSET 0) j ON true \
     WHERE (e.txid, e.id) > ($1::text::xid8, $2) AND e.txid < horizon.h \
     ORDER BY e.txid, e.id LIMIT $6"
);

/// The newest event below the horizon: the feed index read backwards.
pub(crate) const FEED_HEAD: &str = concat!(
    feed_horizon!(),
    "SELECT e.txid::text::bigint, e.id FROM herald_job_events e, horizon \
     WHERE e.txid < horizon.h ORDER BY e.txid DESC, e.id DESC LIMIT 1"
);

type FeedRow = (i64, i64, bool, Uuid, i64, String, Option<String>, i64);

#[async_trait]
impl FeedStore for PgStore {
    /// The feed in (appending transaction id, event id) order, and only below
    /// the oldest transaction still running that could write to this database.
    ///
    /// Why not `id > cursor`: ids come from a sequence when the row is
    /// inserted, but transactions commit in any order, so event 41 can become
    /// visible after event 42 was read; a reader that moved its cursor to 42
    /// would never see 41. Here a transaction with an id below the snapshot's
    /// `xmin` has finished, so the events at or below it are final: nothing
    /// can still appear among them. Everything appended later has a
    /// transaction id at or above that `xmin`, so it sorts after any cursor
    /// already handed out. The cost: an event waits for every older
    /// transaction that may write here to end (a long one holds the feed
    /// back; it never makes it skip). Transactions of other databases on the
    /// same server are left out of that wait, when they can be proven to be
    /// elsewhere (see `feed_horizon!`).
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<FeedRead, StoreError> {
        self.feed_after_window(filter, after, limit, FeedRead::window(limit))
            .await
    }

    /// A window of `limit` for a feed whose filter kept all it examined: a
    /// window past the limit read events only to drop them at the limit and
    /// read them again next time (half of the rows, with one busy feed).
    async fn feed_after_window(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
        window: i64,
    ) -> Result<FeedRead, StoreError> {
        let window = window.max(limit).max(1);
        let jobs: Option<Vec<Uuid>> = filter
            .jobs
            .as_ref()
            .map(|ids| ids.iter().map(|id| id.0).collect());
        let rows: Vec<FeedRow> = sqlx::query_as(FEED_AFTER)
            .bind(after.tx.to_string())
            .bind(after.id)
            .bind(&filter.tenant)
            .bind(filter.kind.as_deref())
            .bind(jobs)
            .bind(window)
            .fetch_all(&self.pools.main)
            .await?;
        let examined = rows
            .into_iter()
            .map(|(tx, id, kept, job_id, seq, event, data, at)| {
                let cursor = FeedCursor { tx, id };
                let (true, Some(data)) = (kept, data) else {
                    return Ok((cursor, None));
                };
                Ok((
                    cursor,
                    Some(FeedEvent {
                        cursor,
                        job_id: JobId(job_id),
                        event: StoredEvent::try_from((seq, event, data, at))?,
                    }),
                ))
            });
        FeedRead::from_window(after, limit, window, examined)
    }

    async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        let head: Option<(i64, i64)> = sqlx::query_as(FEED_HEAD)
            .fetch_optional(&self.pools.main)
            .await?;
        Ok(head.map_or(FeedCursor::default(), |(tx, id)| FeedCursor { tx, id }))
    }
}
