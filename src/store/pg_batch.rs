//! PostgreSQL's batched writes (see [`super::group`]): new jobs, and the
//! transitions of running jobs with the deletion of spent queue tasks. Each
//! batch is one statement over arrays, so it is atomic on its own and commits
//! once.

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::group::Flush;
use super::row::to_json;
use crate::domain::{EventSeq, JobRecord, NewEvent};

/// A write of a running job.
pub(super) enum Write {
    /// The job's new state and its event, written only while the job's
    /// `last_seq` is still `if_seq`; if it is written and `delete_task` is
    /// given, that queue task goes with it. Answers whether it was written.
    Transition {
        job: Box<JobRecord>,
        ev: NewEvent,
        if_seq: EventSeq,
        delete_task: Option<String>,
    },
    /// Deletes a queue task (apalis's id). Answers true.
    DeleteTask(String),
}

pub(super) struct Writes {
    pub pool: PgPool,
    /// This node: recorded as the one running an attempt it starts.
    pub node: String,
}

#[async_trait]
impl Flush for Writes {
    type Op = Write;
    type Out = bool;

    fn key(op: &Write) -> Option<String> {
        match op {
            Write::Transition { job, .. } => Some(job.id.to_string()),
            Write::DeleteTask(_) => None,
        }
    }

    async fn flush(&self, ops: &[Write]) -> Result<Vec<bool>, sqlx::Error> {
        let mut a = TransitionArrays::default();
        let mut deletes = Vec::new();
        for op in ops {
            match op {
                Write::Transition {
                    job,
                    ev,
                    if_seq,
                    delete_task,
                } => a.push(job, ev, *if_seq, delete_task.clone()),
                Write::DeleteTask(task) => deletes.push(task.clone()),
            }
        }
        // Conditional on `last_seq`: a row that moved on is not updated, so
        // neither is its event inserted, nor its task deleted. Every table is
        // reached through `id = ANY(array)` on its primary key, and the
        // statement runs on the `writes` pool, whose planner may use nothing
        // but index lookups: the plan is made once, maybe on empty tables,
        // and must stay right as they grow (a join planned on an empty
        // `apalis.jobs` scanned all of it for every batch). The delete runs in the same
        // statement (data-modifying CTEs run whether or not they are read).
        let written: HashSet<Uuid> = sqlx::query_scalar(
            "WITH v AS ( \
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[], \
                 $12::text[], $13::int8[], $16::text[]) \
               AS v(id, status, progress, result, error, attempt, started_at, finished_at, seq, at, \
                 event, data, if_seq, task)), \
             upd AS ( \
               UPDATE herald_jobs j SET status = v.status, progress = v.progress, result = v.result, \
                 error = v.error, attempt = v.attempt, started_at = v.started_at, \
                 finished_at = v.finished_at, last_seq = v.seq, updated_at = v.at, \
                 node_id = CASE WHEN v.status = 'running' THEN $14 ELSE j.node_id END \
               FROM v WHERE j.id = ANY($1::uuid[]) AND j.id = v.id AND j.last_seq = v.if_seq \
               RETURNING j.id, v.seq, v.event, v.data, v.at, v.task), \
             ins AS ( \
               INSERT INTO herald_job_events (job_id, seq, event, data, at) \
               SELECT id, seq, event, data, at FROM upd RETURNING job_id), \
             del AS ( \
               DELETE FROM apalis.jobs \
               WHERE id = ANY($15::text[] || ARRAY(SELECT task FROM upd WHERE task IS NOT NULL))) \
             SELECT job_id FROM ins",
        )
        .bind(&a.id)
        .bind(&a.status)
        .bind(&a.progress)
        .bind(&a.result)
        .bind(&a.error)
        .bind(&a.attempt)
        .bind(&a.started_at)
        .bind(&a.finished_at)
        .bind(&a.seq)
        .bind(&a.at)
        .bind(&a.event)
        .bind(&a.data)
        .bind(&a.if_seq)
        .bind(&self.node)
        .bind(&deletes)
        .bind(&a.task)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok(ops
            .iter()
            .map(|op| match op {
                Write::Transition { job, .. } => written.contains(&job.id.0),
                Write::DeleteTask(_) => true,
            })
            .collect())
    }
}

#[derive(Default)]
struct TransitionArrays {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    progress: Vec<Option<String>>,
    result: Vec<Option<String>>,
    error: Vec<Option<String>>,
    attempt: Vec<i64>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    seq: Vec<i64>,
    at: Vec<i64>,
    event: Vec<&'static str>,
    data: Vec<String>,
    if_seq: Vec<i64>,
    task: Vec<Option<String>>,
}

impl TransitionArrays {
    fn push(&mut self, job: &JobRecord, ev: &NewEvent, if_seq: EventSeq, task: Option<String>) {
        self.id.push(job.id.0);
        self.status.push(job.status.as_str());
        self.progress.push(to_json(&job.progress));
        self.result.push(to_json(&job.result));
        self.error.push(to_json(&job.error));
        self.attempt.push(job.attempt as i64);
        self.started_at.push(job.started_at.map(|t| t.0));
        self.finished_at.push(job.finished_at.map(|t| t.0));
        self.seq.push(ev.seq.0);
        self.at.push(ev.at.0);
        self.event.push(ev.kind.as_str());
        self.data.push(ev.data.clone());
        self.if_seq.push(if_seq.0);
        self.task.push(task);
    }
}

/// A new job and its first event. Answers whether it was inserted (false:
/// its idempotency key is taken).
pub(super) struct NewJob {
    pub job: JobRecord,
    pub first: NewEvent,
}

pub(super) struct Submits {
    pub pool: PgPool,
}

#[async_trait]
impl Flush for Submits {
    type Op = NewJob;
    type Out = bool;

    /// Two submissions with one idempotency key go in different batches, so
    /// the second finds the first committed.
    fn key(op: &NewJob) -> Option<String> {
        op.job
            .idempotency_key
            .as_ref()
            .map(|k| format!("{}\n{k}", op.job.tenant))
    }

    async fn flush(&self, ops: &[NewJob]) -> Result<Vec<bool>, sqlx::Error> {
        let mut id = Vec::with_capacity(ops.len());
        let mut task_id = Vec::with_capacity(ops.len());
        let mut tenant = Vec::with_capacity(ops.len());
        let mut kind = Vec::with_capacity(ops.len());
        let mut status = Vec::with_capacity(ops.len());
        let mut input = Vec::with_capacity(ops.len());
        let mut attempt = Vec::with_capacity(ops.len());
        let mut max_attempts = Vec::with_capacity(ops.len());
        let mut timeout_secs = Vec::with_capacity(ops.len());
        let mut key = Vec::with_capacity(ops.len());
        let mut created_at = Vec::with_capacity(ops.len());
        let mut seq = Vec::with_capacity(ops.len());
        let mut event = Vec::with_capacity(ops.len());
        let mut data = Vec::with_capacity(ops.len());
        for NewJob { job, first } in ops {
            id.push(job.id.0);
            task_id.push(job.id.task_id().to_string());
            tenant.push(job.tenant.as_str());
            kind.push(job.kind.as_str());
            status.push(job.status.as_str());
            input.push(serde_json::to_string(&job.input).expect("JSON values serialize"));
            attempt.push(job.attempt as i64);
            max_attempts.push(job.max_attempts as i64);
            timeout_secs.push(job.timeout_secs);
            key.push(job.idempotency_key.as_deref());
            created_at.push(job.created_at.0);
            seq.push(first.seq.0);
            event.push(first.kind.as_str());
            data.push(first.data.as_str());
        }
        // A taken idempotency key inserts nothing for that job (the caller
        // then answers with the earlier job).
        let inserted: HashSet<Uuid> = sqlx::query_scalar(
            "WITH v AS ( \
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::int8[], \
                 $12::int8[], $13::text[], $14::text[]) \
               AS v(id, task_id, tenant, kind, status, input, attempt, max_attempts, timeout_secs, \
                 idempotency_key, created_at, seq, event, data)), \
             j AS ( \
               INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, max_attempts, \
                 timeout_secs, idempotency_key, created_at, updated_at, last_seq) \
               SELECT id, task_id, tenant, kind, status, input, attempt, max_attempts, timeout_secs, \
                 idempotency_key, created_at, created_at, seq FROM v \
               ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
               RETURNING id), \
             e AS ( \
               INSERT INTO herald_job_events (job_id, seq, event, data, at) \
               SELECT v.id, v.seq, v.event, v.data, v.created_at FROM v JOIN j ON j.id = v.id \
               RETURNING job_id) \
             SELECT job_id FROM e",
        )
        .bind(&id)
        .bind(&task_id)
        .bind(&tenant)
        .bind(&kind)
        .bind(&status)
        .bind(&input)
        .bind(&attempt)
        .bind(&max_attempts)
        .bind(&timeout_secs)
        .bind(&key)
        .bind(&created_at)
        .bind(&seq)
        .bind(&event)
        .bind(&data)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok(ops
            .iter()
            .map(|op| inserted.contains(&op.job.id.0))
            .collect())
    }
}
