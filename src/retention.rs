//! Retention: terminal jobs and their events are deleted once they are older
//! than `HERALD_RETENTION_HOURS`, in small batches so writers are never held
//! up for long (each batch is one write among the others in the store's queue).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Timestamp;
use crate::store::Store;

/// Jobs deleted per batch.
const BATCH: i64 = 200;

/// An upload's chunks without a job after this long belong to an upload that
/// was cut off (the longest upload is far shorter).
const ORPHAN_UPLOAD_AGE: Duration = Duration::from_secs(6 * 3600);

pub async fn run(
    store: Arc<dyn Store>,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let before = Timestamp(Timestamp::now().0 - retention.as_micros() as i64);
        let mut purged = 0;
        loop {
            match store.purge_finished(before, BATCH).await {
                Ok(n) => {
                    purged += n;
                    if (n as i64) < BATCH || stop.is_cancelled() {
                        break;
                    }
                    // Let other writes through between batches.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    crate::telemetry::store_error();
                    tracing::warn!(error = %e, "retention sweep failed; will try again");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(purged, "deleted finished jobs past the retention period");
        }
        // Uploads whose job never came (the process stopped mid-upload).
        let stale = Timestamp(Timestamp::now().0 - ORPHAN_UPLOAD_AGE.as_micros() as i64);
        if let Err(e) = store.purge_orphan_uploads(stale).await {
            crate::telemetry::store_error();
            tracing::warn!(error = %e, "deleting abandoned uploads failed; will try again");
        }
    }
}
