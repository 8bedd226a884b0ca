//! API keys, as Qdrant has them: a key for every route (`--api-key`) and a read-only key for
//! searches and facts (`--read-only-key`), sent in an `api-key` header or as
//! `Authorization: Bearer <key>`. Without keys configured, every route is open.
//!
//! Keys are compared in constant time: both sides are hashed with SHA-256 (so lengths never
//! differ) and the digests compared by folding their XOR, with no early exit, so the time
//! taken says nothing about how much of a guess was right.

use crate::api::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

type Hash = [u8; 32];

fn hash(key: &[u8]) -> Hash {
    Sha256::digest(key).into()
}

/// Equal digests, in time independent of where they differ.
fn same(a: &Hash, b: &Hash) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box: keep the optimiser from turning the fold into an early-exit compare
    std::hint::black_box(diff) == 0
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Search, `/info`, `/metrics`.
    Read,
    /// Also `/add` and `/delete`.
    Write,
}

/// The keys the server was started with (digests only).
pub(crate) struct Keys {
    write: Option<Hash>,
    read: Option<Hash>,
}

impl Keys {
    pub fn new(api_key: Option<&str>, read_only_key: Option<&str>) -> Keys {
        Keys {
            write: api_key.map(|k| hash(k.as_bytes())),
            read: read_only_key.map(|k| hash(k.as_bytes())),
        }
    }

    /// Whether any key is set (else every route is open).
    pub fn enabled(&self) -> bool {
        self.write.is_some() || self.read.is_some()
    }

    /// `Ok` if the request's key grants `need`; else the 401 (no key, or a wrong one) or 403
    /// (a read-only key on a write) to answer ([`refusal`]).
    pub fn check(&self, headers: &HeaderMap, need: Access) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(given) = presented(headers) else {
            return Err(unauthorized(
                "this server needs an API key: send it in an \"api-key\" header or as \"Authorization: Bearer <key>\"",
            ));
        };
        let given = hash(given);
        // Both compared, whatever the first gave, so the time does not tell which matched.
        let write = self.write.is_some_and(|k| same(&k, &given));
        let read = self.read.is_some_and(|k| same(&k, &given));
        match (write, read, need) {
            (true, _, _) | (false, true, Access::Read) => Ok(()),
            (false, true, Access::Write) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the read-only key cannot add or delete; use the API key",
            )),
            (false, false, _) => Err(unauthorized("wrong API key")),
        }
    }
}

/// The key in `api-key`, else in `Authorization: Bearer`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(k) = headers.get("api-key") {
        return Some(k.as_bytes());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = b"bearer ";
    (auth.len() > scheme.len() && auth[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| auth[scheme.len()..].trim_ascii())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The answer to a refused request: a 401 also names the scheme (`WWW-Authenticate`).
pub(crate) fn refusal(e: ApiError) -> Response {
    let unauthorized = e.status == StatusCode::UNAUTHORIZED;
    let mut r = e.into_response();
    if unauthorized {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(keys: &Keys, h: &HeaderMap, need: Access) -> u16 {
        match keys.check(h, need) {
            Ok(()) => 200,
            Err(e) => refusal(e).status().as_u16(),
        }
    }

    #[test]
    fn keys_grant_what_they_should_and_nothing_else() {
        let open = Keys::new(None, None);
        assert_eq!(status(&open, &HeaderMap::new(), Access::Write), 200);

        let k = Keys::new(Some("w-secret"), Some("r-secret"));
        let none = HeaderMap::new();
        let w = headers(&[("api-key", "w-secret")]);
        let r = headers(&[("authorization", "Bearer r-secret")]);
        let r_lower = headers(&[("authorization", "bearer   r-secret ")]);
        let wrong = headers(&[("api-key", "w-secre")]);
        let basic = headers(&[("authorization", "Basic dzpzZWNyZXQ=")]);
        for (h, read, write) in [
            (&none, 401, 401),
            (&w, 200, 200),
            (&r, 200, 403),
            (&r_lower, 200, 403),
            (&wrong, 401, 401),
            (&basic, 401, 401),
        ] {
            assert_eq!(status(&k, h, Access::Read), read, "{h:?}");
            assert_eq!(status(&k, h, Access::Write), write, "{h:?}");
        }
        let r401 = refusal(k.check(&none, Access::Read).unwrap_err());
        assert_eq!(r401.headers()[header::WWW_AUTHENTICATE], "Bearer");
        // only a read-only key: writes are closed to everyone holding it
        let ro = Keys::new(None, Some("r-secret"));
        assert_eq!(status(&ro, &r, Access::Read), 200);
        assert_eq!(status(&ro, &r, Access::Write), 403);
        assert_eq!(status(&ro, &none, Access::Read), 401);
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same(&hash(b"abc"), &hash(b"abc")));
        assert!(!same(&hash(b"abc"), &hash(b"abd")));
        assert!(!same(&hash(b""), &hash(b"abc")));
    }
}
