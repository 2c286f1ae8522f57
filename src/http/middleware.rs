//! The one middleware every route runs behind ([`RequestLayer`]): request metrics, the request
//! timeout, panic catching, the JSON error shape and the request span, in one service and one
//! future, so that a request pays for none of them when it does not need them.
//!
//! - **Metrics.** `lastseen_http_requests_total` and `lastseen_http_request_duration_seconds`
//!   with labels `method`, `route`, `status`. The handles for one (endpoint, method, status) are
//!   resolved once per thread and kept in a thread-local map keyed by a number, so a request
//!   hashes no labels and takes no lock.
//! - **Timeout.** No timer for a request that completes on its first poll (a heartbeat, a
//!   health check); a handler that waits (I/O, a lock) gets a `sleep_until` its deadline,
//!   counted from when the request arrived. On expiry: `408` in our JSON shape.
//! - **Panics.** A panic in a handler becomes a logged `500` in our JSON shape.
//! - **Errors.** [`error::finish`] logs 5xx causes and gives any error response the framework
//!   made (404, 405, 413, 415, …) the `{"detail", "code"}` body.
//! - **Span.** A `request` span (method, URI, version) and the started/finished events, at
//!   `DEBUG`: built only when that level is enabled.
//!
//! It is applied with `Router::layer`, which wraps every endpoint (each method of each route,
//! and the fallback) in its own instance, so an instance always serves one route: it learns
//! that route's label from the first request's `MatchedPath`.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};
use tracing::Span;

use super::error;

/// Route label of requests that matched no route (the 404 fallback).
const UNMATCHED: &str = "unmatched";

/// Wraps each endpoint in a [`RequestService`] with this request timeout.
#[derive(Clone)]
pub struct RequestLayer {
    timeout: Duration,
}

impl RequestLayer {
    /// Requests still running `timeout` after they arrived are answered `408`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

/// Numbers endpoints across the process, so a cached metric handle is never shared by two
/// endpoints (not even of two routers built in one process, as tests do).
static NEXT_ENDPOINT: AtomicU32 = AtomicU32::new(0);

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            endpoint: Arc::new(Endpoint {
                id: NEXT_ENDPOINT.fetch_add(1, Ordering::Relaxed),
                route: OnceLock::new(),
                timeout: self.timeout,
            }),
        }
    }
}

/// What the instances of one endpoint share.
struct Endpoint {
    /// Unique in the process (see [`NEXT_ENDPOINT`]).
    id: u32,
    /// The `route` label: the matched path without a trailing slash, or [`UNMATCHED`]. Set by
    /// the first request; every request of an endpoint matches the same path.
    route: OnceLock<Box<str>>,
    /// Longest a request may run.
    timeout: Duration,
}

impl Endpoint {
    fn route(&self, request: &Request) -> &str {
        self.route.get_or_init(|| {
            let path = request
                .extensions()
                .get::<MatchedPath>()
                .map_or(UNMATCHED, MatchedPath::as_str);
            let label = match path.strip_suffix('/') {
                Some(trimmed) if !trimmed.is_empty() => trimmed,
                _ => path,
            };
            label.into()
        })
    }
}

/// The service [`RequestLayer`] makes; see the module documentation.
#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    endpoint: Arc<Endpoint>,
}

impl<S> Service<Request> for RequestService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RequestFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let arrived = Instant::now();
        self.endpoint.route(&request);
        let method = request.method().clone();
        let span = tracing::debug_span!(
            "request",
            method = %request.method(),
            uri = %request.uri(),
            version = ?request.version(),
        );
        let inner = span.in_scope(|| {
            tracing::debug!("started processing request");
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
        });
        let (inner, panic) = match inner {
            Ok(future) => (Some(future), None),
            Err(panic) => (None, Some(panic)),
        };
        RequestFuture {
            inner,
            panic,
            timer: None,
            arrived,
            method,
            endpoint: self.endpoint.clone(),
            span,
        }
    }
}

pin_project! {
    /// The future of a [`RequestService`] call.
    pub struct RequestFuture<F> {
        #[pin]
        inner: Option<F>,
        panic: Option<Box<dyn Any + Send>>,
        // Made the first time the handler is not done on a poll (boxed: `Sleep` is large and
        // most requests never need it).
        timer: Option<Pin<Box<Sleep>>>,
        arrived: Instant,
        method: Method,
        endpoint: Arc<Endpoint>,
        span: Span,
    }
}

impl<F> Future for RequestFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = if let Some(panic) = this.panic.take() {
            panicked(&*panic)
        } else if let Some(inner) = this.inner.as_pin_mut() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                Ok(Poll::Ready(Ok(response))) => response,
                Ok(Poll::Ready(Err(never))) => match never {},
                Err(panic) => panicked(&*panic),
                Ok(Poll::Pending) => {
                    let deadline = *this.arrived + this.endpoint.timeout;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    error::status_response(StatusCode::REQUEST_TIMEOUT)
                }
            }
        } else {
            // Unreachable: `call` sets either the inner future or the panic.
            error::status_response(StatusCode::INTERNAL_SERVER_ERROR)
        };
        let response = error::finish(response);
        let elapsed = this.arrived.elapsed();
        tracing::debug!(
            latency = ?elapsed,
            status = response.status().as_u16(),
            "finished processing request"
        );
        record(this.endpoint, this.method, response.status(), elapsed);
        Poll::Ready(Ok(response))
    }
}

/// The `500` for a handler that panicked; the panic's message goes to the log.
fn panicked(panic: &(dyn Any + Send)) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(panic = message, "request handler panicked");
    error::status_response(StatusCode::INTERNAL_SERVER_ERROR)
}

/// One request's count and latency.
struct Handles {
    requests: Counter,
    duration: Histogram,
}

impl Handles {
    fn resolve(route: &str, method: &str, status: StatusCode) -> Self {
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.as_str().to_owned()),
        ];
        Self {
            requests: metrics::counter!("lastseen_http_requests_total", &labels),
            duration: metrics::histogram!("lastseen_http_request_duration_seconds", &labels),
        }
    }

    fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

thread_local! {
    /// Handles by [`cache_key`], filled on first use on each thread.
    static HANDLES: RefCell<HashMap<u64, Handles, BuildHasherDefault<KeyHasher>>> =
        RefCell::new(HashMap::default());
}

fn record(endpoint: &Endpoint, method: &Method, status: StatusCode, elapsed: Duration) {
    let route = endpoint.route.get().map_or(UNMATCHED, |route| &**route);
    let Some(method_index) = method_index(method) else {
        // A method of the client's own invention: rare, and no key of bounded size.
        Handles::resolve(route, method.as_str(), status).record(elapsed);
        return;
    };
    let key = cache_key(endpoint.id, method_index, status);
    HANDLES.with_borrow_mut(|handles| {
        handles
            .entry(key)
            .or_insert_with(|| Handles::resolve(route, method.as_str(), status))
            .record(elapsed);
    });
}

/// The key of one (endpoint, method, status) in the handle cache.
fn cache_key(endpoint: u32, method_index: u8, status: StatusCode) -> u64 {
    u64::from(endpoint) << 32 | u64::from(method_index) << 16 | u64::from(status.as_u16())
}

/// A small number for each standard method.
fn method_index(method: &Method) -> Option<u8> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .position(|m| m == method)
        .and_then(|i| u8::try_from(i).ok())
}

/// Hashes the one `u64` of a [`cache_key`] with a multiply: the keys are small distinct
/// numbers, not attacker-chosen strings.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: Router, path: &str) -> (StatusCode, Value) {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_in_the_json_shape() {
        let router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("boom");
                    #[allow(unreachable_code)]
                    ()
                }),
            )
            .layer(RequestLayer::new(Duration::from_secs(5)));
        let (status, body) = call(router, "/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "internal_error", "{body}");
        assert_eq!(body["detail"], "Internal Server Error.");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_still_waiting_at_the_deadline_is_a_408_and_one_done_before_is_not() {
        let router = Router::new()
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(10))))
            .route(
                "/quick",
                get(|| tokio::time::sleep(Duration::from_millis(900))),
            )
            .layer(RequestLayer::new(Duration::from_secs(1)));
        let started = Instant::now();
        let (status, body) = call(router.clone(), "/slow").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["code"], "request_timeout", "{body}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let (status, _) = call(router, "/quick").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn framework_errors_get_the_json_shape() {
        let router = Router::new()
            .route("/only-get", get(|| async {}))
            .layer(RequestLayer::new(Duration::from_secs(5)));
        let post = Request::post("/only-get").body(Body::empty()).unwrap();
        let response = router.clone().oneshot(post).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], "method_not_allowed", "{body}");
        let (status, body) = call(router, "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found", "{body}");
    }

    #[test]
    fn cache_keys_tell_endpoints_methods_and_statuses_apart() {
        let key = |endpoint, method: &Method, status: u16| {
            cache_key(
                endpoint,
                method_index(method).unwrap(),
                StatusCode::from_u16(status).unwrap(),
            )
        };
        let keys = [
            key(0, &Method::GET, 200),
            key(1, &Method::GET, 200),
            key(0, &Method::POST, 200),
            key(0, &Method::GET, 404),
            key(u32::MAX, &Method::TRACE, 599),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(method_index(&Method::from_bytes(b"BREW").unwrap()), None);
    }
}
