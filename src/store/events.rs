//! The event log and the webhook outbox: what integrations need from the store.
//!
//! Every node hears every presence change, and every node records what it hears; the primary
//! key `(user_id, seq)` makes the first insert win, and only the node whose insert won also
//! queues the change for the webhook endpoints, so each change is queued once per endpoint
//! however many nodes run. The SQL is the same on both databases (times are integer
//! microseconds), so both stores implement [`EventLog`] with [`impl_event_log!`].

use async_trait::async_trait;

use super::StoreError;
use crate::domain::UserId;

/// A presence change as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Whose change.
    pub user_id: UserId,
    /// The change's `seq` (per user, strictly increasing).
    pub seq: u64,
    /// When it happened, in microseconds since the Unix epoch.
    pub at_us: i64,
    /// What a viewer sees of the user after it (status, availability, custom status,
    /// platforms), as an opaque comparable text.
    pub state: String,
    /// Whether the user is offline after it.
    pub offline: bool,
    /// The change as integrators receive it (JSON).
    pub payload: String,
}

/// How changes are queued for webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPlan {
    /// Endpoint URLs; none: nothing is queued.
    pub endpoints: Vec<String>,
    /// How long an offline change is held back (µs); a return within it cancels both.
    pub offline_delay_us: i64,
}

/// A change queued for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// Whose change.
    pub user_id: UserId,
    /// Its `seq`.
    pub seq: u64,
    /// The JSON to send.
    pub payload: String,
}

/// What waits for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Queued changes.
    pub pending: u64,
    /// When the oldest was queued (µs), if any.
    pub oldest_us: Option<i64>,
}

/// The event log and the webhook outbox.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Records `events` (in the order heard) and queues for `plan`'s endpoints those this
    /// call recorded first. An online change that finds an offline change of the same user
    /// still held back (queued before its `at_us`) removes it and everything queued after it
    /// for that user, and is itself queued only if the user now looks different from before
    /// the offline change.
    async fn record_events(
        &self,
        events: &[LoggedEvent],
        plan: &WebhookPlan,
    ) -> Result<(), StoreError>;
    /// Logged changes after the position `after` = `(seq, user_id)`, in that order, at most
    /// `limit`.
    async fn events_after(
        &self,
        after: (u64, UserId),
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, StoreError>;
    /// `user`'s latest logged changes, newest first, at most `limit`.
    async fn events_of(&self, user: UserId, limit: usize) -> Result<Vec<LoggedEvent>, StoreError>;
    /// Forgets logged changes that happened before `before_us`; returns how many.
    async fn prune_events(&self, before_us: i64) -> Result<u64, StoreError>;
    /// Makes `holder` the node delivering to `endpoint` until `until_us`, unless another
    /// holder's claim is still valid at `now_us`; whether it is (now) the holder.
    async fn claim_endpoint(
        &self,
        endpoint: &str,
        holder: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<bool, StoreError>;
    /// Ends `holder`'s claim on `endpoint` (at shutdown, so another node or the next start
    /// takes over at once).
    async fn release_endpoint(&self, endpoint: &str, holder: &str) -> Result<(), StoreError>;
    /// Changes due for `endpoint` at `now_us`, in `(seq, user_id)` order, at most `limit`. A
    /// held-back offline change is due `hold_grace_us` after its time, and nothing of a user
    /// is due while an earlier change of theirs is not.
    async fn due_events(
        &self,
        endpoint: &str,
        now_us: i64,
        hold_grace_us: i64,
        limit: usize,
    ) -> Result<Vec<QueuedEvent>, StoreError>;
    /// Removes changes `endpoint` acknowledged.
    async fn acknowledge(&self, endpoint: &str, events: &[(UserId, u64)])
    -> Result<(), StoreError>;
    /// Gives up on changes queued for `endpoint` before `before_us`; returns how many.
    async fn expire_queued(&self, endpoint: &str, before_us: i64) -> Result<u64, StoreError>;
    /// What waits for `endpoint`.
    async fn backlog(&self, endpoint: &str) -> Result<Backlog, StoreError>;
}

pub(super) const INSERT_EVENT: &str = "insert into presence_events \
     (user_id, seq, at_us, state, payload) values ($1, $2, $3, $4, $5) \
     on conflict do nothing";

pub(super) const QUEUE_EVENT: &str = "insert into webhook_outbox \
     (endpoint, user_id, seq, deliver_after_us, created_us, held, payload) \
     values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing";

/// The first offline change of user `$2` still held back for endpoint `$1` at time `$3`.
pub(super) const FIRST_HELD: &str = "select min(seq) from webhook_outbox \
     where endpoint = $1 and user_id = $2 and held and deliver_after_us > $3";

/// What user `$1` looked like before their change `$2`.
pub(super) const STATE_BEFORE: &str = "select state from presence_events \
     where user_id = $1 and seq < $2 order by seq desc limit 1";

/// Drops what is queued for endpoint `$1` of user `$2` from seq `$3` on.
pub(super) const DROP_FROM: &str =
    "delete from webhook_outbox where endpoint = $1 and user_id = $2 and seq >= $3";

pub(super) const EVENTS_AFTER: &str = "select user_id, seq, at_us, state, payload \
     from presence_events where seq > $1 or (seq = $1 and user_id > $2) \
     order by seq, user_id limit $3";

pub(super) const EVENTS_OF: &str = "select user_id, seq, at_us, state, payload \
     from presence_events where user_id = $1 order by seq desc limit $2";

pub(super) const PRUNE_EVENTS: &str = "delete from presence_events where at_us < $1";

pub(super) const CLAIM_ENDPOINT: &str = "insert into webhook_endpoints \
     (endpoint, holder, held_until_us) values ($1, $2, $3) \
     on conflict (endpoint) do update set holder = excluded.holder, \
     held_until_us = excluded.held_until_us \
     where webhook_endpoints.holder = excluded.holder or webhook_endpoints.held_until_us < $4";

pub(super) const RELEASE_ENDPOINT: &str = "update webhook_endpoints set held_until_us = 0 \
     where endpoint = $1 and holder = $2";

/// Due for endpoint `$1` at `$2` (held-back changes at `$3` = `$2` minus the grace).
pub(super) const DUE_EVENTS: &str = "select o.user_id, o.seq, o.payload from webhook_outbox o \
     where o.endpoint = $1 \
     and o.deliver_after_us <= case when o.held then $3 else $2 end \
     and not exists (select 1 from webhook_outbox p where p.endpoint = o.endpoint \
       and p.user_id = o.user_id and p.seq < o.seq \
       and p.deliver_after_us > case when p.held then $3 else $2 end) \
     order by o.seq, o.user_id limit $4";

pub(super) const ACKNOWLEDGE: &str =
    "delete from webhook_outbox where endpoint = $1 and user_id = $2 and seq = $3";

pub(super) const EXPIRE_QUEUED: &str =
    "delete from webhook_outbox where endpoint = $1 and created_us < $2";

pub(super) const BACKLOG: &str =
    "select count(*), min(created_us) from webhook_outbox where endpoint = $1";

/// Implements [`EventLog`] for a store with a `pool` field, an `other` error mapping and a
/// `health` write tracker in scope (the SQL is the same on both databases).
macro_rules! impl_event_log {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::events::EventLog for $store {
            async fn record_events(
                &self,
                events: &[$crate::store::events::LoggedEvent],
                plan: &$crate::store::events::WebhookPlan,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::events as q;
                use $crate::store::sql::seq_to_db;
                if events.is_empty() {
                    return Ok(());
                }
                let done: Result<(), $crate::store::StoreError> = async {
                    let mut tx = self.pool.begin().await.map_err(other)?;
                    for event in events {
                        let seq = seq_to_db(event.seq);
                        let inserted = sqlx::query(q::INSERT_EVENT)
                            .bind(event.user_id.0)
                            .bind(seq)
                            .bind(event.at_us)
                            .bind(&event.state)
                            .bind(&event.payload)
                            .execute(&mut *tx)
                            .await
                            .map_err(other)?;
                        if inserted.rows_affected() == 0 {
                            // Another node recorded it, and queued it.
                            continue;
                        }
                        for endpoint in &plan.endpoints {
                            let held = event.offline && plan.offline_delay_us > 0;
                            let mut queue = true;
                            if !event.offline && plan.offline_delay_us > 0 {
                                let first: Option<i64> = sqlx::query_scalar(q::FIRST_HELD)
                                    .bind(endpoint)
                                    .bind(event.user_id.0)
                                    .bind(event.at_us)
                                    .fetch_one(&mut *tx)
                                    .await
                                    .map_err(other)?;
                                if let Some(first) = first {
                                    let before: Option<String> =
                                        sqlx::query_scalar(q::STATE_BEFORE)
                                            .bind(event.user_id.0)
                                            .bind(first)
                                            .fetch_optional(&mut *tx)
                                            .await
                                            .map_err(other)?;
                                    sqlx::query(q::DROP_FROM)
                                        .bind(endpoint)
                                        .bind(event.user_id.0)
                                        .bind(first)
                                        .execute(&mut *tx)
                                        .await
                                        .map_err(other)?;
                                    queue = before.as_deref() != Some(event.state.as_str());
                                }
                            }
                            if !queue {
                                continue;
                            }
                            let delay = if held { plan.offline_delay_us } else { 0 };
                            sqlx::query(q::QUEUE_EVENT)
                                .bind(endpoint)
                                .bind(event.user_id.0)
                                .bind(seq)
                                .bind(event.at_us.saturating_add(delay))
                                .bind(event.at_us)
                                .bind(held)
                                .bind(&event.payload)
                                .execute(&mut *tx)
                                .await
                                .map_err(other)?;
                        }
                    }
                    tx.commit().await.map_err(other)
                }
                .await;
                self.health.observe(done)
            }

            async fn events_after(
                &self,
                after: (u64, $crate::domain::UserId),
                limit: usize,
            ) -> Result<Vec<$crate::store::events::LoggedEvent>, $crate::store::StoreError> {
                let rows: Vec<(i64, i64, i64, String, String)> =
                    sqlx::query_as($crate::store::events::EVENTS_AFTER)
                        .bind($crate::store::sql::seq_to_db(after.0))
                        .bind((after.1).0)
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(other)?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::events::logged)
                    .collect())
            }

            async fn events_of(
                &self,
                user: $crate::domain::UserId,
                limit: usize,
            ) -> Result<Vec<$crate::store::events::LoggedEvent>, $crate::store::StoreError> {
                let rows: Vec<(i64, i64, i64, String, String)> =
                    sqlx::query_as($crate::store::events::EVENTS_OF)
                        .bind(user.0)
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(other)?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::events::logged)
                    .collect())
            }

            async fn prune_events(&self, before_us: i64) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::events::PRUNE_EVENTS)
                    .bind(before_us)
                    .execute(&self.pool)
                    .await
                    .map_err(other);
                Ok(self.health.observe(done)?.rows_affected())
            }

            async fn claim_endpoint(
                &self,
                endpoint: &str,
                holder: &str,
                now_us: i64,
                until_us: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::events::CLAIM_ENDPOINT)
                    .bind(endpoint)
                    .bind(holder)
                    .bind(until_us)
                    .bind(now_us)
                    .execute(&self.pool)
                    .await
                    .map_err(other);
                Ok(self.health.observe(done)?.rows_affected() == 1)
            }

            async fn release_endpoint(
                &self,
                endpoint: &str,
                holder: &str,
            ) -> Result<(), $crate::store::StoreError> {
                let done = sqlx::query($crate::store::events::RELEASE_ENDPOINT)
                    .bind(endpoint)
                    .bind(holder)
                    .execute(&self.pool)
                    .await
                    .map_err(other);
                self.health.observe(done).map(drop)
            }

            async fn due_events(
                &self,
                endpoint: &str,
                now_us: i64,
                hold_grace_us: i64,
                limit: usize,
            ) -> Result<Vec<$crate::store::events::QueuedEvent>, $crate::store::StoreError> {
                let rows: Vec<(i64, i64, String)> =
                    sqlx::query_as($crate::store::events::DUE_EVENTS)
                        .bind(endpoint)
                        .bind(now_us)
                        .bind(now_us.saturating_sub(hold_grace_us))
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(other)?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(user_id, seq, payload)| $crate::store::events::QueuedEvent {
                            user_id: $crate::domain::UserId(user_id),
                            seq: $crate::store::sql::seq_from_db(seq),
                            payload,
                        },
                    )
                    .collect())
            }

            async fn acknowledge(
                &self,
                endpoint: &str,
                events: &[($crate::domain::UserId, u64)],
            ) -> Result<(), $crate::store::StoreError> {
                let done: Result<(), $crate::store::StoreError> = async {
                    let mut tx = self.pool.begin().await.map_err(other)?;
                    for (user, seq) in events {
                        sqlx::query($crate::store::events::ACKNOWLEDGE)
                            .bind(endpoint)
                            .bind(user.0)
                            .bind($crate::store::sql::seq_to_db(*seq))
                            .execute(&mut *tx)
                            .await
                            .map_err(other)?;
                    }
                    tx.commit().await.map_err(other)
                }
                .await;
                self.health.observe(done)
            }

            async fn expire_queued(
                &self,
                endpoint: &str,
                before_us: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::events::EXPIRE_QUEUED)
                    .bind(endpoint)
                    .bind(before_us)
                    .execute(&self.pool)
                    .await
                    .map_err(other);
                Ok(self.health.observe(done)?.rows_affected())
            }

            async fn backlog(
                &self,
                endpoint: &str,
            ) -> Result<$crate::store::events::Backlog, $crate::store::StoreError> {
                let (pending, oldest_us): (i64, Option<i64>) =
                    sqlx::query_as($crate::store::events::BACKLOG)
                        .bind(endpoint)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(other)?;
                Ok($crate::store::events::Backlog {
                    pending: u64::try_from(pending).unwrap_or(0),
                    oldest_us,
                })
            }
        }
    };
}

pub(crate) use impl_event_log;

/// A logged change from its columns.
pub(super) fn logged(row: (i64, i64, i64, String, String)) -> LoggedEvent {
    let (user_id, seq, at_us, state, payload) = row;
    LoggedEvent {
        user_id: UserId(user_id),
        seq: super::sql::seq_from_db(seq),
        at_us,
        offline: state.starts_with(OFFLINE_PREFIX),
        state,
        payload,
    }
}

/// How a state text of an offline user begins (see [`LoggedEvent::state`]); the writer of the
/// state text must follow it.
pub const OFFLINE_PREFIX: &str = "offline";
