//! Remote workers' credentials: worker keys (`HERALD_WORKER_KEYS`,
//! `HERALD_WORKER_KEYS_FILE`), kept apart from tenants' credentials. A worker
//! key opens only `/v1/worker/*`, and may be limited to some kinds and some
//! tenants' jobs.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// The worker a request to `/v1/worker/*` acts for, and what it may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPrincipal {
    /// The key's name (`anonymous` with `HERALD_AUTH=none` and no key).
    pub name: String,
    /// Only these kinds; `None`: every remote kind.
    pub kinds: Option<BTreeSet<String>>,
    /// Only these tenants' jobs; `None`: every tenant's.
    pub tenants: Option<Vec<String>>,
}

impl WorkerPrincipal {
    /// A worker with no limits (`HERALD_AUTH=none`, loopback only).
    pub fn anyone() -> WorkerPrincipal {
        WorkerPrincipal {
            name: "anonymous".to_owned(),
            kinds: None,
            tenants: None,
        }
    }

    /// Whether this worker may run jobs of `kind` for `tenant`.
    pub fn may_run(&self, kind: &str, tenant: &str) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(kind))
            && self
                .tenants
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == tenant))
    }
}

struct WorkerKey {
    principal: WorkerPrincipal,
    /// SHA-256 of the key: keys are never kept in clear.
    hash: [u8; 32],
}

/// Every configured worker key.
#[derive(Default)]
pub struct WorkerKeys {
    keys: Vec<WorkerKey>,
}

impl std::fmt::Debug for WorkerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// One entry of `HERALD_WORKER_KEYS_FILE`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    key: String,
    kinds: Option<Vec<String>>,
    tenants: Option<Vec<String>>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl WorkerKeys {
    /// From `HERALD_WORKER_KEYS` (`name:key,…`) and the JSON file, checked
    /// against the remote kinds: a key limited to a kind that is not remote
    /// could never claim anything, so it is a start-up error.
    pub fn load(
        pairs: &[Secret],
        file: Option<&Path>,
        remote_kinds: &[String],
    ) -> anyhow::Result<WorkerKeys> {
        let mut keys = WorkerKeys::default();
        for pair in pairs.iter().map(|p| p.0.trim()).filter(|p| !p.is_empty()) {
            let (name, key) = pair
                .split_once(':')
                .context("HERALD_WORKER_KEYS entries are name:key")?;
            keys.add(name.trim(), key.trim(), None, None, "HERALD_WORKER_KEYS")?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading HERALD_WORKER_KEYS_FILE {}", path.display()))?;
            let entries: Vec<FileEntry> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "HERALD_WORKER_KEYS_FILE {} is not a JSON array of {{\"name\", \"key\", \"kinds\"?, \"tenants\"?}}",
                    path.display()
                )
            })?;
            for e in entries {
                if let Some(kinds) = &e.kinds {
                    if let Some(k) = kinds.iter().find(|k| !remote_kinds.contains(k)) {
                        bail!(
                            "HERALD_WORKER_KEYS_FILE: worker key `{}` is limited to kind `{k}`, which is not in HERALD_REMOTE_KINDS",
                            e.name
                        );
                    }
                }
                keys.add(
                    &e.name,
                    &e.key,
                    e.kinds.map(|k| k.into_iter().collect()),
                    e.tenants,
                    "HERALD_WORKER_KEYS_FILE",
                )?;
            }
        }
        Ok(keys)
    }

    fn add(
        &mut self,
        name: &str,
        key: &str,
        kinds: Option<BTreeSet<String>>,
        tenants: Option<Vec<String>>,
        whence: &str,
    ) -> anyhow::Result<()> {
        if name.is_empty() || key.len() < 16 {
            bail!("{whence}: each worker key needs a name and a key of at least 16 characters");
        }
        self.keys.push(WorkerKey {
            principal: WorkerPrincipal {
                name: name.to_owned(),
                kinds,
                tenants,
            },
            hash: sha256(key.as_bytes()),
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The worker whose key `token` is, if any. Every key is compared, so
    /// timing says nothing about which matched.
    pub fn find(&self, token: &str) -> Option<WorkerPrincipal> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&presented)) {
                found = Some(&key.principal);
            }
        }
        found.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_value_and_short_ones_refused() {
        let keys = WorkerKeys::load(
            &[Secret("py-1:worker-key-0123456789".into())],
            None,
            &["crew_plan".into()],
        )
        .unwrap();
        assert_eq!(keys.find("worker-key-0123456789").unwrap().name, "py-1");
        assert_eq!(keys.find("worker-key-012345678"), None);
        assert!(WorkerKeys::load(&[Secret("py:short".into())], None, &[]).is_err());
    }

    #[test]
    fn a_file_limits_kinds_and_tenants_and_must_name_remote_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(
            &path,
            r#"[{"name": "acme-crews", "key": "acme-worker-key-0123", "kinds": ["crew_plan"], "tenants": ["acme"]}]"#,
        )
        .unwrap();
        let remote = vec!["crew_plan".to_owned(), "render".to_owned()];
        let keys = WorkerKeys::load(&[], Some(&path), &remote).unwrap();
        let w = keys.find("acme-worker-key-0123").unwrap();
        assert!(w.may_run("crew_plan", "acme"));
        assert!(!w.may_run("crew_plan", "globex"));
        assert!(!w.may_run("render", "acme"));
        let err = WorkerKeys::load(&[], Some(&path), &["render".to_owned()]).unwrap_err();
        assert!(
            err.to_string().contains("not in HERALD_REMOTE_KINDS"),
            "{err}"
        );
    }
}
