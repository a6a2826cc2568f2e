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
        /// Line breaks consumed so far: `\n`, `\r\n` or a lone `\r`, each
        /// one, as the reader takes each for a record's end.
        breaks: u64,
        /// The last byte consumed was `\r` (a `\n` right after it ends no
        /// further line).
        after_cr: bool,
        /// The line the current record began on, once its first byte is in:
        /// blank lines before a record are skipped, not part of it.
        record_line: Option<u64>,
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
                breaks: 0,
                after_cr: false,
                record_line: None,
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
                breaks,
                after_cr,
                record_line,
            } => {
                let mut pos = 0;
                loop {
                    let (res, nin, nout, nend) = reader.read_record(
                        &input[pos..],
                        &mut out[*out_len..],
                        &mut ends[*ends_len..],
                    );
                    for &b in &input[pos..pos + nin] {
                        if record_line.is_none() && b != b'\r' && b != b'\n' {
                            *record_line = Some(*breaks + 1);
                        }
                        if b == b'\r' || (b == b'\n' && !*after_cr) {
                            *breaks += 1;
                        }
                        *after_cr = b == b'\r';
                    }
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
                            let line = record_line.take().unwrap_or(*breaks + 1);
                            match header {
                                None => {
                                    *header = Some(
                                        fields_
                                            .iter()
                                            .map(|f| String::from_utf8_lossy(f).trim().to_owned())
                                            .collect(),
                                    );
                                }
                                Some(names) => csv_row(line, names, &fields_, items),
                            }
                            *out_len = 0;
                            *ends_len = 0;
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
mod tests;
