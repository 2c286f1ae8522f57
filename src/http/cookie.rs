//! The browser session cookie `lastseen_session`: set by login, cleared by logout, accepted like
//! a bearer token when a request carries no `Authorization` header.
//!
//! A cookie travels with every request the browser makes to this server, including ones a
//! third-party page triggers. `SameSite=Strict` stops most of them; as defence in depth, a
//! request that changes something (any method but GET/HEAD/OPTIONS) or opens a socket with the
//! cookie must carry an `Origin` equal to this server's own (its `Host`).

use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method};

/// Name of the browser session cookie.
pub const SESSION_COOKIE: &str = "lastseen_session";

/// The `Set-Cookie` value that stores `token` in the browser for the browser's session.
pub fn set_session(token: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"
    ))
    .ok()
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_session(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "lastseen_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("lastseen_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }
}

/// The session token in the request's `Cookie` headers, if any (empty values count as none).
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Whether a request with `method` may be authenticated by the cookie: safe methods always;
/// others only from this server's own origin.
pub fn allowed(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || same_origin(headers)
}

/// Whether the request's `Origin` names this server: its host and port equal the `Host` header
/// (scheme aside, so it holds behind a TLS-terminating proxy that keeps `Host`). A missing or
/// `null` origin is not ours.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let normalise = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        match authority.strip_suffix(&format!(":{default_port}")) {
            Some(bare) => bare.to_owned(),
            None => authority,
        }
    };
    !authority.contains('/') && normalise(authority) == normalise(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_token_is_found_among_other_cookies() {
        let map = headers(&[("cookie", "a=1; lastseen_session=tok; b=2")]);
        assert_eq!(session_token(&map), Some("tok"));
        let map = headers(&[("cookie", "a=1"), ("cookie", "lastseen_session=t2")]);
        assert_eq!(session_token(&map), Some("t2"));
        assert_eq!(
            session_token(&headers(&[("cookie", "lastseen_session=")])),
            None
        );
        assert_eq!(
            session_token(&headers(&[("cookie", "xlastseen_session=1")])),
            None
        );
        assert_eq!(session_token(&HeaderMap::new()), None);
    }

    #[test]
    fn only_our_own_origin_is_same_origin() {
        let ours = |origin| headers(&[("host", "chat.example:8000"), ("origin", origin)]);
        assert!(same_origin(&ours("http://chat.example:8000")));
        assert!(same_origin(&ours("https://CHAT.example:8000")));
        assert!(!same_origin(&ours("http://evil.example:8000")));
        assert!(!same_origin(&ours("http://chat.example:8001")));
        assert!(!same_origin(&ours("null")));
        assert!(!same_origin(&headers(&[("host", "chat.example:8000")])));
        let default_port = headers(&[
            ("host", "chat.example"),
            ("origin", "https://chat.example:443"),
        ]);
        assert!(same_origin(&default_port));
    }

    #[test]
    fn safe_methods_need_no_origin() {
        let none = HeaderMap::new();
        assert!(allowed(&Method::GET, &none));
        assert!(!allowed(&Method::POST, &none));
        assert!(!allowed(&Method::DELETE, &none));
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let value = set_session("abc", true).unwrap();
        let value = value.to_str().unwrap();
        assert!(value.starts_with("lastseen_session=abc;"));
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(value.contains(part), "{value} lacks {part}");
        }
        let plain = set_session("abc", false).unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
        assert!(clear_session(false).to_str().unwrap().contains("Max-Age=0"));
    }
}
