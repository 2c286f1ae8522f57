//! A minimal keep-alive HTTP/1.1 client: one request at a time per connection. A server that
//! answers `connection: close` (gunicorn's sync workers, in the `seed-stack` mode) gets a new
//! connection before the next request; unlike `wrk`, the connect then counts in that request's
//! latency.
//!
//! The load generator shares two cores with the server it measures, so its per-request cost
//! must stay well below the server's. Requests are rendered once into byte buffers and written
//! with one `write_all`; responses are parsed just enough to find the status and the body
//! (`content-length` or chunked). There is no header map and no allocation per request once the
//! connection's buffer has grown to the size of a response.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head we accept; anything longer is not our server.
const MAX_HEAD: usize = 16 * 1024;

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    /// The server said it closes the connection after the last response.
    closing: bool,
    /// Bytes read from the socket; `buf[start..filled]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// Decoded body of the last chunked response.
    chunked: Vec<u8>,
}

/// A response: its status and body, borrowed from the connection until the next request.
pub struct Response<'a> {
    /// HTTP status code.
    pub status: u16,
    /// The body bytes.
    pub body: &'a [u8],
}

enum Framing {
    Length(usize),
    Chunked,
}

/// What a response head says.
struct Head {
    status: u16,
    framing: Framing,
    /// `connection: close`.
    close: bool,
}

impl Conn {
    /// Connects with `TCP_NODELAY` (requests are single writes; Nagle would only add delay).
    ///
    /// # Errors
    /// If the connection fails.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("while connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            closing: false,
            buf: vec![0; 4096],
            start: 0,
            filled: 0,
            chunked: Vec::new(),
        })
    }

    /// Sends one pre-rendered request and reads its response.
    ///
    /// # Errors
    /// I/O errors, a closed connection or a malformed response.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<Response<'_>> {
        if self.closing {
            *self = Self::connect(self.addr).await?;
        }
        self.compact();
        self.stream.write_all(request).await?;
        let (head, head_len) = self.read_head().await?;
        self.start += head_len;
        self.closing = head.close;
        let status = head.status;
        match head.framing {
            Framing::Length(len) => {
                self.fill_to(len).await?;
                let body = self.start..self.start + len;
                self.start += len;
                Ok(Response {
                    status,
                    body: &self.buf[body],
                })
            }
            Framing::Chunked => {
                self.read_chunked().await?;
                Ok(Response {
                    status,
                    body: &self.chunked,
                })
            }
        }
    }

    /// Moves unconsumed bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
    }

    /// Reads more bytes from the socket, growing the buffer when it is full.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        if self.filled == self.buf.len() {
            self.compact();
            if self.filled == self.buf.len() {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        ensure!(n > 0, "the server closed the connection");
        self.filled += n;
        Ok(())
    }

    /// Makes sure at least `len` unconsumed bytes are buffered.
    async fn fill_to(&mut self, len: usize) -> anyhow::Result<()> {
        while self.filled - self.start < len {
            self.read_more().await?;
        }
        Ok(())
    }

    /// Reads up to the end of the response head; returns it and its length.
    async fn read_head(&mut self) -> anyhow::Result<(Head, usize)> {
        let mut searched: usize = 0;
        loop {
            let pending = &self.buf[self.start..self.filled];
            let from = searched.saturating_sub(3);
            if let Some(at) = find(&pending[from..], b"\r\n\r\n") {
                let head_len = from + at + 4;
                return Ok((parse_head(&pending[..head_len])?, head_len));
            }
            searched = pending.len();
            ensure!(
                searched < MAX_HEAD,
                "response head longer than {MAX_HEAD} bytes"
            );
            self.read_more().await?;
        }
    }

    /// Offset (from `start`) just past the next CRLF at or after `from`, reading as needed.
    async fn line_end(&mut self, from: usize) -> anyhow::Result<usize> {
        loop {
            if let Some(at) = find(&self.buf[self.start + from..self.filled], b"\r\n") {
                return Ok(from + at + 2);
            }
            ensure!(
                self.filled - self.start < MAX_HEAD + from,
                "chunk line too long"
            );
            self.read_more().await?;
        }
    }

    /// Decodes a chunked body into `self.chunked`, consuming it from the buffer.
    async fn read_chunked(&mut self) -> anyhow::Result<()> {
        self.chunked.clear();
        loop {
            let end = self.line_end(0).await?;
            let line = &self.buf[self.start..self.start + end - 2];
            let digits = line.split(|&b| b == b';').next().unwrap_or(line);
            let size = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .context("malformed chunk size")?;
            self.start += end;
            if size == 0 {
                // Trailer lines up to an empty one.
                loop {
                    let end = self.line_end(0).await?;
                    self.start += end;
                    if end == 2 {
                        return Ok(());
                    }
                }
            }
            self.fill_to(size + 2).await?;
            let data = self.start..self.start + size;
            self.chunked.extend_from_slice(&self.buf[data]);
            self.start += size + 2;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the status line, the framing headers and `connection` of a complete response head.
fn parse_head(head: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("unexpected status line {status_line:?}"))?;
    let mut framing = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            let len = value.trim().parse().context("malformed content-length")?;
            framing = Some(Framing::Length(len));
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Some(Framing::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"));
        }
    }
    let framing = match framing {
        Some(framing) => framing,
        None if status == 204 || status == 304 || status < 200 => Framing::Length(0),
        None => bail!("response {status} has neither content-length nor chunked encoding"),
    };
    Ok(Head {
        status,
        framing,
        close,
    })
}

/// `POST /api/users/heartbeat/` with each token as a bearer token, as the seed's frontend sends
/// it: one rendered request per token.
pub fn heartbeats(host: &str, tokens: &[String]) -> Arc<[Vec<u8>]> {
    tokens
        .iter()
        .map(|token| {
            let auth = format!("Bearer {token}");
            render(
                "POST",
                host,
                "/api/users/heartbeat/",
                &[("authorization", &auth)],
                b"",
            )
        })
        .collect()
}

/// Renders a request with the given method, path, extra headers and body.
pub fn render(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_with_length_and_chunked_framing_parse() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(head.status, 200);
        assert!(matches!(head.framing, Framing::Length(12)));
        assert!(!head.close);
        let head =
            parse_head(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(head.status, 404);
        assert!(matches!(head.framing, Framing::Chunked));
        let head = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(head.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn keep_alive_responses_of_both_framings_are_read_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut scratch = [0u8; 1024];
            // First response arrives in two writes; the second is chunked.
            let _ = socket.read(&mut scratch).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-le")
                .await
                .unwrap();
            socket.write_all(b"ngth: 5\r\n\r\nhello").await.unwrap();
            let _ = socket.read(&mut scratch).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap();
        });
        let mut conn = Conn::connect(addr).await.unwrap();
        let request = render("GET", "x", "/", &[], b"");
        let response = conn.send(&request).await.unwrap();
        assert_eq!((response.status, response.body), (200, &b"hello"[..]));
        let response = conn.send(&request).await.unwrap();
        assert_eq!((response.status, response.body), (201, &b"abcde"[..]));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_opened_again_for_the_next_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for body in [&b"one"[..], b"two"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut scratch = [0u8; 1024];
                let _ = socket.read(&mut scratch).await.unwrap();
                let head = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\n";
                socket.write_all(head).await.unwrap();
                socket.write_all(body).await.unwrap();
                // Dropping the socket closes it, as gunicorn's sync workers do.
            }
        });
        let mut conn = Conn::connect(addr).await.unwrap();
        let request = render("GET", "x", "/", &[], b"");
        assert_eq!(conn.send(&request).await.unwrap().body, b"one");
        assert_eq!(conn.send(&request).await.unwrap().body, b"two");
        server.await.unwrap();
    }

    #[test]
    fn rendered_requests_carry_headers_and_length() {
        let request = render(
            "POST",
            "h:1",
            "/p/",
            &[("authorization", "Bearer t")],
            b"{}",
        );
        assert_eq!(
            request,
            b"POST /p/ HTTP/1.1\r\nhost: h:1\r\nauthorization: Bearer t\r\ncontent-length: 2\r\n\r\n{}"
        );
    }
}
