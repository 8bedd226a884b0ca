//! Request and answer bodies, and the one mapping from errors to HTTP statuses.
//!
//! Bodies are parsed here from bytes with serde_json (not axum's extractors), so every
//! rejection is a JSON `{"error": ..}` with our wording. Rows of vectors go straight into one
//! flat buffer (no `Vec<Vec<f32>>`); the finite check and normalisation stay where they are
//! for every front end, in [`rewa::Metric::prepare_owned`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// An error answer: a status and the message sent as `{"error": message}`.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, in words.
    pub message: String,
}

impl ApiError {
    /// An answer with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400: the request's input is at fault.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    /// 500: the server is at fault.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// 500 for a caught panic, with its message when it has one.
    pub fn panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        ApiError::internal(format!("internal error (panic: {what})"))
    }
}

/// The library's errors: the caller's input (wrong dimension, NaN, k = 0, a bad pipeline)
/// is a 400; another writer holding the index too long a 503; anything else (I/O, a corrupt
/// file) a 500.
impl From<rewa_embed::Error> for ApiError {
    fn from(e: rewa_embed::Error) -> Self {
        match e {
            rewa_embed::Error::InvalidInput(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<rewa::Error> for ApiError {
    fn from(e: rewa::Error) -> Self {
        let status = if e.is_input_error() {
            StatusCode::BAD_REQUEST
        } else if matches!(e, rewa::Error::Locked { .. }) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e.to_string())
    }
}

/// A bad filter, mode or record is the caller's (400); the store failing is a 500.
impl From<rewa_docs::Error> for ApiError {
    fn from(e: rewa_docs::Error) -> Self {
        match e {
            rewa_docs::Error::Filter(_) | rewa_docs::Error::Invalid(_) => {
                ApiError::bad_request(e.to_string())
            }
            rewa_docs::Error::Rewa(r) => r.into(),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Parses a JSON request body; any failure (syntax, a missing or unknown field, a wrong
/// type, ragged rows) is a 400 naming serde_json's position.
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// `POST /search`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchRequest {
    /// Query vectors; or `texts`, embedded with the server's `--model`.
    #[serde(default)]
    pub vectors: Option<Rows>,
    /// Query texts (a server started with `--model`).
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    #[serde(default = "default_k")]
    pub k: usize,
    /// Overrides the index's default pipeline, as `rewa search --pipeline`.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Only rows whose stored fields pass this filter (Qdrant's JSON filter).
    #[serde(default)]
    pub filter: Option<serde_json::Value>,
    /// `"dense"` (default), `"bm25"` or `"hybrid"` (the last two need `texts`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Hybrid: `"weighted:ALPHA"` (default `"weighted:0.5"`) or `"rrf:K"`.
    #[serde(default)]
    pub fusion: Option<String>,
    /// Stored fields to return with each hit (`["*"]`: all).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

fn default_k() -> usize {
    rewa::SearchParams::default().k
}

/// `POST /add`: vectors, or texts (embedded with the server's model) with their corpus ids.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddRequest {
    #[serde(default)]
    pub vectors: Option<Rows>,
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// The texts' corpus ids (needed by an index built from text), one per text.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Stored fields, one JSON object per vector or text (texts without them are stored as
    /// `{"text": ..}` in an index with documents).
    #[serde(default)]
    pub fields: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
}

/// `POST /delete`: row ids, or corpus ids for an index built from text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteRequest {
    #[serde(default)]
    pub ids: Option<Vec<u32>>,
    #[serde(default)]
    pub doc_ids: Option<Vec<String>>,
}

/// Newly deleted ids (already deleted ones count 0) and the vectors left.
#[derive(Serialize)]
pub(crate) struct DeleteResponse {
    pub deleted: usize,
    pub count: usize,
}

/// One hit as users see it: `score` is [`rewa::Metric::score`] of the distance, the value
/// `rewa search` prints.
#[derive(Serialize)]
pub(crate) struct HitOut {
    pub id: u32,
    pub score: f32,
    /// The corpus id of the row, for an index built from text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_id: Option<String>,
    /// The stored fields asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
pub(crate) struct SearchResponse {
    pub results: Vec<Vec<HitOut>>,
    /// From the request's arrival to its answer being ready: reading, parsing, searching.
    pub took_ms: f64,
}

#[derive(Serialize)]
pub(crate) struct AddResponse {
    pub count: usize,
    pub first_id: usize,
}

/// `[[f32, ..], ..]` read into one row-major buffer; rows must share a length.
pub(crate) struct Rows {
    n_rows: usize,
    dim: usize,
    data: Vec<f32>,
}

impl Rows {
    /// Rows read.
    pub fn len(&self) -> usize {
        self.n_rows
    }
    /// The rows as [`rewa::Vectors`]; none at all, or rows of no values, are refused.
    pub fn into_vectors(self) -> rewa::Result<rewa::Vectors> {
        if self.n_rows == 0 {
            return Err(rewa::Error::InvalidInput(
                "\"vectors\" holds zero vectors".into(),
            ));
        }
        rewa::Vectors::new(self.dim, self.data)
    }
}

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(RowsVisitor)
    }
}

struct RowsVisitor;

impl<'de> Visitor<'de> for RowsVisitor {
    type Value = Rows;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of vectors, each an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
        let mut rows = Rows {
            n_rows: 0,
            dim: 0,
            data: Vec::new(),
        };
        while let Some(n) = seq.next_element_seed(Row(&mut rows.data))? {
            if rows.n_rows == 0 {
                rows.dim = n;
            } else if n != rows.dim {
                let e = rewa::Error::DimMismatch {
                    expected: rows.dim,
                    got: n,
                };
                return Err(A::Error::custom(format!("vector {}: {e}", rows.n_rows)));
            }
            rows.n_rows += 1;
        }
        Ok(rows)
    }
}

/// Appends one row's numbers to the flat buffer; yields how many there were.
struct Row<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a vector: an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let start = self.0.len();
        // A number beyond f32's range becomes infinity here, which the library's input check
        // then refuses like any other non-finite value.
        while let Some(x) = seq.next_element::<f32>()? {
            self.0.push(x);
        }
        Ok(self.0.len() - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(json: &str) -> Result<rewa::Vectors, String> {
        let r: AddRequest = parse(json.as_bytes()).map_err(|e| e.message)?;
        let v = r.vectors.ok_or("no vectors")?;
        v.into_vectors().map_err(|e| e.to_string())
    }

    #[test]
    fn rows_parse_flat_and_refuse_ragged_empty_and_odd_values() {
        let v = rows(r#"{"vectors": [[1, 2.5], [3, -4]]}"#).unwrap();
        assert_eq!((v.dim(), v.as_slice()), (2, &[1.0, 2.5, 3.0, -4.0][..]));
        let e = rows(r#"{"vectors": [[1, 2], [3]]}"#).unwrap_err();
        assert!(
            e.contains("vector 1: dimension mismatch: expected 2, got 1"),
            "{e}"
        );
        assert!(rows(r#"{"vectors": []}"#)
            .unwrap_err()
            .contains("zero vectors"));
        assert!(rows(r#"{"vectors": [[]]}"#)
            .unwrap_err()
            .contains("dimension must be at least 1"));
        assert!(rows(r#"{"vectors": [[1, null]]}"#)
            .unwrap_err()
            .contains("bad JSON body"));
        assert!(rows(r#"{"vector": [[1]]}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(rows(r#"{}"#).unwrap_err().contains("no vectors"));
        // beyond f32: infinity, for the library's finite check to refuse
        let v = rows(r#"{"vectors": [[1e39]]}"#).unwrap();
        assert!(rewa::Metric::Ip.prepare_owned(v).is_err());
    }

    #[test]
    fn library_errors_map_to_statuses() {
        let s = |e: rewa::Error| ApiError::from(e).status;
        assert_eq!(
            s(rewa::Error::DimMismatch {
                expected: 1,
                got: 2
            }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            s(rewa::Error::InvalidInput("k".into())),
            StatusCode::BAD_REQUEST
        );
        let locked = rewa::Error::Locked {
            path: "x".into(),
            pid: 1,
            waited_secs: 0,
        };
        assert_eq!(s(locked), StatusCode::SERVICE_UNAVAILABLE);
        let io = rewa::Error::Io {
            path: "x".into(),
            source: std::io::Error::other("disk"),
        };
        assert_eq!(s(io), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
