//! The per-socket loop of `GET /api/presence/ws`.
//!
//! [`serve`] is generic over any `Stream + Sink` of WebSocket messages, so it runs over a real
//! socket and over channels in tests alike. One `select!` loop serves client frames, the
//! outbox, the ping timer and shutdown; cleanup (unsubscribing, starting the session's
//! reconnect grace) happens on every exit path through drop guards.

use std::time::{Duration, Instant as StdInstant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};

use super::hub::Connection;
use super::protocol::{
    CLOSE_GOING_AWAY, CLOSE_PING_TIMEOUT, CLOSE_SLOW_CONSUMER, CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHORIZED, ClientMessage, ServerMessage, parse_client,
};
use super::{CloseReason, Delivered, LiveSession, Realtime};
use crate::auth::Session;
use crate::domain::UserId;

/// How long a browser has to send its `auth` message.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    }))
}

fn text(message: &ServerMessage) -> Message {
    Message::Text(message.to_json().into())
}

/// Serves one socket until it closes. `session` is set when the upgrade request carried a
/// valid bearer token; otherwise the first message must be `{"type":"auth","token":...}`.
pub async fn serve<S, E>(mut socket: S, realtime: Realtime, session: Option<Session>)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
{
    let session = match session {
        Some(session) => session,
        None => match authenticate_first_message(&mut socket, &realtime).await {
            Some(session) => session,
            None => {
                let reason = CloseReason {
                    code: CLOSE_UNAUTHORIZED,
                    reason: "authentication required",
                };
                let _ = socket.send(close_message(reason)).await;
                return;
            }
        },
    };
    let connection = match realtime.hub.connect(session.viewer(), session.session_id) {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "socket refused");
            let reason = CloseReason {
                code: CLOSE_TOO_MANY_SOCKETS,
                reason: "too many open sockets",
            };
            let _ = socket.send(close_message(reason)).await;
            return;
        }
    };
    let Ok(live) = LiveSession::open(&realtime, session.user_id, session.session_id).await else {
        return;
    };
    let mut client = SocketLoop {
        realtime: &realtime,
        connection,
        delivered: Delivered::default(),
        typing: TypingBudget::new(realtime.config.typing_per_second),
    };
    let reason = client.serve(&mut socket).await;
    if let Some(reason) = reason {
        let _ =
            tokio::time::timeout(Duration::from_secs(1), socket.send(close_message(reason))).await;
    }
    live.close().await;
}

async fn authenticate_first_message<S, E>(socket: &mut S, realtime: &Realtime) -> Option<Session>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    let first = tokio::time::timeout(AUTH_TIMEOUT, socket.next())
        .await
        .ok()??
        .ok()?;
    let Message::Text(text) = first else {
        return None;
    };
    match parse_client(&text) {
        Ok(ClientMessage::Auth { token }) => realtime.auth.authenticate(&token).await.ok(),
        _ => None,
    }
}

/// Token bucket for typing messages: `per_second` tokens, refilled continuously.
struct TypingBudget {
    per_second: f64,
    tokens: f64,
    refilled: StdInstant,
}

impl TypingBudget {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self {
            per_second,
            tokens: per_second,
            refilled: StdInstant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = StdInstant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct SocketLoop<'a> {
    realtime: &'a Realtime,
    connection: Connection,
    delivered: Delivered,
    typing: TypingBudget,
}

impl SocketLoop<'_> {
    /// Runs until the socket ends; returns the close frame to send, if any.
    async fn serve<S, E>(&mut self, socket: &mut S) -> Option<CloseReason>
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    {
        let period = self.realtime.config.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // After a stall, wait a full period before the next ping rather than firing a burst
        // that would close a healthy client for a missed pong.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let shutdown = self.realtime.shutdown.clone();
        let outbox = self.connection.outbox().clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    return Some(CloseReason { code: CLOSE_GOING_AWAY, reason: "server shutting down" });
                }
                frame = socket.next() => {
                    let Some(Ok(frame)) = frame else { return None };
                    awaiting_pong = false;
                    match frame {
                        Message::Text(text) => self.handle_text(&text).await,
                        Message::Binary(_) => self.connection.send(ServerMessage::error(
                            "invalid", "binary frames are not supported; send JSON text")),
                        Message::Close(_) => return None,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                () = outbox.ready() => {
                    let (items, close) = outbox.drain();
                    let messages: Vec<Message> = items
                        .into_iter()
                        .filter_map(|item| self.delivered.admit(item))
                        .map(|message| text(&message))
                        .collect();
                    // Everything drained goes out in as few writes as the write buffer allows,
                    // then one flush: one syscall per batch rather than per frame.
                    let write = async {
                        for message in messages {
                            socket.feed(message).await?;
                        }
                        socket.flush().await
                    };
                    match tokio::time::timeout(period, write).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return None,
                        Err(_) => {
                            metrics::counter!("lastseen_slow_consumers_closed_total").increment(1);
                            return Some(CloseReason { code: CLOSE_SLOW_CONSUMER, reason: "slow consumer: write stalled" });
                        }
                    }
                    if close.is_some() {
                        return close;
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Some(CloseReason { code: CLOSE_PING_TIMEOUT, reason: "ping timeout" });
                    }
                    awaiting_pong = true;
                    let ping = socket.send(Message::Ping(Vec::new().into()));
                    match tokio::time::timeout(period, ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return None,
                        Err(_) => return Some(CloseReason { code: CLOSE_SLOW_CONSUMER, reason: "slow consumer: write stalled" }),
                    }
                }
            }
        }
    }

    async fn handle_text(&mut self, text: &str) {
        let message = match parse_client(text) {
            Ok(message) => message,
            Err(error) => return self.connection.send(error),
        };
        match message {
            ClientMessage::Auth { .. } => self
                .connection
                .send(ServerMessage::error("invalid", "already authenticated")),
            ClientMessage::Subscribe { user_ids, since } => {
                let known = |id: i64| since.get(&id).copied();
                if let Err(error) =
                    super::subscribe(self.realtime, &mut self.connection, &user_ids, known).await
                {
                    tracing::warn!(%error, "subscribe failed");
                    self.connection
                        .send(ServerMessage::error(error.code(), error.to_string()));
                }
            }
            ClientMessage::Unsubscribe { user_ids } => {
                let users: Vec<UserId> = user_ids.into_iter().map(UserId).collect();
                self.connection.unsubscribe(&users);
                self.delivered.forget(&users);
            }
            ClientMessage::Typing { to } => {
                if !self.typing.take() {
                    return self.connection.send(ServerMessage::error(
                        "throttled",
                        "too many typing messages; slow down",
                    ));
                }
                let from = self.connection.outbox().viewer().id;
                self.realtime.hub.typing(from, UserId(to));
            }
        }
    }
}
