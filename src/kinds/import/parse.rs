//! Parsing an uploaded file into rows: CSV with a header row (each row an
//! object keyed by the header's names) or NDJSON (one object per line).
//!
//! The parser is fed the file a chunk at a time, as the store hands it over,
//! so it keeps what a chunk boundary cuts in half (a partial line, a CSV
//! record with a quoted newline) until the next chunk. It does no I/O and
//! knows nothing of batches or the downstream: it only turns bytes into rows
//! and row errors with their line numbers, which is what its tests check.

use serde_json::{Map, Value};

use super::{Format, RowError};

/// A row ready to send, with its line.
pub(super) struct Row {
    pub(super) line: u64,
    pub(super) value: Value,
}

/// What the parser finds, in file order.
pub(super) enum Item {
    Row(Row),
    Bad(RowError),
}

impl Item {
    pub(super) fn line(&self) -> u64 {
        match self {
            Item::Row(r) => r.line,
            Item::Bad(e) => e.line,
        }
    }
}

/// Splits the file into rows as its bytes arrive.
pub(super) enum Parser {
    Ndjson {
        partial: Vec<u8>,
        line: u64,
    },
    Csv {
        // Boxed: the CSV reader's state is large, the NDJSON one small.
        reader: Box<csv_core::Reader>,
        out: Vec<u8>,
        out_len: usize,
        ends: Vec<usize>,
        ends_len: usize,
        header: Option<Vec<String>>,
        /// Newlines consumed so far, and the line the current record began on.
        newlines: u64,
        record_line: u64,
    },
}

impl Parser {
    pub(super) fn new(format: Format) -> Parser {
        match format {
            Format::Ndjson => Parser::Ndjson {
                partial: Vec::new(),
                line: 0,
            },
            Format::Csv => Parser::Csv {
                reader: Box::new(csv_core::Reader::new()),
                out: vec![0; 4096],
                out_len: 0,
                ends: vec![0; 64],
                ends_len: 0,
                header: None,
                newlines: 0,
                record_line: 1,
            },
        }
    }

    /// Feeds `input` (empty: the end of the file); good rows and row errors
    /// are appended to `items` in file order.
    pub(super) fn feed(&mut self, input: &[u8], items: &mut Vec<Item>) {
        match self {
            Parser::Ndjson { partial, line } => {
                let mut rest = input;
                loop {
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            partial.extend_from_slice(&rest[..i]);
                            rest = &rest[i + 1..];
                            *line += 1;
                            ndjson_line(*line, partial, items);
                            partial.clear();
                        }
                        None => {
                            partial.extend_from_slice(rest);
                            break;
                        }
                    }
                }
                if input.is_empty() && !partial.is_empty() {
                    *line += 1;
                    ndjson_line(*line, partial, items);
                    partial.clear();
                }
            }
            Parser::Csv {
                reader,
                out,
                out_len,
                ends,
                ends_len,
                header,
                newlines,
                record_line,
            } => {
                let mut pos = 0;
                loop {
                    let (res, nin, nout, nend) = reader.read_record(
                        &input[pos..],
                        &mut out[*out_len..],
                        &mut ends[*ends_len..],
                    );
                    *newlines += input[pos..pos + nin]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64;
                    pos += nin;
                    *out_len += nout;
                    *ends_len += nend;
                    match res {
                        csv_core::ReadRecordResult::InputEmpty => {
                            if input.is_empty() {
                                continue; // the reader finishes the last record
                            }
                            return;
                        }
                        csv_core::ReadRecordResult::OutputFull => {
                            let n = out.len() * 2;
                            out.resize(n, 0);
                        }
                        csv_core::ReadRecordResult::OutputEndsFull => {
                            let n = ends.len() * 2;
                            ends.resize(n, 0);
                        }
                        csv_core::ReadRecordResult::Record => {
                            let mut fields_: Vec<&[u8]> = Vec::with_capacity(*ends_len);
                            let mut start = 0;
                            for &end in &ends[..*ends_len] {
                                fields_.push(&out[start..end]);
                                start = end;
                            }
                            let line = *record_line;
                            let blank = fields_.len() == 1 && fields_[0].is_empty();
                            match header {
                                None => {
                                    *header = Some(
                                        fields_
                                            .iter()
                                            .map(|f| String::from_utf8_lossy(f).trim().to_owned())
                                            .collect(),
                                    );
                                }
                                Some(_) if blank => {}
                                Some(names) => csv_row(line, names, &fields_, items),
                            }
                            *out_len = 0;
                            *ends_len = 0;
                            *record_line = *newlines + 1;
                        }
                        csv_core::ReadRecordResult::End => return,
                    }
                }
            }
        }
    }
}

fn ndjson_line(line: u64, bytes: &[u8], items: &mut Vec<Item>) {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim(),
        Err(_) => {
            items.push(Item::Bad(RowError {
                line,
                reason: "not UTF-8".to_owned(),
            }));
            return;
        }
    };
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => items.push(Item::Row(Row { line, value: v })),
        Ok(_) => items.push(Item::Bad(RowError {
            line,
            reason: "not a JSON object".to_owned(),
        })),
        Err(e) => items.push(Item::Bad(RowError {
            line,
            reason: format!("not JSON: {e}"),
        })),
    }
}

fn csv_row(line: u64, names: &[String], values: &[&[u8]], items: &mut Vec<Item>) {
    if values.len() != names.len() {
        items.push(Item::Bad(RowError {
            line,
            reason: format!(
                "{} fields where the header has {}",
                values.len(),
                names.len()
            ),
        }));
        return;
    }
    let mut obj = Map::with_capacity(names.len());
    for (name, v) in names.iter().zip(values) {
        match std::str::from_utf8(v) {
            Ok(s) => {
                obj.insert(name.clone(), Value::String(s.to_owned()));
            }
            Err(_) => {
                items.push(Item::Bad(RowError {
                    line,
                    reason: format!("field `{name}` is not UTF-8"),
                }));
                return;
            }
        }
    }
    items.push(Item::Row(Row {
        line,
        value: Value::Object(obj),
    }));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(format: Format, chunks: &[&[u8]]) -> (Vec<(u64, Value)>, Vec<RowError>) {
        let mut p = Parser::new(format);
        let mut items = Vec::new();
        for c in chunks {
            p.feed(c, &mut items);
        }
        p.feed(&[], &mut items);
        let (mut rows, mut bad) = (Vec::new(), Vec::new());
        for i in items {
            match i {
                Item::Row(r) => rows.push((r.line, r.value)),
                Item::Bad(e) => bad.push(e),
            }
        }
        (rows, bad)
    }

    #[test]
    fn csv_rows_by_header_across_chunk_boundaries_with_line_numbers() {
        let (rows, bad) = parse(
            Format::Csv,
            &[b"id,name\n1,a", b"da\n2,\"b\nc\"\n3\n4,d,x\n5,e"],
        );
        assert_eq!(
            rows,
            vec![
                (2, json!({"id": "1", "name": "ada"})),
                (3, json!({"id": "2", "name": "b\nc"})),
                (7, json!({"id": "5", "name": "e"})),
            ]
        );
        let lines: Vec<u64> = bad.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![5, 6], "{bad:?}");
    }

    #[test]
    fn ndjson_lines_and_their_errors() {
        let (rows, bad) = parse(
            Format::Ndjson,
            &[b"{\"a\":1}\n{bro", b"ken\n\n[1]\n{\"b\":2}"],
        );
        assert_eq!(rows, vec![(1, json!({"a": 1})), (5, json!({"b": 2}))]);
        let lines: Vec<u64> = bad.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4]);
    }
}
