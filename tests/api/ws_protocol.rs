//! WebSocket protocol violations, sent as raw frames a well-behaved client library cannot
//! produce, are answered with the close code that names them (RFC 6455 section 7.4.1).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app};

/// Opens a socket by hand: the upgrade request with a bearer token, up to the end of the
/// `101` response.
async fn raw_socket(app: &TestApp, token: &str) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /api/presence/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A client frame: FIN set, `opcode`, masked with a zero key (so the payload is unchanged)
/// unless `masked` is false.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    out.extend_from_slice(payload);
    out
}

/// Sends `bytes` and returns the code of the close frame the server answers with, skipping
/// other frames; `None` if the connection ends without one.
async fn close_code_after(stream: &mut TcpStream, bytes: &[u8]) -> Option<u16> {
    stream.write_all(bytes).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => usize::from(stream.read_u16().await.ok()?),
                127 => usize::try_from(stream.read_u64().await.ok()?).ok()?,
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the server answers within 5 s")
}

#[tokio::test]
async fn each_protocol_violation_gets_the_close_code_that_names_it() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    let max = app.settings.max_message_bytes;
    let header_only = {
        // A text frame whose header announces 10 MB; the payload never comes.
        let mut out = vec![0x81, 0x80 | 127];
        out.extend_from_slice(&10_000_000u64.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    };
    // A text message of `max` bytes without FIN, then one more byte in a continuation frame.
    let fragmented = [
        {
            let mut first = frame(0x1, &vec![b'a'; max], true);
            first[0] = 0x01;
            first
        },
        frame(0x0, b"a", true),
    ]
    .concat();
    let cases: [(&str, Vec<u8>, u16); 7] = [
        (
            "oversize frame",
            frame(0x1, &vec![b'a'; max + 1], true),
            1009,
        ),
        ("header announcing 10 MB", header_only, 1009),
        ("message over the limit in fragments", fragmented, 1009),
        (
            "invalid UTF-8",
            frame(0x1, &[b'"', 0xff, 0xfe, b'"'], true),
            1007,
        ),
        ("unmasked frame", frame(0x1, b"{}", false), 1002),
        ("reserved data opcode", frame(0x3, b"{}", true), 1002),
        ("reserved control opcode", frame(0xb, b"", true), 1002),
    ];
    for (what, bytes, code) in cases {
        let mut socket = raw_socket(&app, &token).await;
        assert_eq!(
            close_code_after(&mut socket, &bytes).await,
            Some(code),
            "{what}"
        );
    }

    // A frame within the limit is served as before.
    let mut socket = raw_socket(&app, &token).await;
    let ping = frame(0x9, b"hi", true);
    let close = frame(0x8, &1000u16.to_be_bytes(), true);
    socket.write_all(&ping).await.unwrap();
    assert_eq!(close_code_after(&mut socket, &close).await, Some(1000));
}
