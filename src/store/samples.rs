//! Per-minute samples of the online count, for the admin dashboard's chart. The SQL is the same
//! on both databases, so both stores implement [`OnlineSamples`] with [`impl_online_samples!`].

use async_trait::async_trait;

use super::StoreError;

/// Stored per-minute online counts.
#[async_trait]
pub trait OnlineSamples: Send + Sync {
    /// Stores `online` as the count of `minute` (minutes since the Unix epoch), replacing an
    /// earlier sample of that minute.
    async fn record_online_sample(&self, minute: i64, online: u64) -> Result<(), StoreError>;
    /// Samples from `since` (a minute) on, oldest first.
    async fn online_samples(&self, since: i64) -> Result<Vec<(i64, u64)>, StoreError>;
    /// Forgets samples older than `before` (a minute); returns how many.
    async fn prune_online_samples(&self, before: i64) -> Result<u64, StoreError>;
}

pub(super) const RECORD: &str = "insert into online_samples (minute, online) values ($1, $2) \
     on conflict (minute) do update set online = excluded.online";

pub(super) const SINCE: &str =
    "select minute, online from online_samples where minute >= $1 order by minute";

pub(super) const PRUNE: &str = "delete from online_samples where minute < $1";

/// Implements [`OnlineSamples`] for a store with a `pool` field, an `other` error mapping and
/// a `health` write tracker in scope.
macro_rules! impl_online_samples {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::samples::OnlineSamples for $store {
            async fn record_online_sample(
                &self,
                minute: i64,
                online: u64,
            ) -> Result<(), $crate::store::StoreError> {
                let done = sqlx::query($crate::store::samples::RECORD)
                    .bind(minute)
                    .bind(i64::try_from(online).unwrap_or(i64::MAX))
                    .execute(&self.pool)
                    .await
                    .map_err(other);
                self.health.observe(done).map(|_| ())
            }

            async fn online_samples(
                &self,
                since: i64,
            ) -> Result<Vec<(i64, u64)>, $crate::store::StoreError> {
                let rows: Vec<(i64, i64)> = sqlx::query_as($crate::store::samples::SINCE)
                    .bind(since)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(other)?;
                Ok(rows
                    .into_iter()
                    .map(|(minute, online)| (minute, u64::try_from(online).unwrap_or(0)))
                    .collect())
            }

            async fn prune_online_samples(
                &self,
                before: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::samples::PRUNE)
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(other);
                Ok(self.health.observe(done)?.rows_affected())
            }
        }
    };
}

pub(crate) use impl_online_samples;
