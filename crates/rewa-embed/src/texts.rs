//! Reading texts to embed, with their ids, from `.jsonl`, `.txt` or `.tsv` files.
//!
//! | extension | one line is | id | text |
//! |---|---|---|---|
//! | `.jsonl` | a JSON object | `_id` (string or number) in every record, or in none (then the row number) | BEIR layout `(title + " " + text).strip()`, or the field [`TextField::Named`] names |
//! | `.txt` | one text | the row number | the line |
//! | `.tsv` | `id<TAB>text` or `id<TAB>title<TAB>text` (BEIR layout), no header | the first column | as said |
//! | `.tsv` with a named field | a header line, then rows | the `_id` or `id` column, else the row number | the named column |
//!
//! Row numbers count from 0 (rewa's ids are insertion positions); messages name 1-based lines.
//! A `.jsonl` whose first record has an `_id` must give one in every record, and one whose first
//! record has none must give none: a row number standing in for a missing `_id` could equal
//! another record's real one. A UTF-8 byte order mark at the start of a file is skipped.
//! An empty text, invalid UTF-8, a line that is not JSON or lacks the field is an error naming
//! the file and the line. [`TextReader`] yields one record at a time (a caller that must check
//! a whole file before it starts work reads it twice, as `rewa embed` does); [`read_texts`]
//! collects them all.

use crate::error::{Error, Result};
use std::path::Path;

/// Which field of a record holds the text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TextField {
    /// BEIR's layout: `(title + " " + text).strip()`, `title` optional.
    #[default]
    Beir,
    /// One named field (a JSON key, or a `.tsv` header's column).
    Named(String),
}

/// Texts and their ids, in file order.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    /// One id per text.
    pub ids: Vec<String>,
    /// The texts.
    pub texts: Vec<String>,
}

impl Texts {
    /// Number of texts.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// The file format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    Txt,
    Tsv,
}

fn format_of(path: &Path, field: &TextField) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("jsonl") => Format::Jsonl,
        Some("txt") => Format::Txt,
        Some("tsv") => Format::Tsv,
        _ => {
            return Err(Error::InvalidInput(format!(
                "{}: unknown text format (expected .jsonl, .txt or .tsv)",
                path.display()
            )))
        }
    };
    if format == Format::Txt && *field != TextField::Beir {
        return Err(Error::InvalidInput(format!(
            "{}: a .txt file has no fields (one text per line); drop the field name",
            path.display()
        )));
    }
    Ok(format)
}

/// Reads the texts of `path` (format by extension, see the module doc), all at once.
pub fn read_texts(path: &Path, field: &TextField) -> Result<Texts> {
    let mut out = Texts::default();
    for record in TextReader::open(path, field)? {
        let (id, text) = record?;
        out.ids.push(id);
        out.texts.push(text);
    }
    Ok(out)
}

/// The records of a text file one at a time, `(id, text)`, so that a corpus of any size is
/// read in constant memory. The first bad line ends the iteration with its error.
pub struct TextReader<R> {
    reader: R,
    lines: LineParser,
    buf: Vec<u8>,
    failed: bool,
}

impl TextReader<std::io::BufReader<std::fs::File>> {
    /// Opens `path` (format by extension).
    pub fn open(path: &Path, field: &TextField) -> Result<Self> {
        let format = format_of(path, field)?;
        let f = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::with_format(
            std::io::BufReader::with_capacity(1 << 16, f),
            path,
            format,
            field,
        ))
    }
}

impl<R: std::io::BufRead> TextReader<R> {
    /// Reads records from `reader`; `path` gives the format (by extension) and names the
    /// file in messages.
    pub fn new(reader: R, path: &Path, field: &TextField) -> Result<Self> {
        let format = format_of(path, field)?;
        Ok(Self::with_format(reader, path, format, field))
    }

    fn with_format(reader: R, path: &Path, format: Format, field: &TextField) -> Self {
        TextReader {
            reader,
            lines: LineParser {
                path: path.to_path_buf(),
                format,
                field: field.clone(),
                header: None,
                jsonl_ids: None,
                line_no: 0,
                row: 0,
            },
            buf: Vec::new(),
            failed: false,
        }
    }

    /// The reader, e.g. to finish a checksum it computed.
    pub fn into_inner(self) -> R {
        self.reader
    }

    fn next_record(&mut self) -> Result<Option<(String, String)>> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| Error::Io {
                    path: self.lines.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            // A final newline ends the last line; it does not start an empty one.
            let raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if let Some(record) = self.lines.parse(raw)? {
                return Ok(Some(record));
            }
        }
    }
}

impl<R: std::io::BufRead> Iterator for TextReader<R> {
    type Item = Result<(String, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Turns one line into a record (or nothing, for a `.tsv` header), counting lines and rows.
struct LineParser {
    path: std::path::PathBuf,
    format: Format,
    field: TextField,
    header: Option<Vec<String>>,
    /// `.jsonl`: whether records carry `_id` (the first record decides) and its line.
    jsonl_ids: Option<(bool, usize)>,
    line_no: usize,
    row: usize,
}

impl LineParser {
    fn parse(&mut self, raw: &[u8]) -> Result<Option<(String, String)>> {
        self.line_no += 1;
        let (path, line_no) = (&self.path, self.line_no);
        let at =
            |what: &str| Error::InvalidInput(format!("{} line {line_no}: {what}", path.display()));
        // A byte order mark (as some editors write) is not part of the first text.
        let raw = match line_no {
            1 => raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw),
            _ => raw,
        };
        let line = std::str::from_utf8(raw)
            .map_err(|e| at(&format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
        let row = self.row;
        let (id, text) = match self.format {
            Format::Txt => (row.to_string(), line.to_string()),
            Format::Jsonl => {
                if line.trim().is_empty() {
                    return Err(at("empty line"));
                }
                let (id, text) = jsonl_record(line, &self.field).map_err(|e| at(&e))?;
                match (self.jsonl_ids, &id) {
                    (None, _) => self.jsonl_ids = Some((id.is_some(), line_no)),
                    (Some((true, first)), None) => {
                        return Err(at(&format!(
                            "no \"_id\", but line {first} has one (give every record an _id, or none: then ids are row numbers)"
                        )))
                    }
                    (Some((false, first)), Some(_)) => {
                        return Err(at(&format!(
                            "an \"_id\", but line {first} has none (give every record an _id, or none: then ids are row numbers)"
                        )))
                    }
                    _ => {}
                }
                (id.unwrap_or_else(|| row.to_string()), text)
            }
            Format::Tsv => {
                let cols: Vec<&str> = line.split('\t').collect();
                match (&self.field, &self.header) {
                    (TextField::Named(_), None) => {
                        let header: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
                        check_header(&header, &self.field).map_err(|e| at(&e))?;
                        self.header = Some(header);
                        return Ok(None);
                    }
                    (TextField::Named(name), Some(h)) => {
                        if cols.len() != h.len() {
                            return Err(at(&format!(
                                "{} columns, but the header has {}",
                                cols.len(),
                                h.len()
                            )));
                        }
                        let col = |n: &str| h.iter().position(|c| c == n).map(|j| cols[j]);
                        let text = col(name).unwrap_or_default().to_string();
                        let id = col("_id")
                            .or_else(|| col("id"))
                            .map_or_else(|| row.to_string(), str::to_string);
                        (id, text)
                    }
                    (TextField::Beir, _) => match cols[..] {
                        [id, text] => (id.to_string(), text.trim().to_string()),
                        [id, title, text] => {
                            (id.to_string(), format!("{title} {text}").trim().to_string())
                        }
                        _ => {
                            return Err(at(&format!(
                                "{} columns (expected id<TAB>text or id<TAB>title<TAB>text)",
                                cols.len()
                            )))
                        }
                    },
                }
            }
        };
        if text.trim().is_empty() {
            return Err(at("empty text"));
        }
        self.row += 1;
        Ok(Some((id, text)))
    }
}

fn check_header(header: &[String], field: &TextField) -> std::result::Result<(), String> {
    if let TextField::Named(name) = field {
        if !header.iter().any(|c| c == name) {
            return Err(format!(
                "the header has no column {name:?} (columns: {})",
                header.join(", ")
            ));
        }
    }
    Ok(())
}

/// One `.jsonl` record's `_id` (if it has one) and text.
fn jsonl_record(
    line: &str,
    field: &TextField,
) -> std::result::Result<(Option<String>, String), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let id = match obj.get("_id") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(format!("_id is {other}, not a string or number")),
    };
    let string = |key: &str| -> std::result::Result<Option<&str>, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("field {key:?} is not a string")),
        }
    };
    let text = match field {
        TextField::Beir => {
            let text = string("text")?.ok_or("no field \"text\"")?;
            let title = string("title")?.unwrap_or("");
            format!("{title} {text}").trim().to_string()
        }
        TextField::Named(name) => string(name)?
            .ok_or_else(|| format!("no field {name:?}"))?
            .to_string(),
    };
    Ok((id, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], format: Format, field: &TextField, _: &Path) -> Result<Texts> {
        let name = match format {
            Format::Jsonl => "in.jsonl",
            Format::Txt => "in.txt",
            Format::Tsv => "in.tsv",
        };
        let mut out = Texts::default();
        for record in TextReader::new(bytes, Path::new(name), field)? {
            let (id, text) = record?;
            out.ids.push(id);
            out.texts.push(text);
        }
        Ok(out)
    }

    fn p(s: &str, format: Format, field: &TextField) -> Result<Texts> {
        parse(s.as_bytes(), format, field, Path::new("in"))
    }

    fn msg(r: Result<Texts>) -> String {
        match r {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn jsonl_beir_layout() {
        let t = p(
            "{\"_id\": \"4983\", \"title\": \"A \", \"text\": \"b c\"}\n{\"_id\": 7, \"text\": \" x \"}\n",
            Format::Jsonl,
            &TextField::Beir,
        )
        .unwrap();
        assert_eq!(t.ids, ["4983", "7"]);
        assert_eq!(t.texts, ["A  b c", "x"]);
        let named = TextField::Named("q".into());
        let t = p("{\"q\": \"hi\"}", Format::Jsonl, &named).unwrap();
        assert_eq!((t.ids, t.texts), (vec!["0".into()], vec!["hi".into()]));
    }

    #[test]
    fn errors_name_the_line() {
        let m = msg(p(
            "{\"text\": \"a\"}\n{\"title\": \"t\"}\n",
            Format::Jsonl,
            &TextField::Beir,
        ));
        assert!(m.contains("line 2: no field \"text\""), "{m}");
        let m = msg(p(
            "{\"text\": \"a\"}\n{\"text\": \"  \"}",
            Format::Jsonl,
            &TextField::Beir,
        ));
        assert!(m.contains("line 2: empty text"), "{m}");
        assert!(msg(p("a\n\nb\n", Format::Txt, &TextField::Beir)).contains("line 2: empty text"));
        let m = msg(parse(
            b"ok\nbad \xff\n",
            Format::Txt,
            &TextField::Beir,
            Path::new("in"),
        ));
        assert!(m.contains("line 2: invalid UTF-8 at byte 4"), "{m}");
        let m = msg(p("{\"text\": 3}", Format::Jsonl, &TextField::Beir));
        assert!(m.contains("line 1: field \"text\" is not a string"), "{m}");
        assert!(msg(p("[1]", Format::Jsonl, &TextField::Beir)).contains("not a JSON object"));
    }

    #[test]
    fn jsonl_ids_are_given_by_every_record_or_by_none() {
        let t = p(
            "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
            Format::Jsonl,
            &TextField::Beir,
        )
        .unwrap();
        assert_eq!(t.ids, ["0", "1"]);
        // Row 1's number would be "1", the real id of the first record.
        let m = msg(p(
            "{\"_id\": \"1\", \"text\": \"a\"}\n{\"_id\": \"2\", \"text\": \"b\"}\n{\"text\": \"c\"}\n",
            Format::Jsonl,
            &TextField::Beir,
        ));
        assert!(
            m.contains("in.jsonl line 3: no \"_id\", but line 1 has one"),
            "{m}"
        );
        let m = msg(p(
            "{\"text\": \"a\"}\n{\"_id\": \"0\", \"text\": \"b\"}\n",
            Format::Jsonl,
            &TextField::Beir,
        ));
        assert!(
            m.contains("in.jsonl line 2: an \"_id\", but line 1 has none"),
            "{m}"
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let bom = |s: &str| [b"\xEF\xBB\xBF".as_slice(), s.as_bytes()].concat();
        let field = TextField::Beir;
        let t = parse(
            &bom("{\"_id\": \"d1\", \"text\": \"x\"}\n"),
            Format::Jsonl,
            &field,
            Path::new("in"),
        )
        .unwrap();
        assert_eq!((t.ids, t.texts), (vec!["d1".into()], vec!["x".into()]));
        let t = parse(&bom("one\ntwo\n"), Format::Txt, &field, Path::new("in")).unwrap();
        assert_eq!(t.texts, ["one", "two"]);
        let t = parse(&bom("d1\tbody\n"), Format::Tsv, &field, Path::new("in")).unwrap();
        assert_eq!((t.ids, t.texts), (vec!["d1".into()], vec!["body".into()]));
        // Only at the start of the file.
        let m = msg(parse(
            &[b"{\"text\": \"a\"}\n".as_slice(), &bom("{\"text\": \"b\"}")].concat(),
            Format::Jsonl,
            &field,
            Path::new("in"),
        ));
        assert!(m.contains("line 2: not JSON"), "{m}");
    }

    #[test]
    fn txt_and_tsv() {
        let t = p("one\r\ntwo\n", Format::Txt, &TextField::Beir).unwrap();
        assert_eq!(
            (t.ids, t.texts),
            (
                vec!["0".into(), "1".into()],
                vec!["one".into(), "two".into()]
            )
        );
        let t = p(
            "d1\tT\tbody\nd2\tjust text\n",
            Format::Tsv,
            &TextField::Beir,
        )
        .unwrap();
        assert_eq!(t.ids, ["d1", "d2"]);
        assert_eq!(t.texts, ["T body", "just text"]);
        let named = TextField::Named("body".into());
        let t = p("id\tbody\nx\thello\n", Format::Tsv, &named).unwrap();
        assert_eq!((t.ids, t.texts), (vec!["x".into()], vec!["hello".into()]));
        assert!(msg(p("id\tother\nx\thello\n", Format::Tsv, &named)).contains("no column"));
        assert!(msg(p("a\tb\tc\td\n", Format::Tsv, &TextField::Beir)).contains("4 columns"));
        assert!(p("", Format::Txt, &TextField::Beir).unwrap().is_empty());
    }
}
