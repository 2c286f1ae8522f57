//! Connection hygiene: slow headers, idle keep-alive connections and stalled bodies are
//! closed; over `max_connections` new connections get a 503 while established ones are served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app_with};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or fails it); returns what came and when.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the server closes the connection in time");
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// Sends one keep-alive `GET /healthz` and reads its response.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&response).contains("\"ok\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed instead of answering");
        response.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_slow_header_and_an_idle_keep_alive_connection_are_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s| s.header_read_timeout = Duration::from_millis(400)).await;

    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    let (_, after) = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(
        after >= Duration::from_millis(300),
        "closed early: {after:?}"
    );

    let mut idle = connect(&app).await;
    assert!(healthz(&mut idle).await.starts_with("HTTP/1.1 200"));
    let (rest, after) = until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest}");
    assert!(
        after >= Duration::from_millis(300),
        "closed early: {after:?}"
    );

    let mut silent = connect(&app).await;
    until_closed(&mut silent, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_connection_with_no_traffic_past_its_head_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|s| s.idle_timeout = Duration::from_millis(500)).await;
    let mut stalled = connect(&app).await;
    stalled
        .write_all(
            b"POST /api/users/login/ HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"username\"",
        )
        .await
        .unwrap();
    let (_, after) = until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(
        after >= Duration::from_millis(400),
        "closed early: {after:?}"
    );
    assert!(
        after < app.settings.request_timeout,
        "closed by the idle timeout, not the request timeout: {after:?}"
    );
}

#[tokio::test]
async fn traffic_keeps_a_connection_open_past_its_idle_timeout_and_silence_then_ends_it() {
    let idle = Duration::from_millis(500);
    let app = spawn_app_with(|s| s.idle_timeout = idle).await;
    let mut busy = connect(&app).await;
    let started = Instant::now();
    // Three idle timeouts' worth of requests, each well within the timeout of the last.
    let mut last = Instant::now();
    while started.elapsed() < idle * 3 {
        assert!(healthz(&mut busy).await.starts_with("HTTP/1.1 200"));
        last = Instant::now();
        tokio::time::sleep(idle / 3).await;
    }
    let (rest, _) = until_closed(&mut busy, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest}");
    // The server's last write came a little before `last`.
    let silent = last.elapsed();
    assert!(
        silent >= idle * 9 / 10,
        "closed early: {silent:?} after the last answer"
    );
}

#[tokio::test]
async fn over_the_connection_cap_new_connections_get_503_and_established_ones_are_served() {
    let app = spawn_app_with(|s| s.max_connections = 2).await;
    let mut first = connect(&app).await;
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = connect(&app).await;
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));

    let mut third = connect(&app).await;
    let (refused, _) = until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert!(
        refused.contains(r#""code":"service_unavailable""#),
        "{refused}"
    );

    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    drop(second);
    // The closed connection's place is free again once the server noticed the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = connect(&app).await;
        next.write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = until_closed(&mut next, Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.metric("lastseen_tcp_connections_refused_total").await >= 1.0);
}
