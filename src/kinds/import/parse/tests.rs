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
                prop::collection::vec(text.prop_map(Value::String), 0..3).prop_map(Value::Array),
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
