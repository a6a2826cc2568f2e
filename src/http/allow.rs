//! `Allow` on every 405 answer, as RFC 9110 requires: the methods the route
//! takes. poem's 405 does not say them, so they are read from the OpenAPI
//! document (every route it describes), plus the few routes beside it.

use poem::http::HeaderValue;
use serde_json::Value;

/// Path templates (`/v1/jobs/{id}`) with the methods each takes.
#[derive(Debug, Default)]
pub(super) struct AllowTable {
    routes: Vec<(Vec<String>, HeaderValue)>,
}

impl AllowTable {
    /// The routes of `doc` (an OpenAPI document), and `extra` ones (`(path, "GET")`).
    pub(super) fn new(doc: &str, extra: &[(&str, &str)]) -> AllowTable {
        let doc: Value = serde_json::from_str(doc).unwrap_or_default();
        let mut routes = Vec::new();
        let documented = doc["paths"].as_object().into_iter().flatten();
        let documented = documented.map(|(path, ops)| {
            let methods: Vec<String> = ops
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .map(|m| m.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        });
        let extra = extra
            .iter()
            .map(|(path, method)| (path.to_string(), vec![method.to_string()]));
        for (path, mut methods) in documented.chain(extra) {
            // poem answers HEAD wherever it answers GET.
            if methods.iter().any(|m| m == "GET") {
                methods.push("HEAD".to_owned());
            }
            if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
                routes.push((segments(&path), value));
            }
        }
        AllowTable { routes }
    }

    /// The `Allow` value for a request path, if a route matches it.
    pub(super) fn allowed(&self, path: &str) -> Option<&HeaderValue> {
        let path = segments(path);
        self.routes.iter().find_map(|(template, allow)| {
            let matches = template.len() == path.len()
                && template
                    .iter()
                    .zip(&path)
                    .all(|(t, p)| t == p || t.starts_with('{') || t.starts_with(':'));
            matches.then_some(allow)
        })
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

/// The methods the routes outside the document take.
pub(super) const PLAIN_ROUTES: &[(&str, &str)] = &[
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
    ("/docs", "GET"),
    ("/", "GET"),
    ("/style.css", "GET"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_gets_the_methods_of_its_template() {
        let doc = r#"{"paths": {"/v1/jobs": {"get": {}, "post": {}}, "/v1/jobs/{id}/cancel": {"post": {}}}}"#;
        let table = AllowTable::new(doc, &[("/metrics", "GET")]);
        assert_eq!(table.allowed("/v1/jobs").unwrap(), "GET, POST, HEAD");
        assert_eq!(table.allowed("/v1/jobs/abc/cancel").unwrap(), "POST");
        assert_eq!(table.allowed("/metrics").unwrap(), "GET, HEAD");
        assert!(table.allowed("/v1/jobs/abc/nope").is_none());
    }
}
