//! The apalis side of the queue: a backend whose tasks are the claimer's
//! jobs (see the parent module).

use std::task::{Context, Poll};

use apalis::prelude::*;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::Claimed;

/// The apalis backend over the job table: its tasks are the claimer's jobs.
/// Jobs enter the queue through [`Jobs::submit`], never through apalis, so
/// it is not a sink.
pub(super) struct ClaimBackend {
    pub(super) claims: BoxStream<'static, Task<Claimed>>,
}

impl Backend for ClaimBackend {
    type Task = Task<Claimed>;
    type Error = std::convert::Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.claims.poll_next_unpin(cx).map(|task| task.map(Ok))
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl apalis_core::backend::BackendConfig for ClaimBackend {
    type Args = Claimed;
    type Id = RandomId;
    type Kind = apalis_core::backend::finalize::Ephemeral;
    type Config = ();
    type Layer = tower_layer::Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        tower_layer::Identity::new()
    }
}
