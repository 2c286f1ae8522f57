//! Throttles as the handlers apply them: the client's address, the keys counted for each
//! operation, and the `429` they answer with (see [`crate::throttle`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;

/// The client's IP address, from the TCP connection (`unknown` when served without one, as in
/// tests that drive the router directly). A proxy in front makes every client one address:
/// raise the limits there, or throttle at the proxy.
pub struct ClientAddr(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Self(peer.map(|ConnectInfo(addr)| addr.ip())))
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// Counter keys of a login attempt: the username (in any case, at most its longest valid
/// length) and the client address.
fn login_keys(addr: &ClientAddr, username: &str) -> (String, String) {
    let name: String = username.chars().take(150).collect::<String>();
    (
        format!("login-user:{}", name.to_ascii_lowercase()),
        format!("login-addr:{addr}"),
    )
}

/// Refuses a login while `username` or `addr` has used up its failures for the window.
///
/// # Errors
/// [`ApiError::Throttled`] with the time left in the window.
pub async fn login_allowed(
    state: &AppState,
    addr: &ClientAddr,
    username: &str,
) -> Result<(), ApiError> {
    let (user, address) = login_keys(addr, username);
    let rate = state.settings.login_failure_limit;
    let wait = match state.throttle.over(&user, rate).await {
        Some(wait) => Some(wait),
        None => state.throttle.over(&address, rate.times(10)).await,
    };
    wait.map_or(Ok(()), |wait| {
        Err(throttled("Too many failed logins; retry later.", wait))
    })
}

/// Counts a failed login against `username` and `addr`.
pub async fn login_failed(state: &AppState, addr: &ClientAddr, username: &str) {
    let (user, address) = login_keys(addr, username);
    let rate = state.settings.login_failure_limit;
    state.throttle.hit(&user, rate).await;
    state.throttle.hit(&address, rate.times(10)).await;
}

/// Counts a registration from `addr`.
///
/// # Errors
/// [`ApiError::Throttled`] over `register_rate_limit`.
pub async fn count_registration(state: &AppState, addr: &ClientAddr) -> Result<(), ApiError> {
    let rate = state.settings.register_rate_limit;
    match state.throttle.hit(&format!("register:{addr}"), rate).await {
        Some(wait) => Err(throttled("Too many registrations; retry later.", wait)),
        None => Ok(()),
    }
}

/// Counts a WebSocket or SSE open from `addr`.
///
/// # Errors
/// [`ApiError::Throttled`] over `connect_rate_limit`.
pub async fn count_connect(state: &AppState, addr: &ClientAddr) -> Result<(), ApiError> {
    let rate = state.settings.connect_rate_limit;
    match state.throttle.hit(&format!("connect:{addr}"), rate).await {
        Some(wait) => Err(throttled("Too many connections opened; retry later.", wait)),
        None => Ok(()),
    }
}

fn throttled(detail: &'static str, wait: std::time::Duration) -> ApiError {
    metrics::counter!("lastseen_throttled_total").increment(1);
    ApiError::Throttled {
        detail,
        retry_after: wait,
    }
}
