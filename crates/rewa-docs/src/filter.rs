//! The filter language: Qdrant's JSON filter over stored fields, checked against the fields
//! the index holds, and translated into a tantivy query.
//!
//! ```json
//! {"must": [{"key": "year", "range": {"gte": 2020}},
//!           {"key": "source", "match": {"any": ["pubmed", "arxiv"]}}],
//!  "must_not": [{"key": "retracted", "match": {"value": true}}]}
//! ```
//!
//! A filter holds up to three clauses, ANDed: `must` (every condition holds), `should` (at
//! least one does), `must_not` (none does). A condition is a field condition or, nested, a
//! filter. Field conditions: `match.value` (equality: a string, a number or a boolean),
//! `match.any` (one of the values), `match.except` (the field is present and none of its
//! values is listed), `range` (`gt`, `gte`, `lt`, `lte`: numbers, or RFC 3339 dates for a date
//! field). A field holding a list matches when any of its values does; a row without the field
//! matches no field condition (so `must_not` keeps it). Keys of nested objects are dotted
//! paths (`meta.year`).

use crate::{Error, Kind, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use tantivy::query::{AllQuery, BooleanQuery, ExistsQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::Term;

/// A filter over stored fields (Qdrant's JSON form).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Every condition holds.
    #[serde(default)]
    pub must: Vec<Condition>,
    /// At least one condition holds (when any is given).
    #[serde(default)]
    pub should: Vec<Condition>,
    /// No condition holds.
    #[serde(default)]
    pub must_not: Vec<Condition>,
}

/// One condition of a filter: on a field, or a nested filter.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Condition {
    /// A condition on one field.
    Field(FieldCondition),
    /// A filter (its clauses combined as above).
    Nested(Filter),
}

/// `{"key": K, "match": {...}}` or `{"key": K, "range": {...}}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldCondition {
    /// The field (a dotted path into nested objects).
    pub key: String,
    /// Equality or membership.
    #[serde(rename = "match")]
    pub matches: Option<Match>,
    /// Bounds.
    pub range: Option<Range>,
}

/// `{"value": V}`, `{"any": [V, ...]}` or `{"except": [V, ...]}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Match {
    /// Equal to this.
    Value(Scalar),
    /// Equal to one of these.
    Any(Vec<Scalar>),
    /// Present and equal to none of these.
    Except(Vec<Scalar>),
}

/// A value to compare a field with.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    /// true or false.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string (or an RFC 3339 date, for a date field).
    Str(String),
}

/// Range bounds; at least one.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Greater than.
    pub gt: Option<Scalar>,
    /// Greater than or equal.
    pub gte: Option<Scalar>,
    /// Less than.
    pub lt: Option<Scalar>,
    /// Less than or equal.
    pub lte: Option<Scalar>,
}

impl std::str::FromStr for Filter {
    type Err = Error;
    /// Parses a filter's JSON text, naming what is wrong.
    fn from_str(s: &str) -> Result<Filter> {
        let v: serde_json::Value = serde_json::from_str(s)
            .map_err(|e| Error::Filter(format!("the filter is not JSON: {e}")))?;
        Filter::from_json(&v)
    }
}

impl Filter {
    /// A filter from a JSON value, naming what is wrong (a condition that is neither a field
    /// condition nor a filter is described by its keys).
    pub fn from_json(v: &serde_json::Value) -> Result<Filter> {
        check_shape(v, "filter")?;
        serde_json::from_value(v.clone()).map_err(|e| Error::Filter(format!("bad filter: {e}")))
    }

    /// Whether the filter has no condition (it allows every row).
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    /// Fails unless every key is a field the index holds and every value fits its kind.
    pub fn check(&self, fields: &BTreeMap<String, BTreeSet<Kind>>) -> Result<()> {
        for c in self.must.iter().chain(&self.should).chain(&self.must_not) {
            match c {
                Condition::Nested(f) => f.check(fields)?,
                Condition::Field(fc) => fc.check(fields)?,
            }
        }
        Ok(())
    }

    /// The tantivy query matching the rows this filter allows (`f`: the JSON field).
    pub(crate) fn to_query(
        &self,
        f: Field,
        fields: &BTreeMap<String, BTreeSet<Kind>>,
    ) -> Box<dyn Query> {
        let q = |c: &Condition| -> Box<dyn Query> {
            match c {
                Condition::Nested(n) => n.to_query(f, fields),
                Condition::Field(fc) => fc.to_query(f, fields),
            }
        };
        let mut cl: Vec<(Occur, Box<dyn Query>)> =
            self.must.iter().map(|c| (Occur::Must, q(c))).collect();
        if !self.should.is_empty() {
            // at least one: a Boolean of Shoulds, itself required
            let any = self.should.iter().map(|c| (Occur::Should, q(c))).collect();
            cl.push((Occur::Must, Box::new(BooleanQuery::new(any))));
        }
        cl.extend(self.must_not.iter().map(|c| (Occur::MustNot, q(c))));
        // only exclusions match nothing in tantivy: exclude them from every row
        if cl.iter().all(|(o, _)| *o == Occur::MustNot) {
            cl.push((Occur::Must, Box::new(AllQuery)));
        }
        Box::new(BooleanQuery::new(cl))
    }
}

/// Structural errors serde's untagged enums would only call "did not match any variant".
fn check_shape(v: &serde_json::Value, at: &str) -> Result<()> {
    let Some(o) = v.as_object() else {
        return Err(Error::Filter(format!(
            "{at}: expected a JSON object, got {v}"
        )));
    };
    for (k, val) in o {
        match k.as_str() {
            "must" | "should" | "must_not" => {
                let Some(list) = val.as_array() else {
                    return Err(Error::Filter(format!(
                        "{at}.{k}: expected a list of conditions"
                    )));
                };
                for (i, c) in list.iter().enumerate() {
                    let here = format!("{at}.{k}[{i}]");
                    let Some(co) = c.as_object() else {
                        return Err(Error::Filter(format!(
                            "{here}: expected an object, got {c}"
                        )));
                    };
                    if co.contains_key("key") {
                        check_condition(co, &here)?;
                    } else {
                        check_shape(c, &here)?;
                    }
                }
            }
            "key" | "match" | "range" => {
                return Err(Error::Filter(format!(
                    "{at}: a field condition must sit in a clause: {{\"must\": [{{\"key\": ..}}]}}"
                )))
            }
            other => {
                return Err(Error::Filter(format!(
                    "{at}: unknown clause {other:?} (supported: must, should, must_not)"
                )))
            }
        }
    }
    Ok(())
}

fn check_condition(c: &serde_json::Map<String, serde_json::Value>, at: &str) -> Result<()> {
    for k in c.keys() {
        if !matches!(k.as_str(), "key" | "match" | "range") {
            return Err(Error::Filter(format!(
                "{at}: unsupported condition {k:?} (supported: match, range)"
            )));
        }
    }
    if !c["key"].is_string() {
        return Err(Error::Filter(format!("{at}: \"key\" must be a string")));
    }
    match (c.get("match"), c.get("range")) {
        (Some(_), Some(_)) | (None, None) => Err(Error::Filter(format!(
            "{at}: give exactly one of \"match\" and \"range\""
        ))),
        (Some(m), None) => {
            let ok = m.as_object().is_some_and(|o| {
                o.len() == 1
                    && match o.iter().next() {
                        Some((k, v)) if k == "value" => {
                            !v.is_array() && !v.is_object() && !v.is_null()
                        }
                        Some((k, v)) if k == "any" || k == "except" => v.is_array(),
                        _ => false,
                    }
            });
            if ok {
                Ok(())
            } else {
                Err(Error::Filter(format!(
                    "{at}: \"match\" takes {{\"value\": V}}, {{\"any\": [V, ..]}} or {{\"except\": [V, ..]}} (V a string, number or boolean), got {m}"
                )))
            }
        }
        (None, Some(r)) => {
            let ok = r.as_object().is_some_and(|o| {
                !o.is_empty()
                    && o.keys()
                        .all(|k| matches!(k.as_str(), "gt" | "gte" | "lt" | "lte"))
            });
            if ok {
                Ok(())
            } else {
                Err(Error::Filter(format!(
                    "{at}: \"range\" takes one or more of gt, gte, lt, lte, got {r}"
                )))
            }
        }
    }
}

impl FieldCondition {
    fn check(&self, fields: &BTreeMap<String, BTreeSet<Kind>>) -> Result<()> {
        let Some(kinds) = fields.get(&self.key) else {
            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
            return Err(Error::Filter(format!(
                "unknown field {:?} (the index's fields: {})",
                self.key,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if kinds.iter().all(|k| *k == Kind::Text) {
            return Err(Error::Filter(format!(
                "field {:?} holds long texts (over {} bytes), which filters do not match: search them with BM25 (mode bm25)",
                self.key,
                crate::MAX_KEYWORD
            )));
        }
        let fits = |v: &Scalar| -> Result<()> {
            let ok = match v {
                Scalar::Bool(_) => kinds.contains(&Kind::Bool),
                Scalar::Number(_) => kinds.contains(&Kind::Number),
                Scalar::Str(s) => {
                    kinds.contains(&Kind::String)
                        || (kinds.contains(&Kind::Date) && date(s).is_some())
                }
            };
            if ok {
                Ok(())
            } else {
                Err(Error::Filter(format!(
                    "field {:?} holds {}, not {}",
                    self.key,
                    kinds
                        .iter()
                        .map(Kind::name)
                        .collect::<Vec<_>>()
                        .join(" and "),
                    match v {
                        Scalar::Bool(_) => "booleans".to_string(),
                        Scalar::Number(_) => "numbers".to_string(),
                        Scalar::Str(s) => format!("strings ({s:?})"),
                    }
                )))
            }
        };
        if let Some(m) = &self.matches {
            match m {
                Match::Value(v) => fits(v)?,
                Match::Any(vs) | Match::Except(vs) => vs.iter().try_for_each(fits)?,
            }
        }
        if let Some(r) = &self.range {
            let bounds: Vec<&Scalar> = [&r.gt, &r.gte, &r.lt, &r.lte]
                .into_iter()
                .flatten()
                .collect();
            if bounds.is_empty() {
                return Err(Error::Filter(format!(
                    "range on field {:?}: give at least one of gt, gte, lt, lte (not null)",
                    self.key
                )));
            }
            let dates = bounds
                .iter()
                .filter(|b| matches!(b, Scalar::Str(_)))
                .count();
            if dates != 0 && dates != bounds.len() {
                return Err(Error::Filter(format!(
                    "range on field {:?}: bounds must be all numbers or all dates",
                    self.key
                )));
            }
            for b in bounds {
                let ok = match b {
                    Scalar::Number(_) => kinds.contains(&Kind::Number),
                    Scalar::Str(s) => kinds.contains(&Kind::Date) && date(s).is_some(),
                    Scalar::Bool(_) => false,
                };
                if !ok {
                    return Err(Error::Filter(format!(
                        "range on field {:?} (which holds {}): bounds must be numbers for a number field or RFC 3339 dates for a date field",
                        self.key,
                        kinds.iter().map(Kind::name).collect::<Vec<_>>().join(" and ")
                    )));
                }
            }
        }
        Ok(())
    }

    fn to_query(&self, f: Field, fields: &BTreeMap<String, BTreeSet<Kind>>) -> Box<dyn Query> {
        let kinds = fields.get(&self.key);
        let term = |v: &Scalar| -> Term {
            let mut t = Term::from_field_json_path(f, &self.key, false);
            match v {
                Scalar::Bool(b) => t.append_type_and_fast_value(*b),
                Scalar::Number(x) => t.append_type_and_fast_value(*x),
                Scalar::Str(s) => match date(s) {
                    // tantivy keeps dates to the second
                    Some(d) if kinds.is_some_and(|k| k.contains(&Kind::Date)) => t
                        .append_type_and_fast_value(
                            d.truncate(tantivy::schema::DateTimePrecision::Seconds),
                        ),
                    _ => t.append_type_and_str(s),
                },
            }
            t
        };
        // numbers compare through the field's fast column ([v, v]): it holds what the
        // inverted index may have stored under another numeric type
        let eq = |v: &Scalar| -> Box<dyn Query> {
            match v {
                Scalar::Number(_) => Box::new(RangeQuery::new(
                    Bound::Included(term(v)),
                    Bound::Included(term(v)),
                )),
                _ => Box::new(TermQuery::new(term(v), IndexRecordOption::Basic)),
            }
        };
        let any = |vs: &[Scalar]| -> Box<dyn Query> {
            Box::new(BooleanQuery::new(
                vs.iter().map(|v| (Occur::Should, eq(v))).collect(),
            ))
        };
        let mut parts: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if let Some(m) = &self.matches {
            match m {
                Match::Value(v) => parts.push((Occur::Must, eq(v))),
                Match::Any(vs) => parts.push((Occur::Must, any(vs))),
                Match::Except(vs) => {
                    parts.push((
                        Occur::Must,
                        Box::new(ExistsQuery::new(format!("f.{}", self.key), false)),
                    ));
                    parts.push((Occur::MustNot, any(vs)));
                }
            }
        }
        if let Some(r) = &self.range {
            let lo = match (&r.gt, &r.gte) {
                (Some(a), Some(b)) => tighter_lo(a, b).map_or(Bound::Unbounded, |(v, incl)| {
                    if incl {
                        Bound::Included(term(v))
                    } else {
                        Bound::Excluded(term(v))
                    }
                }),
                (Some(a), None) => Bound::Excluded(term(a)),
                (None, Some(b)) => Bound::Included(term(b)),
                (None, None) => Bound::Unbounded,
            };
            let hi = match (&r.lt, &r.lte) {
                (Some(a), Some(b)) => tighter_hi(a, b).map_or(Bound::Unbounded, |(v, incl)| {
                    if incl {
                        Bound::Included(term(v))
                    } else {
                        Bound::Excluded(term(v))
                    }
                }),
                (Some(a), None) => Bound::Excluded(term(a)),
                (None, Some(b)) => Bound::Included(term(b)),
                (None, None) => Bound::Unbounded,
            };
            parts.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
        }
        if parts.len() == 1 && parts[0].0 == Occur::Must {
            return parts.pop().expect("one").1;
        }
        Box::new(BooleanQuery::new(parts))
    }
}

/// Of `gt: a` and `gte: b`, the tighter lower bound (`(value, inclusive)`).
fn tighter_lo<'a>(gt: &'a Scalar, gte: &'a Scalar) -> Option<(&'a Scalar, bool)> {
    match (num(gt), num(gte)) {
        (Some(a), Some(b)) if b > a => Some((gte, true)),
        _ => Some((gt, false)),
    }
}

/// Of `lt: a` and `lte: b`, the tighter upper bound.
fn tighter_hi<'a>(lt: &'a Scalar, lte: &'a Scalar) -> Option<(&'a Scalar, bool)> {
    match (num(lt), num(lte)) {
        (Some(a), Some(b)) if b < a => Some((lte, true)),
        _ => Some((lt, false)),
    }
}

fn num(s: &Scalar) -> Option<f64> {
    match s {
        Scalar::Number(x) => Some(*x),
        Scalar::Str(s) => date(s).map(|d| d.into_timestamp_nanos() as f64),
        Scalar::Bool(_) => None,
    }
}

/// A string tantivy reads as a date (RFC 3339), as it does when indexing a JSON string.
pub(crate) fn date(s: &str) -> Option<tantivy::DateTime> {
    use tantivy::time::format_description::well_known::Rfc3339;
    let dt = tantivy::time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    tantivy::DateTime::try_from_utc(dt.to_offset(tantivy::time::UtcOffset::UTC))
}
