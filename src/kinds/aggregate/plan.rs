//! The `aggregate` input, checked: from the submitted JSON to a `Plan` of
//! sources that each name a resolved URL, method, body, timeout and retries.
//!
//! Apart from the fetching because it is a different job: it runs at submit
//! time too (`validate`), does no I/O, and reports every field error with its
//! JSON pointer, while the fetching only ever sees sources that passed here.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;

use super::{
    Aggregate, DEFAULT_CONCURRENCY, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_CONCURRENCY, MAX_RETRIES,
    MAX_SOURCES, MAX_TIMEOUT_MS,
};
use crate::domain::{fields, FieldError};

/// One source, validated.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) name: String,
    pub(super) url: Url,
    pub(super) headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub(super) method: Method,
    pub(super) body: Option<Value>,
    pub(super) timeout: Duration,
    pub(super) retries: u32,
}

/// The whole input, validated: what `run` works from.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) sources: Vec<Source>,
    pub(super) concurrency: usize,
    pub(super) allow_partial: bool,
}

impl Aggregate {
    /// Checks the input, every error at once (as `validate` reports them).
    pub(super) fn plan(&self, input: &Value) -> Result<Plan, Vec<FieldError>> {
        let obj = fields::object(
            input,
            "",
            "{\"sources\": [{\"name\": …, \"downstream\": …, \"path\": …}]}",
        )?;
        let mut errors = Vec::new();
        fields::unknown_fields(
            obj,
            &["sources", "concurrency", "allow_partial"],
            "",
            &mut errors,
        );
        let concurrency = fields::whole_number(
            obj,
            "concurrency",
            1..=MAX_CONCURRENCY as i64,
            "",
            &mut errors,
        )
        .map_or(DEFAULT_CONCURRENCY, |n| n as usize);
        let allow_partial = fields::boolean(obj, "allow_partial", "", &mut errors).unwrap_or(false);
        let mut sources = Vec::new();
        match obj.get("sources") {
            Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_SOURCES => {
                let mut names = HashSet::new();
                for (i, s) in list.iter().enumerate() {
                    if let Some(src) = self.source(i, s, &mut names, &mut errors) {
                        sources.push(src);
                    }
                }
            }
            Some(Value::Array(_)) => errors.push(FieldError::new(
                "/sources",
                format!("must list 1 to {MAX_SOURCES} sources"),
            )),
            Some(_) => errors.push(FieldError::new("/sources", "must be an array of sources")),
            None => errors.push(FieldError::new("/sources", "is required")),
        }
        if errors.is_empty() {
            Ok(Plan {
                sources,
                concurrency,
                allow_partial,
            })
        } else {
            Err(errors)
        }
    }

    fn source(
        &self,
        i: usize,
        s: &Value,
        names: &mut HashSet<String>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Source> {
        let here = format!("/sources/{i}");
        let at = |f: &str| format!("{here}{f}");
        let obj = match fields::object(s, &here, "{\"name\": …, \"downstream\": …, \"path\": …}")
        {
            Ok(obj) => obj,
            Err(e) => {
                errors.extend(e);
                return None;
            }
        };
        let before = errors.len();
        let mut allowed = vec![
            "name",
            "downstream",
            "path",
            "method",
            "body",
            "timeout_ms",
            "retries",
        ];
        if self.caller.downstreams.allow_any_url {
            allowed.push("url");
        }
        fields::unknown_fields(obj, &allowed, &here, errors);
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n.chars().count() <= 100 => {
                if !names.insert(n.to_owned()) {
                    errors.push(FieldError::new(
                        at("/name"),
                        "is used by another source; names must be unique",
                    ));
                }
                n.to_owned()
            }
            _ => {
                errors.push(FieldError::new(
                    at("/name"),
                    "is required: a string of 1 to 100 characters",
                ));
                String::new()
            }
        };
        let method = match obj
            .get("method")
            .and_then(|m| m.as_str().map(str::to_ascii_uppercase))
        {
            None if obj.get("method").is_none_or(Value::is_null) => Method::GET,
            Some(m) if m == "GET" => Method::GET,
            Some(m) if m == "POST" => Method::POST,
            _ => {
                errors.push(FieldError::new(at("/method"), "must be GET or POST"));
                Method::GET
            }
        };
        let body = obj.get("body").filter(|b| !b.is_null()).cloned();
        if body.is_some() && method != Method::POST {
            errors.push(FieldError::new(
                at("/body"),
                "is only sent with method POST",
            ));
        }
        let timeout_ms =
            fields::whole_number(obj, "timeout_ms", 1..=MAX_TIMEOUT_MS as i64, &here, errors)
                .map(|n| n as u64);
        let retries = fields::whole_number(obj, "retries", 0..=MAX_RETRIES as i64, &here, errors)
            .map_or(DEFAULT_RETRIES, |n| n as u32);
        let target =
            if let (Some(url), true) = (obj.get("url"), self.caller.downstreams.allow_any_url) {
                match url
                    .as_str()
                    .and_then(|u| Url::parse(u).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                {
                    Some(u) => Some((u, Vec::new(), None)),
                    None => {
                        errors.push(FieldError::new(at("/url"), "must be an http or https URL"));
                        None
                    }
                }
            } else {
                let downstream = obj.get("downstream").and_then(Value::as_str);
                let path = obj.get("path").and_then(Value::as_str);
                match (downstream, path) {
                    (None, _) => {
                        errors.push(FieldError::new(
                            at("/downstream"),
                            "is required: the name of a configured downstream",
                        ));
                        None
                    }
                    (Some(_), None) => {
                        errors.push(FieldError::new(
                            at("/path"),
                            "is required: a path under the downstream, such as /v1/items",
                        ));
                        None
                    }
                    (Some(d), Some(p)) => match self.caller.downstreams.resolve(d, p) {
                        Ok((url, ds)) => Some((url, ds.headers.clone(), ds.timeout)),
                        Err(why) => {
                            let field = if self.caller.downstreams.get(d).is_none() {
                                "/downstream"
                            } else {
                                "/path"
                            };
                            errors.push(FieldError::new(at(field), why));
                            None
                        }
                    },
                }
            };
        if errors.len() > before {
            return None;
        }
        let (url, headers, default_timeout): (Url, _, Option<Duration>) = target?;
        Some(Source {
            name,
            url,
            headers,
            method,
            body,
            timeout: timeout_ms
                .map(Duration::from_millis)
                .or(default_timeout)
                .unwrap_or(DEFAULT_TIMEOUT),
            retries,
        })
    }
}
