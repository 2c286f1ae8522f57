//! The per-socket loop of `GET /api/presence/ws`.
//!
//! [`serve`] is generic over any `Stream + Sink` of WebSocket messages, so it runs over a real
//! socket and over channels in tests alike. One `select!` loop serves client frames, the
//! outbox, the ping timer and shutdown; cleanup (unsubscribing, starting the session's
//! reconnect grace) happens on every exit path through drop guards.

use std::time::{Duration, Instant as StdInstant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};

use super::hub::{Connection, HubError};
use super::protocol::{
    CLOSE_GOING_AWAY, CLOSE_INVALID_DATA, CLOSE_PING_TIMEOUT, CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, CLOSE_TOO_MANY_SOCKETS, CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED, ClientMessage, MESSAGE_SHAPE, ServerMessage, parse_client,
};
use super::{CloseReason, Delivered, LiveSession, Realtime};
use crate::auth::Session;
use crate::domain::{SessionRef, UserId};

/// How long a browser has to send its `auth` message.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    }))
}

/// The close frame that answers a frame the client got wrong, if the read `error` is one (and
/// not the connection failing): tungstenite's error, found in the error's source chain, tells
/// which rule was broken. The socket is still open for writing after such an error.
fn violation(error: &(dyn std::error::Error + 'static)) -> Option<CloseReason> {
    use tungstenite::Error;
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<Error>() {
            let (code, reason) = match error {
                Error::Capacity(_) => (CLOSE_TOO_BIG, "message too big"),
                Error::Utf8(_) => (CLOSE_INVALID_DATA, "text frame is not valid UTF-8"),
                Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ) => {
                    return None;
                }
                Error::Protocol(_) => (CLOSE_PROTOCOL_ERROR, "WebSocket protocol violation"),
                _ => return None,
            };
            return Some(CloseReason { code, reason });
        }
        cause = error.source();
    }
    None
}

fn text(message: &ServerMessage) -> Message {
    Message::Text(message.to_json().into())
}

/// Serves one socket until it closes. `session` is set when the upgrade request carried a
/// valid bearer token; otherwise the first message must be `{"type":"auth","token":...}`.
pub async fn serve<S, E>(mut socket: S, realtime: Realtime, session: Option<Session>)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::error::Error + 'static,
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
            let reason = match error {
                HubError::NodeFull(_) => CloseReason {
                    code: CLOSE_TRY_AGAIN_LATER,
                    reason: "server at capacity; retry later",
                },
                _ => CloseReason {
                    code: CLOSE_TOO_MANY_SOCKETS,
                    reason: "too many open sockets",
                },
            };
            let _ = socket.send(close_message(reason)).await;
            return;
        }
    };
    let Ok(live) = LiveSession::open(&realtime, session.user_id, session.reference()).await else {
        return;
    };
    // First on the fresh outbox, so it precedes every other message.
    connection.send(ServerMessage::Ready {
        user_id: session.user_id.0,
        username: session.username.clone(),
    });
    let mut client = SocketLoop {
        realtime: &realtime,
        connection,
        session: session.reference(),
        expires: session.deadline(),
        delivered: Delivered::default(),
        typing: TypingBudget::new(realtime.config.typing_per_second),
        activity: TypingBudget::new(realtime.config.typing_per_second),
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

/// Token bucket for typing and activity messages: `per_second` tokens, refilled continuously.
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
    /// The socket's session, for the activity it reports.
    session: SessionRef,
    /// When the session's token expires; the socket closes then (4401).
    expires: Option<tokio::time::Instant>,
    delivered: Delivered,
    typing: TypingBudget,
    activity: TypingBudget,
}

impl SocketLoop<'_> {
    /// Runs until the socket ends; returns the close frame to send, if any.
    async fn serve<S, E>(&mut self, socket: &mut S) -> Option<CloseReason>
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::error::Error + 'static,
    {
        let period = self.realtime.config.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // After a stall, wait a full period before the next ping rather than firing a burst
        // that would close a healthy client for a missed pong.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let shutdown = self.realtime.shutdown.clone();
        let outbox = self.connection.outbox().clone();
        let expired = super::until(self.expires);
        tokio::pin!(expired);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    return Some(CloseReason { code: CLOSE_GOING_AWAY, reason: "server shutting down" });
                }
                () = &mut expired => {
                    return Some(CloseReason { code: CLOSE_UNAUTHORIZED, reason: "token expired" });
                }
                frame = socket.next() => {
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(error)) => return violation(&error),
                        None => return None,
                    };
                    awaiting_pong = false;
                    match frame {
                        Message::Text(text) => self.handle_text(&text).await,
                        Message::Binary(_) => self.connection.send(ServerMessage::error(
                            "invalid", format!("Binary frames are not read. {MESSAGE_SHAPE}"))),
                        Message::Close(_) => {
                            // tungstenite queued the echo of the client's close frame; send it.
                            let _ = tokio::time::timeout(Duration::from_secs(1), socket.flush()).await;
                            return None;
                        }
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
            Err(error) => return self.connection.send(error.into()),
        };
        match message {
            ClientMessage::Auth { .. } => self.connection.send(ServerMessage::error(
                "invalid",
                "This socket is already authenticated; send auth only as the first message.",
            )),
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
                self.realtime.hub.typing(from, UserId(to)).await;
            }
            ClientMessage::Activity { state } => {
                if !self.activity.take() {
                    return self.connection.send(ServerMessage::error(
                        "throttled",
                        "too many activity messages; send one when the state changes",
                    ));
                }
                let user = self.connection.outbox().viewer().id;
                let touched = self
                    .realtime
                    .engine
                    .touch(user, self.session, state.into())
                    .await;
                if let Err(error) = touched {
                    let error = super::RealtimeError::from(error);
                    self.connection
                        .send(ServerMessage::error(error.code(), error.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The socket loop driven over in-memory channels: no network, and (once the database work
    //! of the set-up is done) tokio's clock paused, so timeouts pass without real waiting.

    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;
    use crate::realtime::testing;

    /// The server's side of a socket: what the client sent, and where replies go.
    struct Duplex {
        incoming: mpsc::UnboundedReceiver<Message>,
        outgoing: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Duplex {
        type Item = Result<Message, Infallible>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Message> for Duplex {
        type Error = mpsc::error::SendError<Message>;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.outgoing.send(item)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The client's side: send frames, read what the server sent.
    struct Client {
        to_server: mpsc::UnboundedSender<Message>,
        from_server: mpsc::UnboundedReceiver<Message>,
    }

    impl Client {
        fn send(&self, value: Value) {
            self.to_server
                .send(Message::Text(value.to_string().into()))
                .unwrap();
        }

        /// The next text frame as JSON, skipping pings.
        async fn next_json(&mut self) -> Value {
            loop {
                match self.from_server.recv().await.expect("socket open") {
                    Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                    Message::Ping(_) => {}
                    other => panic!("expected a message, got {other:?}"),
                }
            }
        }

        /// The close code the server sends next, skipping anything else.
        async fn close_code(&mut self) -> u16 {
            loop {
                match self.from_server.recv().await.expect("a close frame") {
                    Message::Close(Some(frame)) => return frame.code,
                    _ => continue,
                }
            }
        }
    }

    fn socket() -> (Duplex, Client) {
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_server) = mpsc::unbounded_channel();
        (
            Duplex { incoming, outgoing },
            Client {
                to_server,
                from_server,
            },
        )
    }

    #[tokio::test]
    async fn a_browser_authenticates_with_its_first_message_then_subscribes() {
        let (realtime, store) = testing::realtime(Duration::from_secs(15)).await;
        testing::user(store.as_ref(), "alice", "alice-token").await;
        let bob = testing::user(store.as_ref(), "bob", "bob-token").await;
        let (server, mut client) = socket();
        tokio::spawn(serve(server, realtime.clone(), None));

        client.send(json!({"type": "auth", "token": "alice-token"}));
        client.send(json!({"type": "subscribe", "user_ids": [bob.user_id.0]}));
        let ready = client.next_json().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        assert_eq!(ready["username"], "alice");
        let snapshot = client.next_json().await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        assert_eq!(snapshot["users"][0]["username"], "bob");
        assert_eq!(snapshot["users"][0]["online_status"], "offline");

        client.send(json!({"type": "nonsense"}));
        assert_eq!(
            client.next_json().await["code"],
            "invalid",
            "the socket stays open"
        );
    }

    #[tokio::test]
    async fn a_first_message_that_is_not_auth_closes_with_4401() {
        let (realtime, _store) = testing::realtime(Duration::from_secs(15)).await;
        tokio::time::pause();
        let (server, mut client) = socket();
        tokio::spawn(serve(server, realtime, None));
        client.send(json!({"type": "subscribe", "user_ids": [1]}));
        assert_eq!(client.close_code().await, CLOSE_UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_with_4000_after_two_pings() {
        let ping = Duration::from_secs(15);
        let (realtime, store) = testing::realtime(ping).await;
        let alice = testing::user(store.as_ref(), "alice", "alice-token").await;
        tokio::time::pause();
        let (server, mut client) = socket();
        let started = tokio::time::Instant::now();
        tokio::spawn(serve(server, realtime, Some(alice)));
        assert_eq!(client.close_code().await, CLOSE_PING_TIMEOUT);
        let waited = started.elapsed();
        assert!(waited >= ping * 2 && waited < ping * 3, "{waited:?}");
    }

    #[tokio::test]
    async fn the_socket_holds_its_session_live_and_closing_starts_the_grace() {
        let (realtime, store) = testing::realtime(Duration::from_secs(15)).await;
        let alice = testing::user(store.as_ref(), "alice", "alice-token").await;
        tokio::time::pause();
        let user = alice.user_id;
        let (server, client) = socket();
        let served = tokio::spawn(serve(server, realtime.clone(), Some(alice)));
        tokio::task::yield_now().await;
        let online = realtime.engine.presence(&[user]).await.unwrap();
        assert!(online[0].1.status.is_online());

        drop(client);
        served.await.unwrap();
        realtime.connections.close();
        realtime.connections.wait().await;
        tokio::time::advance(realtime.config.disconnect_grace + Duration::from_secs(1)).await;
        realtime.engine.maintenance().expire_due().await.unwrap();
        let offline = realtime.engine.presence(&[user]).await.unwrap();
        assert!(!offline[0].1.status.is_online(), "ended after the grace");
    }
}
