//! The group's behaviour, on a flush that records its batches.

use std::sync::Mutex as StdMutex;

use tokio::sync::Semaphore;

use super::*;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TestError(String);

impl From<Unanswered> for TestError {
    fn from(e: Unanswered) -> Self {
        TestError(e.to_string())
    }
}

impl BatchError for TestError {
    fn broken_connection(&self) -> bool {
        self.0 == "broken"
    }
}

/// Records every batch it is given; fails a batch that holds a negative
/// op; fails the first `breaks` flushes with a broken connection; and
/// holds each flush until `gate` gives a permit.
#[derive(Default)]
struct Recorder {
    batches: StdMutex<Vec<Vec<i64>>>,
    lost: StdMutex<Vec<i64>>,
    breaks: StdMutex<usize>,
    gate: Option<Arc<Semaphore>>,
}

fn gated() -> (Recorder, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let flush = Recorder {
        gate: Some(gate.clone()),
        ..Recorder::default()
    };
    (flush, gate)
}

/// A group over `flush` and a handle on what it records.
fn start(flush: Recorder, batching: Batching) -> (Group<Arc<Recorder>>, Arc<Recorder>) {
    let flush = Arc::new(flush);
    (Group::start(flush.clone(), batching), flush)
}

#[async_trait]
impl Flush for Arc<Recorder> {
    type Op = i64;
    type Out = i64;
    type Error = TestError;

    async fn flush(&self, ops: &[i64]) -> Result<Vec<i64>, TestError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        self.batches.lock().unwrap().push(ops.to_vec());
        {
            let mut breaks = self.breaks.lock().unwrap();
            if *breaks > 0 {
                *breaks -= 1;
                return Err(TestError("broken".into()));
            }
        }
        if ops.iter().any(|op| *op < 0) {
            return Err(TestError(format!("bad op in {ops:?}")));
        }
        Ok(ops.iter().map(|op| op * 10).collect())
    }

    /// Ops 100 and up share a key per hundred.
    fn key(op: &i64) -> Option<String> {
        (*op >= 100).then(|| (op / 100).to_string())
    }

    fn lost(&self, op: &i64, _: &TestError) {
        self.lost.lock().unwrap().push(*op);
    }
}

/// Waits until `flush` has recorded `n` batches.
async fn batches(flush: &Recorder, n: usize) -> Vec<Vec<i64>> {
    for _ in 0..500 {
        let b = flush.batches.lock().unwrap().clone();
        if b.len() >= n {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "fewer than {n} batches: {:?}",
        flush.batches.lock().unwrap()
    );
}

#[tokio::test]
async fn what_waits_while_a_batch_is_written_goes_out_together() {
    let (flush, gate) = gated();
    let (group, flush) = start(flush, Batching::default());
    let first = tokio::spawn({
        let group = group.clone();
        async move { group.run(1).await }
    });
    // The writer holds op 1 at the gate; these queue behind it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rest: Vec<_> = (2..=4)
        .map(|op| {
            let group = group.clone();
            tokio::spawn(async move { group.run(op).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), 10);
    for (op, answer) in (2..=4).zip(rest) {
        assert_eq!(
            answer.await.unwrap().unwrap(),
            op * 10,
            "each op its own answer"
        );
    }
    assert_eq!(batches(&flush, 2).await, vec![vec![1], vec![2, 3, 4]]);
}

#[tokio::test]
async fn ops_with_one_key_go_in_separate_batches_in_order() {
    let (flush, gate) = gated();
    let (group, flush) = start(flush, Batching::default());
    let blocker = tokio::spawn({
        let group = group.clone();
        async move { group.run(1).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued: Vec<_> = [101, 2, 102, 201]
        .into_iter()
        .map(|op| {
            let group = group.clone();
            tokio::spawn(async move { group.run(op).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(3);
    blocker.await.unwrap().unwrap();
    for answer in queued {
        answer.await.unwrap().unwrap();
    }
    assert_eq!(
        batches(&flush, 3).await,
        vec![vec![1], vec![101, 2, 201], vec![102]]
    );
}

#[tokio::test]
async fn a_failed_batch_is_written_one_by_one() {
    let (flush, gate) = gated();
    let (group, flush) = start(flush, Batching::default());
    let blocker = tokio::spawn({
        let group = group.clone();
        async move { group.run(1).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued: Vec<_> = [2, -3, 4]
        .into_iter()
        .map(|op| {
            let group = group.clone();
            tokio::spawn(async move { group.run(op).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(5);
    blocker.await.unwrap().unwrap();
    let answers: Vec<_> = futures::future::join_all(queued).await;
    assert_eq!(answers[0].as_ref().unwrap().as_ref().unwrap(), &20);
    assert!(answers[1].as_ref().unwrap().is_err(), "the bad op fails");
    assert_eq!(answers[2].as_ref().unwrap().as_ref().unwrap(), &40);
    assert_eq!(
        batches(&flush, 5).await,
        vec![vec![1], vec![2, -3, 4], vec![2], vec![-3], vec![4]]
    );
}

#[tokio::test]
async fn a_broken_connection_is_tried_again_until_a_sound_one_answers() {
    // A batch pool of 7 connections, all broken by an outage.
    let flush = Recorder {
        breaks: StdMutex::new(7),
        ..Recorder::default()
    };
    let (group, flush) = start(flush, Batching::default());
    assert_eq!(group.run(7).await.unwrap(), 70);
    assert_eq!(batches(&flush, 8).await, vec![vec![7]; 8]);
}

#[tokio::test]
async fn broken_connections_are_tried_a_bounded_number_of_times() {
    let flush = Recorder {
        breaks: StdMutex::new(usize::MAX),
        ..Recorder::default()
    };
    let (group, flush) = start(flush, Batching::default());
    let e = group.run(7).await.unwrap_err();
    assert!(e.broken_connection(), "{e}");
    assert_eq!(flush.batches.lock().unwrap().len(), BROKEN_TRIES);
}

#[tokio::test]
async fn sent_ops_are_written_without_anyone_waiting_and_failures_are_lost() {
    let (flush, gate) = gated();
    let (group, flush) = start(
        flush,
        Batching {
            capacity: Some(8),
            ..Batching::default()
        },
    );
    // `send` returns while the writer is still held at the gate: it
    // waits for no answer.
    group.send(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for op in [2, -3] {
        tokio::time::timeout(Duration::from_millis(100), group.send(op))
            .await
            .expect("send does not wait for the write")
            .unwrap();
    }
    gate.add_permits(10);
    let written = batches(&flush, 4).await;
    assert_eq!(written[0], vec![1]);
    assert_eq!(written[1], vec![2, -3], "what was sent meanwhile, together");
    for _ in 0..500 {
        if !flush.lost.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        *flush.lost.lock().unwrap(),
        vec![-3],
        "only the bad op is lost"
    );
}

#[tokio::test]
async fn a_lingering_writer_gathers_what_arrives_meanwhile() {
    let (group, flush) = start(
        Recorder::default(),
        Batching {
            linger: Some(Duration::from_millis(200)),
            ..Batching::default()
        },
    );
    group.send(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    group.send(2).await.unwrap();
    assert_eq!(batches(&flush, 1).await, vec![vec![1, 2]]);
}
