//! Delivering the queued changes to each webhook endpoint: in order, in batches, signed like
//! Stripe's and Pusher's webhooks, retried with exponential backoff and jitter until the
//! endpoint acknowledges them (any 2xx) or `webhook_retry_for` has passed.
//!
//! One node at a time delivers to an endpoint (a claim in the store, renewed while it works),
//! so on a multi-node deployment an endpoint still sees one ordered stream. The queue is in the
//! store: a restart, or another node taking over, continues where delivery stopped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::now_us;
use crate::domain::UserId;
use crate::store::Store;

/// Header with the request's time (Unix seconds), part of the signed text.
pub const TIMESTAMP_HEADER: &str = "x-lastseen-timestamp";
/// Header with the signature: `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "x-lastseen-signature";

/// Changes per request.
const BATCH: usize = 100;
/// How long an endpoint may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node's claim on an endpoint lasts without renewal.
const CLAIM: Duration = Duration::from_secs(30);
/// How long a node without the claim waits before trying again.
const CLAIM_RETRY: Duration = Duration::from_secs(5);
/// A held-back offline change goes out this long after its hold ends, so that a return
/// recorded a little late can still cancel it.
const HOLD_GRACE: Duration = Duration::from_secs(1);
/// How long an idle deliverer sleeps when nothing wakes it (held-back changes come due by
/// time alone).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// First retry delay, and the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often changes older than the retry period are dropped.
const EXPIRE_PERIOD: Duration = Duration::from_secs(60);

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The HTTP client webhooks are sent with (HTTPS with the system's root certificates, or
/// plain HTTP).
#[derive(Clone)]
pub struct WebhookClient {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl WebhookClient {
    /// A client trusting the system's root certificates (those that load: a missing store
    /// only fails `https://` endpoints, with a certificate error per attempt).
    pub fn new() -> Self {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "a system root certificate could not be loaded");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (_, ignored) = roots.add_parsable_certificates(loaded.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "unusable system root certificates ignored");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Default for WebhookClient {
    fn default() -> Self {
        Self::new()
    }
}

/// The wait before retry number `attempt` (1-based): exponential, capped, with full jitter.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_MIN
        .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1).min(16)))
        .min(BACKOFF_MAX);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(millis / 2..=millis))
}

/// What one delivery loop needs.
pub struct Deliverer {
    /// The endpoint URL.
    pub endpoint: String,
    /// Its position in `webhook_urls` (the metrics label; a URL may hold a secret).
    pub index: usize,
    /// The signing secret.
    pub secret: String,
    /// How long changes are retried.
    pub retry_for: Duration,
    /// This node's name in endpoint claims.
    pub holder: String,
    /// The store with the queue.
    pub store: Arc<dyn Store>,
    /// The HTTP client.
    pub client: WebhookClient,
    /// Woken when changes were queued.
    pub queued: Arc<Notify>,
}

enum Outcome {
    Acknowledged,
    Refused(String),
}

impl Deliverer {
    /// Delivers until `shutdown`, then gives up its claim on the endpoint.
    pub async fn run(self, shutdown: CancellationToken) {
        self.deliver(&shutdown).await;
        if let Err(error) = self
            .store
            .release_endpoint(&self.endpoint, &self.holder)
            .await
        {
            tracing::debug!(%error, "could not release the webhook endpoint");
        }
    }

    async fn deliver(&self, shutdown: &CancellationToken) {
        let label = self.index.to_string();
        let mut attempt = 0_u32;
        let mut last_expiry = tokio::time::Instant::now()
            .checked_sub(EXPIRE_PERIOD)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            // Registered before looking at the queue, so a change queued meanwhile wakes us.
            let queued = self.queued.notified();
            let wait = match self.step(&label, &mut last_expiry).await {
                Ok(Step::Sent) => {
                    attempt = 0;
                    continue;
                }
                Ok(Step::Idle) => IDLE_POLL,
                Ok(Step::NotMine) => CLAIM_RETRY,
                Ok(Step::Failed(reason)) => {
                    attempt = attempt.saturating_add(1);
                    let wait = backoff(attempt);
                    tracing::warn!(endpoint = self.index, attempt, ?wait, %reason, "webhook delivery failed; retrying");
                    wait
                }
                Err(error) => {
                    tracing::warn!(endpoint = self.index, %error, "webhook queue unavailable");
                    CLAIM_RETRY
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = queued, if attempt == 0 => {}
            }
        }
    }

    async fn step(
        &self,
        label: &str,
        last_expiry: &mut tokio::time::Instant,
    ) -> Result<Step, crate::store::StoreError> {
        let now = now_us();
        let claim_until = now.saturating_add(micros(CLAIM));
        if !self
            .store
            .claim_endpoint(&self.endpoint, &self.holder, now, claim_until)
            .await?
        {
            return Ok(Step::NotMine);
        }
        if last_expiry.elapsed() >= EXPIRE_PERIOD {
            *last_expiry = tokio::time::Instant::now();
            let cutoff = now.saturating_sub(micros(self.retry_for));
            let dropped = self.store.expire_queued(&self.endpoint, cutoff).await?;
            if dropped > 0 {
                metrics::counter!("lastseen_webhook_failed_total", "endpoint" => label.to_owned())
                    .increment(dropped);
                tracing::error!(
                    endpoint = self.index,
                    dropped,
                    "webhook changes given up after webhook_retry_for"
                );
            }
        }
        let backlog = self.store.backlog(&self.endpoint).await?;
        let lag = backlog
            .oldest_us
            .map_or(0.0, |oldest| (now.saturating_sub(oldest)) as f64 / 1e6);
        metrics::gauge!("lastseen_webhook_lag_seconds", "endpoint" => label.to_owned()).set(lag);
        let due = self
            .store
            .due_events(&self.endpoint, now, micros(HOLD_GRACE), BATCH)
            .await?;
        if due.is_empty() {
            return Ok(Step::Idle);
        }
        let body = format!(
            "{{\"events\":[{}]}}",
            due.iter()
                .map(|e| e.payload.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        match self.send(body).await {
            Outcome::Acknowledged => {
                let sent: Vec<(UserId, u64)> = due.iter().map(|e| (e.user_id, e.seq)).collect();
                self.store.acknowledge(&self.endpoint, &sent).await?;
                metrics::counter!("lastseen_webhook_delivered_total", "endpoint" => label.to_owned())
                    .increment(sent.len() as u64);
                Ok(Step::Sent)
            }
            Outcome::Refused(reason) => {
                metrics::counter!("lastseen_webhook_retries_total", "endpoint" => label.to_owned())
                    .increment(due.len() as u64);
                Ok(Step::Failed(reason))
            }
        }
    }

    async fn send(&self, body: String) -> Outcome {
        let timestamp = chrono::Utc::now().timestamp();
        let signed = signature(&self.secret, timestamp, &body);
        let request = hyper::Request::post(self.endpoint.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "lastseen-webhooks/1")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signed)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(error) => return Outcome::Refused(format!("bad request: {error}")),
        };
        let exchange = async {
            let response = self.client.inner.request(request).await?;
            let status = response.status();
            // Read the (small) answer so the connection can be reused.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(status)) if status.is_success() => Outcome::Acknowledged,
            Ok(Ok(status)) => Outcome::Refused(format!("answered {status}")),
            Ok(Err(error)) => Outcome::Refused(format!("{error:#}")),
            Err(_) => Outcome::Refused(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }
}

enum Step {
    /// A batch was acknowledged: look for more at once.
    Sent,
    /// Nothing is due.
    Idle,
    /// Another node delivers to this endpoint.
    NotMine,
    /// The endpoint did not acknowledge.
    Failed(String),
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"events":[]}' |
        //   openssl dgst -sha256 -hmac whsec_test
        let signed = signature("whsec_test", 1_700_000_000, r#"{"events":[]}"#);
        assert_eq!(
            signed,
            "v1=4f6f9b7a41398ad124e52a1320534f978e522923f3f2b2724e31d7a9dbf78a7f"
        );
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        for attempt in 1..=30 {
            let cap = BACKOFF_MIN
                .saturating_mul(2_u32.saturating_pow((attempt - 1).min(16)))
                .min(BACKOFF_MAX);
            let wait = backoff(attempt);
            assert!(wait <= cap && wait >= cap / 2, "{attempt}: {wait:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
