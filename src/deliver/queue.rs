//! What the dispatcher needs of the queue, as a trait: the outbox in the agent, an
//! in-memory queue in the dispatcher's tests.
//!
//! Why a seam here and not only at the sink: the dispatcher's tests run on paused time,
//! where tokio moves the clock to the next timer whenever the runtime is idle, including
//! while it waits for the outbox's thread to answer, so a test over the real outbox would
//! see time jump under it. And the queue decides what is due on its own clock (`now_ms`):
//! the wall clock for the outbox, the paused clock in the tests.

use std::future::Future;

use tokio::sync::Notify;

use super::Error;
use crate::deployment::DeploymentKey;
use crate::outbox::{Outbox, Pending, Settle, Stats};

pub trait Queue: Send + Sync + 'static {
    /// Signalled whenever the queue has new work for the dispatcher.
    fn work(&self) -> &Notify;

    /// Now, in Unix milliseconds, on the clock the queue's times are read on.
    fn now_ms(&self) -> i64;

    /// Up to `limit` reports, the most overdue first, and the time the next one falls due.
    /// With `due_only` false, reports not yet due count too (a probe while the endpoint is
    /// down).
    fn due(
        &self,
        limit: usize,
        due_only: bool,
    ) -> impl Future<Output = Result<(Vec<Pending>, Option<i64>), Error>> + Send;

    /// Record a delivery attempt's result (not awaited).
    fn settle(&self, key: DeploymentKey, version: i64, settle: Settle);

    /// Everything waiting becomes due now (the endpoint is back), but for reports that
    /// failed repeatedly on their own.
    fn reset_backoff(&self);

    fn stats(&self) -> impl Future<Output = Result<Stats, Error>> + Send;

    /// Returns once every earlier change is on disk.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send;
}

impl Queue for Outbox {
    fn work(&self) -> &Notify {
        &self.work
    }

    fn now_ms(&self) -> i64 {
        crate::clock::now_ms()
    }

    async fn due(
        &self,
        limit: usize,
        due_only: bool,
    ) -> Result<(Vec<Pending>, Option<i64>), Error> {
        Outbox::due(self, limit, due_only)
            .await
            .map_err(Error::Queue)
    }

    fn settle(&self, key: DeploymentKey, version: i64, settle: Settle) {
        Outbox::settle(self, key, version, settle);
    }

    fn reset_backoff(&self) {
        Outbox::reset_backoff(self);
    }

    async fn stats(&self) -> Result<Stats, Error> {
        Outbox::stats(self).await.map_err(Error::Queue)
    }

    async fn flush(&self) -> Result<(), Error> {
        Outbox::flush(self).await.map_err(Error::Queue)
    }
}
