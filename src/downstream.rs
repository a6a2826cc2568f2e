//! Named downstreams: the only places an `aggregate` job may send requests.
//!
//! A job names a downstream and a path, never a URL, so herald is no open
//! proxy: [`Downstreams::resolve`] refuses any path that could leave the
//! downstream's base URL (another host, a scheme, `..`, encoded tricks), and
//! the HTTP client follows no redirects. `HERALD_ALLOW_ANY_URL` lifts this for
//! development, and the log says so at start.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde::Deserialize;

/// One configured downstream system.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub name: String,
    pub base: Url,
    /// Sent with every request to it (an auth header, say). Never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The default per-request timeout for its sources.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct Downstreams {
    by_name: BTreeMap<String, Downstream>,
    pub allow_any_url: bool,
}

/// One entry of `HERALD_DOWNSTREAMS_FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

impl Downstreams {
    /// From `HERALD_DOWNSTREAMS` (`name=url,…`) and `HERALD_DOWNSTREAMS_FILE`
    /// (JSON: `{"name": {"url": …, "headers": {…}, "timeout_ms": …}}`).
    pub fn load(
        pairs: &[String],
        file: Option<&Path>,
        allow_any_url: bool,
    ) -> anyhow::Result<Downstreams> {
        let mut d = Downstreams {
            by_name: BTreeMap::new(),
            allow_any_url,
        };
        for pair in pairs.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let Some((name, url)) = pair.split_once('=') else {
                bail!("HERALD_DOWNSTREAMS entry {pair:?} is not name=url (e.g. crews=http://crews.internal:8081)");
            };
            d.add(name.trim(), url.trim(), BTreeMap::new(), None)?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading HERALD_DOWNSTREAMS_FILE {}", path.display()))?;
            let entries: BTreeMap<String, FileEntry> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "HERALD_DOWNSTREAMS_FILE {} is not a JSON object of {{\"name\": {{\"url\": …, \"headers\": {{…}}, \"timeout_ms\": …}}}}",
                    path.display()
                )
            })?;
            for (name, e) in entries {
                d.add(
                    &name,
                    &e.url,
                    e.headers,
                    e.timeout_ms.map(Duration::from_millis),
                )?;
            }
        }
        Ok(d)
    }

    fn add(
        &mut self,
        name: &str,
        url: &str,
        headers: BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<()> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("downstream name {name:?} must be letters, digits, '_' or '-'");
        }
        let mut base =
            Url::parse(url).with_context(|| format!("downstream {name}: {url:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            bail!("downstream {name}: {url:?} must be an http or https URL with a host");
        }
        if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
            bail!("downstream {name}: {url:?} must not carry a query, fragment or credentials (use headers)");
        }
        // Paths are appended to the base path: keep it without a trailing slash.
        let trimmed = base.path().trim_end_matches('/').to_owned();
        base.set_path(&trimmed);
        let headers = headers
            .into_iter()
            .map(|(k, v)| {
                let name_ok = HeaderName::from_bytes(k.as_bytes())
                    .with_context(|| format!("downstream {name}: bad header name {k:?}"))?;
                let mut value = HeaderValue::from_str(&v)
                    .with_context(|| format!("downstream {name}: bad value for header {k}"))?;
                value.set_sensitive(true);
                Ok((name_ok, value))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.by_name.contains_key(name) {
            bail!("downstream {name} is configured twice");
        }
        self.by_name.insert(
            name.to_owned(),
            Downstream {
                name: name.to_owned(),
                base,
                headers,
                timeout,
            },
        );
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Downstream> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The URL for `path` under downstream `name`, or why it is refused.
    pub fn resolve(&self, name: &str, path: &str) -> Result<(Url, &Downstream), String> {
        let d = self.get(name).ok_or_else(|| {
            let known: Vec<_> = self.names().collect();
            if known.is_empty() {
                "unknown downstream; none are configured (set HERALD_DOWNSTREAMS)".to_owned()
            } else {
                format!("unknown downstream; configured: {}", known.join(", "))
            }
        })?;
        check_path(path)?;
        let joined = format!("{}{}", d.base.as_str().trim_end_matches('/'), path);
        let url =
            Url::parse(&joined).map_err(|e| format!("the path does not make a valid URL: {e}"))?;
        let same_origin = url.scheme() == d.base.scheme()
            && url.host_str() == d.base.host_str()
            && url.port_or_known_default() == d.base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none();
        // An http URL's path is never empty: the root is "/".
        let base_path = d.base.path().trim_end_matches('/');
        let under_base = base_path.is_empty()
            || url.path() == base_path
            || url.path().starts_with(&format!("{base_path}/"));
        if !same_origin || !under_base {
            return Err("the path leaves the downstream's base URL".to_owned());
        }
        Ok((url, d))
    }
}

/// A path must stay under its base: absolute, no authority, no dot segments
/// (plain or percent-encoded), no backslashes or control characters.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/' (a path under the downstream, not a URL)".to_owned());
    }
    if path.starts_with("//") {
        return Err("must not start with '//' (that names another host)".to_owned());
    }
    if path.contains('\\') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must not contain backslashes, spaces or control characters".to_owned());
    }
    if path.contains("://") || path.contains('#') || path.contains('@') {
        return Err("must not contain a scheme, '#' or '@'".to_owned());
    }
    let path_part = path.split('?').next().unwrap_or_default();
    for segment in path_part.split('/') {
        let decoded = percent_decode(segment).to_ascii_lowercase();
        if decoded == "." || decoded == ".." || decoded.contains('/') || decoded.contains('\\') {
            return Err("must not contain '.' or '..' segments, plain or encoded".to_owned());
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    // Hex digits are read as bytes: the two characters after a '%' may be
    // the middle of a multi-byte character, which a `&str` slice would cut.
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let (b'%', Some(high), Some(low)) = (bytes[i], hex(i + 1), hex(i + 2)) {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Downstreams {
        Downstreams::load(
            &[
                "crews=http://crews.internal:8081/api/".to_owned(),
                "permits=https://permits.internal".to_owned(),
            ],
            None,
            false,
        )
        .unwrap()
    }

    #[test]
    fn paths_join_under_the_base() {
        let d = ds();
        let (url, _) = d.resolve("crews", "/v1/crews?day=mon").unwrap();
        assert_eq!(
            url.as_str(),
            "http://crews.internal:8081/api/v1/crews?day=mon"
        );
        let (url, _) = d.resolve("permits", "/p/1").unwrap();
        assert_eq!(url.as_str(), "https://permits.internal/p/1");
    }

    #[test]
    fn escapes_are_refused() {
        let d = ds();
        for bad in [
            "//evil.example/",
            "http://evil.example/",
            "/../etc",
            "/a/../../b",
            "/%2e%2e/secret",
            "/%2E%2e/secret",
            "/a/%2f..",
            "\\\\evil",
            "/a\\..\\b",
            "relative",
            "/@evil.example",
            "/x#frag",
            "/a/./b",
        ] {
            assert!(d.resolve("crews", bad).is_err(), "{bad} must be refused");
        }
        // A '%' before a multi-byte character once panicked the check.
        assert!(d.resolve("crews", "/%\u{800}").is_ok());
        assert!(d.resolve("crews", "/%a\u{e9}/..").is_err());
        assert!(d
            .resolve("nobody", "/x")
            .unwrap_err()
            .contains("crews, permits"));
    }

    #[test]
    fn bad_configuration_is_explained() {
        for bad in [
            "crews",
            "crews=ftp://x",
            "crews=http://x/?q=1",
            "=http://x",
            "a b=http://x",
        ] {
            assert!(
                Downstreams::load(&[bad.to_owned()], None, false).is_err(),
                "{bad}"
            );
        }
        assert!(Downstreams::load(
            &["a=http://x".to_owned(), "a=http://y".to_owned()],
            None,
            false
        )
        .is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of paths that have been used to leave a base URL, and
        /// harmless ones between them.
        fn piece() -> impl Strategy<Value = String> {
            let tricks = [
                "/",
                "//",
                "..",
                ".",
                "%2e",
                "%2E",
                "%2e%2e",
                ".%2e",
                "%2f",
                "%2F",
                "%5c",
                "%5C",
                "\\",
                "@",
                ":",
                "://",
                "http:",
                "https://evil.example",
                "evil.example",
                "?",
                "#",
                "%",
                "%a",
                "%zz",
                "%00",
                "%25",
                "%252e",
                "%3f",
                "%23",
                "%40",
                ";",
                "\t",
                "\n",
                " ",
                "\u{e9}",
                "\u{ff0e}",
                "\u{2215}",
                "~",
                "a",
                "api",
                "v1",
                "x.y",
            ];
            prop_oneof![
                4 => prop::sample::select(tricks.to_vec()).prop_map(str::to_owned),
                1 => "[a-z0-9._~-]{1,6}",
                1 => any::<char>().prop_map(String::from),
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => prop::collection::vec(piece(), 1..10).prop_map(|p| p.concat()),
                1 => prop::collection::vec(piece(), 1..10).prop_map(|p| format!("/{}", p.concat())),
                1 => any::<String>(),
            ]
        }

        /// A path a job may well use: segments of plain characters, a query.
        fn plain_path() -> impl Strategy<Value = String> {
            (
                prop::collection::vec("[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,8}", 1..5),
                proptest::option::of("[a-z]{1,5}=[a-z0-9./]{0,5}"),
            )
                .prop_map(|(segments, query)| {
                    let mut p = format!("/{}", segments.join("/"));
                    if let Some(q) = query {
                        p.push('?');
                        p.push_str(&q);
                    }
                    p
                })
        }

        fn bases() -> Vec<&'static str> {
            vec![
                "http://crews.internal:8081/api/",
                "https://permits.internal",
                "http://10.0.0.7/a/b",
            ]
        }

        fn downstreams() -> Downstreams {
            let pairs: Vec<String> = bases()
                .iter()
                .enumerate()
                .map(|(i, url)| format!("d{i}={url}"))
                .collect();
            Downstreams::load(&pairs, None, false).unwrap()
        }

        /// Where a request for `url` lands, as a server that decodes the
        /// path would see it: nowhere outside `base`.
        fn stays_under(url: &Url, base: &Url) -> Result<(), String> {
            if (url.scheme(), url.host_str(), url.port_or_known_default())
                != (base.scheme(), base.host_str(), base.port_or_known_default())
            {
                return Err(format!("{url} is not on {base}'s origin"));
            }
            if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
                return Err(format!("{url} carries credentials or a fragment"));
            }
            let base_path = base.path().trim_end_matches('/');
            let rest = url
                .path()
                .strip_prefix(base_path)
                .ok_or_else(|| format!("{url} is not under {base}"))?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return Err(format!("{url} is beside {base}'s path, not under it"));
            }
            for segment in rest.split('/').skip(1) {
                let decoded = decoded(segment);
                if decoded == b"."
                    || decoded == b".."
                    || decoded.contains(&b'/')
                    || decoded.contains(&b'\\')
                {
                    return Err(format!("{url} has segment {segment:?}"));
                }
            }
            Ok(())
        }

        /// A segment with every `%XX` decoded, as most servers read it.
        fn decoded(segment: &str) -> Vec<u8> {
            let b = segment.as_bytes();
            let hex = |c: u8| (c as char).to_digit(16);
            let (mut out, mut i) = (Vec::new(), 0);
            while i < b.len() {
                match (
                    b[i],
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (b'%', Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    (c, _, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// No path, however built, makes a URL that leaves the
            /// downstream's origin or base path; none makes the check panic.
            #[test]
            fn no_path_leaves_the_downstream(which in 0..3usize, path in path()) {
                let d = downstreams();
                let name = format!("d{which}");
                if let Ok((url, ds)) = d.resolve(&name, &path) {
                    prop_assert_eq!(&ds.name, &name);
                    let base = Url::parse(bases()[which]).unwrap();
                    if let Err(e) = stays_under(&url, &base) {
                        prop_assert!(false, "{:?} -> {}", path, e);
                    }
                }
            }

            /// The guard is no wall: an ordinary path joins under the base,
            /// unchanged.
            #[test]
            fn a_plain_path_joins_under_the_base(which in 0..3usize, path in plain_path()) {
                prop_assume!(!path.split('?').next().unwrap().split('/').any(|s| s == "." || s == ".."));
                let d = downstreams();
                let (url, _) = d.resolve(&format!("d{which}"), &path).map_err(|e| TestCaseError::fail(format!("{path:?}: {e}")))?;
                let base = bases()[which].trim_end_matches('/');
                prop_assert_eq!(url.as_str(), format!("{base}{path}"));
            }
        }
    }
}
