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
    fn csv_lines_count_every_line_end_and_blank_line() {
        // CRLF, a lone CR, blank lines: each row on the line an editor shows.
        let (rows, _) = parse(Format::Csv, &[b"id\r\n1\r\n\r", b"\n2\r3\n\n\n4"]);
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![2, 4, 5, 8]);
    }

    #[test]
    fn a_quoted_empty_field_is_a_row() {
        let (rows, bad) = parse(Format::Csv, &[b"name\n\"\"\nada\n"]);
        assert_eq!(
            rows,
            vec![(2, json!({"name": ""})), (3, json!({"name": "ada"}))]
        );
        assert!(bad.is_empty());
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

    /// The parsers against an oracle (the `csv` crate; `serde_json` line by
    /// line), whatever the quoting, line ends, blank lines and chunk
    /// boundaries; line numbers against the file as it was written.
    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::*;

        /// What the parser finds, comparable: each row or row error with its line.
        #[derive(Debug, PartialEq)]
        enum Found {
            Row(u64, Value),
            Bad(u64),
        }

        fn run(format: Format, bytes: &[u8], cuts: &[usize]) -> Vec<Found> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            at.extend([0, bytes.len()]);
            at.sort_unstable();
            at.dedup();
            let mut p = Parser::new(format);
            let mut items = Vec::new();
            // Chunks are never empty: an empty one means the end.
            for w in at.windows(2) {
                p.feed(&bytes[w[0]..w[1]], &mut items);
            }
            p.feed(&[], &mut items);
            items
                .into_iter()
                .map(|i| match i {
                    Item::Row(r) => Found::Row(r.line, r.value),
                    Item::Bad(e) => Found::Bad(e.line),
                })
                .collect()
        }

        /// Lines before `offset`: `\n`, `\r\n` and a lone `\r` each end one,
        /// as an editor shows the file.
        fn line_at(bytes: &[u8], offset: usize) -> u64 {
            let before = &bytes[..offset];
            let crs = before.iter().filter(|b| **b == b'\r').count();
            let lfs = before
                .iter()
                .enumerate()
                .filter(|(i, b)| **b == b'\n' && (*i == 0 || before[i - 1] != b'\r'))
                .count();
            (crs + lfs) as u64 + 1
        }

        fn cuts() -> impl Strategy<Value = Vec<usize>> {
            prop::collection::vec(any::<usize>(), 0..12)
        }

        // --- CSV

        /// A field's bytes: separators, quotes, line ends and non-UTF-8 among
        /// plain text.
        fn field() -> impl Strategy<Value = Vec<u8>> {
            let pieces: Vec<&[u8]> = vec![
                b"a",
                b"b",
                b"7",
                b" ",
                b",",
                b"\"",
                b"\r",
                b"\n",
                b"\r\n",
                "\u{e9}".as_bytes(),
                b"\xff",
            ];
            prop::collection::vec(prop::sample::select(pieces), 0..5).prop_map(|p| p.concat())
        }

        #[derive(Debug, Clone)]
        struct CsvRecord {
            fields: Vec<Vec<u8>>,
            /// Quote the fields that need no quotes too.
            quote_all: Vec<bool>,
            /// Blank lines before it.
            blank_before: Vec<&'static [u8]>,
            end: &'static [u8],
        }

        fn terminator() -> impl Strategy<Value = &'static [u8]> {
            prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r"])
        }

        fn record(width: usize) -> impl Strategy<Value = CsvRecord> {
            // Mostly as wide as the header, sometimes not.
            let n = prop_oneof![4 => Just(width), 1 => 1..5usize];
            n.prop_flat_map(|n| {
                (
                    prop::collection::vec(field(), n),
                    prop::collection::vec(any::<bool>(), n),
                    prop::collection::vec(terminator(), 0..3),
                    terminator(),
                )
            })
            .prop_map(|(fields, quote_all, blank_before, end)| CsvRecord {
                fields,
                quote_all,
                blank_before,
                end,
            })
        }

        /// A header row and rows, the last maybe without its line end.
        fn csv_file() -> impl Strategy<Value = (Vec<CsvRecord>, bool)> {
            (1..5usize)
                .prop_flat_map(|width| {
                    (
                        record(width).prop_map(move |mut h| {
                            h.fields.resize(width, b"h".to_vec());
                            h.quote_all.resize(width, false);
                            h
                        }),
                        prop::collection::vec(record(width), 0..8),
                        any::<bool>(),
                    )
                })
                .prop_map(|(header, mut rows, last_end)| {
                    rows.insert(0, header);
                    (rows, last_end)
                })
        }

        /// The file's bytes, and where each record starts.
        fn write_csv(records: &[CsvRecord], last_end: bool) -> (Vec<u8>, Vec<usize>) {
            let (mut out, mut starts) = (Vec::new(), Vec::new());
            for (i, r) in records.iter().enumerate() {
                for blank in &r.blank_before {
                    // A `\n` right after a `\r` ends no line of its own.
                    if !(out.last() == Some(&b'\r') && blank[0] == b'\n') {
                        out.extend_from_slice(blank);
                    }
                }
                // Likewise a record cannot start with what would join the
                // previous `\r`: it starts with a field, never a line end.
                starts.push(out.len());
                let lone_empty = r.fields.len() == 1 && r.fields[0].is_empty();
                for (j, (f, &quote)) in r.fields.iter().zip(&r.quote_all).enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    // An empty lone field unquoted would be a blank line.
                    let needs = lone_empty || f.iter().any(|b| b",\"\r\n".contains(b));
                    if quote || needs {
                        out.push(b'"');
                        for &b in f {
                            if b == b'"' {
                                out.push(b'"');
                            }
                            out.push(b);
                        }
                        out.push(b'"');
                    } else {
                        out.extend_from_slice(f);
                    }
                }
                if i + 1 < records.len() || last_end {
                    out.extend_from_slice(r.end);
                }
            }
            (out, starts)
        }

        /// What the parser must find: each row keyed by the header's names
        /// (trimmed), or an error where it has another width or is not UTF-8.
        fn expected_csv(records: &[Vec<Vec<u8>>], lines: &[u64]) -> Vec<Found> {
            let names: Vec<String> = records[0]
                .iter()
                .map(|n| String::from_utf8_lossy(n).trim().to_owned())
                .collect();
            records[1..]
                .iter()
                .zip(&lines[1..])
                .map(|(r, &line)| {
                    if r.len() != names.len() {
                        return Found::Bad(line);
                    }
                    let mut row = Map::new();
                    for (name, v) in names.iter().zip(r) {
                        match std::str::from_utf8(v) {
                            Ok(v) => row.insert(name.clone(), Value::String(v.to_owned())),
                            Err(_) => return Found::Bad(line),
                        };
                    }
                    Found::Row(line, Value::Object(row))
                })
                .collect()
        }

        // --- NDJSON

        #[derive(Debug, Clone)]
        enum NdLine {
            Object(Value, bool),
            Blank(&'static str),
            NotAnObject(&'static str),
            Broken(&'static str),
            NotUtf8,
        }

        fn nd_line() -> impl Strategy<Value = NdLine> {
            let text = r#"[a{}\[\]":,\\ \x{e9}\x{2028}]{0,6}"#;
            let object = prop::collection::btree_map(
                text,
                prop_oneof![
                    text.prop_map(Value::String),
                    any::<i32>().prop_map(Value::from),
                    Just(Value::Null),
                    prop::collection::vec(text.prop_map(Value::String), 0..3)
                        .prop_map(Value::Array),
                ],
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect()));
            prop_oneof![
                6 => (object, any::<bool>()).prop_map(|(v, spaced)| NdLine::Object(v, spaced)),
                1 => prop::sample::select(vec!["", " ", "\t", "  \t "]).prop_map(NdLine::Blank),
                1 => prop::sample::select(vec!["[1]", "3", "\"{}\"", "null", " [{}] "]).prop_map(NdLine::NotAnObject),
                1 => prop::sample::select(vec!["{", "{\"a\":}", "}{", "{\"a\":1}}", "{'a':1}", "{\"a\":1} x"]).prop_map(NdLine::Broken),
                1 => Just(NdLine::NotUtf8),
            ]
        }

        fn write_ndjson(lines: &[(NdLine, &'static [u8])], last_end: bool) -> Vec<u8> {
            let mut out = Vec::new();
            for (i, (line, end)) in lines.iter().enumerate() {
                match line {
                    NdLine::Object(v, false) => out.extend(serde_json::to_vec(v).unwrap()),
                    NdLine::Object(v, true) => out.extend(
                        format!(
                            " \t{}\t ",
                            serde_json::to_string_pretty(v).unwrap().replace('\n', " ")
                        )
                        .bytes(),
                    ),
                    NdLine::Blank(s) | NdLine::NotAnObject(s) | NdLine::Broken(s) => {
                        out.extend(s.bytes())
                    }
                    NdLine::NotUtf8 => out.extend(b"{\"a\":\"\xff\"}"),
                }
                if i + 1 < lines.len() || last_end {
                    out.extend_from_slice(end);
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn csv_rows_match_the_csv_crate_wherever_the_chunks_break(
                (records, last_end) in csv_file(),
                cuts in cuts(),
            ) {
                let (bytes, starts) = write_csv(&records, last_end);
                // The oracle reads what was written: the same records.
                let oracle: Vec<Vec<Vec<u8>>> = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(&bytes[..])
                    .into_byte_records()
                    .map(|r| r.unwrap().iter().map(<[u8]>::to_vec).collect())
                    .collect();
                let written: Vec<Vec<Vec<u8>>> = records.iter().map(|r| r.fields.clone()).collect();
                prop_assert_eq!(&oracle, &written, "the csv crate reads {:?} otherwise", String::from_utf8_lossy(&bytes));
                let lines: Vec<u64> = starts.iter().map(|&s| line_at(&bytes, s)).collect();
                let found = run(Format::Csv, &bytes, &cuts);
                prop_assert_eq!(found, expected_csv(&oracle, &lines), "in {:?}", String::from_utf8_lossy(&bytes));
            }

            /// The import resumes after the checkpoint's line: every row's
            /// line must be later than the one before, whatever the line ends.
            #[test]
            fn csv_lines_only_go_up((records, last_end) in csv_file(), cuts in cuts()) {
                let (bytes, _) = write_csv(&records, last_end);
                let lines: Vec<u64> = run(Format::Csv, &bytes, &cuts)
                    .iter()
                    .map(|f| match f { Found::Row(l, _) | Found::Bad(l) => *l })
                    .collect();
                prop_assert!(lines.windows(2).all(|w| w[0] < w[1]), "{:?}", lines);
            }

            #[test]
            fn ndjson_lines_match_serde_json_wherever_the_chunks_break(
                lines in prop::collection::vec((nd_line(), prop::sample::select(vec![&b"\n"[..], b"\r\n"])), 0..10),
                last_end in any::<bool>(),
                cuts in cuts(),
            ) {
                let bytes = write_ndjson(&lines, last_end);
                let expected: Vec<Found> = lines
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (line, _))| {
                        let n = i as u64 + 1;
                        match line {
                            NdLine::Object(v, _) => Some(Found::Row(n, v.clone())),
                            NdLine::Blank(_) => None,
                            _ => Some(Found::Bad(n)),
                        }
                    })
                    .collect();
                // The oracle agrees, line by line, on what is a row.
                for (i, text) in bytes.split(|b| *b == b'\n').enumerate() {
                    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(text) {
                        prop_assert!(expected.contains(&Found::Row(i as u64 + 1, v)));
                    }
                }
                prop_assert_eq!(run(Format::Ndjson, &bytes, &cuts), expected);
            }
        }
    }
}
