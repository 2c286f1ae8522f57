//! JSON response bodies, up to [`KEEP`] bytes in one allocation of their exact size.
//!
//! axum's `Json` writes into a 128-byte buffer, grows it when the answer is longer (a heartbeat's
//! is), and then allocates again to share it. Here the value is written into a scratch buffer
//! that each thread keeps, and the body is one copy of it. A body larger than [`KEEP`] (a long
//! list, the OpenAPI document) is moved out instead of copied, as axum's would be, so a thread
//! holds at most that much between requests.

use std::cell::RefCell;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;

/// Scratch capacity a thread keeps between responses.
const KEEP: usize = 4096;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(KEEP));
}

/// A value answered as `application/json`. A value that cannot be serialised (a map with
/// non-string keys, say: a bug) gives a `500` response in the API's error shape instead (a
/// status set beside it, as in `(StatusCode::CREATED, Json(..))`, still applies, as with
/// axum's `Json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match body_of(&self.0) {
            Ok(bytes) => {
                let mut response = Response::new(Body::from(bytes));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(error) => ApiError::Internal(error.into()).into_response(),
        }
    }
}

/// `value` serialised.
fn body_of<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    // No scratch buffer while the thread's locals are being torn down, nor if serialising
    // reentered this (it does not): then a fresh buffer.
    let fresh = || serde_json::to_vec(value).map(Bytes::from);
    SCRATCH
        .try_with(|scratch| {
            let Ok(mut buf) = scratch.try_borrow_mut() else {
                return fresh();
            };
            buf.clear();
            let written = serde_json::to_writer(&mut *buf, value);
            if buf.len() > KEEP {
                let large = std::mem::replace(&mut *buf, Vec::with_capacity(KEEP));
                return written.map(|()| Bytes::from(large));
            }
            written.map(|()| Bytes::copy_from_slice(&buf))
        })
        .unwrap_or_else(|_| fresh())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Answer {
        message: &'static str,
        items: Vec<u32>,
    }

    async fn body(response: Response) -> (String, Option<HeaderValue>) {
        let kind = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (String::from_utf8(bytes.to_vec()).unwrap(), kind)
    }

    #[tokio::test]
    async fn small_and_large_values_come_out_whole_one_after_the_other() {
        for n in [0, 3, 5000, 2, 100_000, 1] {
            let answer = Answer {
                message: "ok",
                items: (0..n).collect(),
            };
            let expected = serde_json::to_string(&answer).unwrap();
            let (text, kind) = body(Json(answer).into_response()).await;
            assert_eq!(text, expected);
            assert_eq!(kind.unwrap(), "application/json");
        }
        assert_eq!(SCRATCH.with(|s| s.borrow().capacity()), KEEP);
    }

    #[tokio::test]
    async fn a_value_that_cannot_be_json_is_a_500_in_the_error_shape() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        let response = Json(bad).into_response();
        assert_eq!(response.status(), 500);
        let (text, _) = body(response).await;
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["code"], "internal_error");
    }
}
