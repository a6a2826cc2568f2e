//! Who is calling: API keys, JWTs, and the short-lived stream tokens that let
//! a browser's EventSource (which cannot send headers) open a job's stream.
//!
//! Every job belongs to a tenant. `HERALD_AUTH=none` puts every caller in the
//! tenant `""` and is only allowed on a loopback address.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::config::AuthMode;
use crate::config::{Config, Secret};
use crate::domain::JobId;

/// The tenant a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("no credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("the credentials are not valid")]
    Invalid,
    #[error("the token has expired; get a fresh one")]
    Expired,
}

struct Jwt {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    tenant_claim: String,
}

pub struct Auth {
    pub mode: AuthMode,
    /// (tenant, SHA-256 of the key): keys are never kept in clear.
    keys: Vec<(String, [u8; 32])>,
    jwt: Option<Jwt>,
    stream_secret: Vec<u8>,
    pub stream_ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// What `Auth::from_settings` needs, out of the configuration.
pub struct AuthSettings<'a> {
    pub mode: AuthMode,
    pub api_keys: &'a [Secret],
    pub api_keys_file: Option<&'a Path>,
    pub jwt_secret: Option<&'a str>,
    pub jwt_public_key_file: Option<&'a Path>,
    pub jwt_issuer: Option<&'a str>,
    pub jwt_audience: Option<&'a str>,
    pub jwt_tenant_claim: &'a str,
    pub stream_token_secret: Option<&'a str>,
    pub stream_token_ttl: Duration,
}

impl<'a> From<&'a Config> for AuthSettings<'a> {
    /// Borrowed for the call only; the secrets stay in the config.
    fn from(c: &'a Config) -> Self {
        AuthSettings {
            mode: c.auth,
            api_keys: &c.api_keys,
            api_keys_file: c.api_keys_file.as_deref(),
            jwt_secret: c.jwt_secret.as_ref().map(|s| s.0.as_str()),
            jwt_public_key_file: c.jwt_public_key_file.as_deref(),
            jwt_issuer: c.jwt_issuer.as_deref(),
            jwt_audience: c.jwt_audience.as_deref(),
            jwt_tenant_claim: &c.jwt_tenant_claim,
            stream_token_secret: c.stream_token_secret.as_ref().map(|s| s.0.as_str()),
            stream_token_ttl: Duration::from_secs(c.stream_token_ttl_secs.max(1)),
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Auth {
    pub fn from_settings(s: AuthSettings<'_>) -> anyhow::Result<Auth> {
        let mut keys = Vec::new();
        let mut add_key = |tenant: &str, key: &str, whence: &str| -> anyhow::Result<()> {
            if tenant.is_empty() || key.len() < 16 {
                bail!("{whence}: each entry needs a tenant and a key of at least 16 characters");
            }
            keys.push((tenant.to_owned(), sha256(key.as_bytes())));
            Ok(())
        };
        for pair in s
            .api_keys
            .iter()
            .map(|p| p.0.trim())
            .filter(|p| !p.is_empty())
        {
            let (tenant, key) = pair
                .split_once(':')
                .context("HERALD_API_KEYS entries are tenant:key")?;
            add_key(tenant.trim(), key.trim(), "HERALD_API_KEYS")?;
        }
        if let Some(path) = s.api_keys_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading HERALD_API_KEYS_FILE {}", path.display()))?;
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let mut parts = line.split_whitespace();
                let (Some(tenant), Some(key), None) = (parts.next(), parts.next(), parts.next())
                else {
                    bail!("HERALD_API_KEYS_FILE lines are `tenant key`");
                };
                add_key(tenant, key, "HERALD_API_KEYS_FILE")?;
            }
        }
        let jwt = match s.mode {
            AuthMode::Jwt => {
                let (key, alg) = match (s.jwt_secret, s.jwt_public_key_file) {
                    (Some(secret), None) => (
                        jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
                        jsonwebtoken::Algorithm::HS256,
                    ),
                    (None, Some(path)) => {
                        let pem = std::fs::read(path)
                            .with_context(|| format!("reading HERALD_JWT_PUBLIC_KEY_FILE {}", path.display()))?;
                        (
                            jsonwebtoken::DecodingKey::from_rsa_pem(&pem)
                                .context("HERALD_JWT_PUBLIC_KEY_FILE is not an RSA public key in PEM")?,
                            jsonwebtoken::Algorithm::RS256,
                        )
                    }
                    _ => bail!("HERALD_AUTH=jwt needs exactly one of HERALD_JWT_SECRET (HS256) or HERALD_JWT_PUBLIC_KEY_FILE (RS256)"),
                };
                let mut validation = jsonwebtoken::Validation::new(alg);
                validation.set_required_spec_claims(&["exp"]);
                validation.leeway = 5;
                match s.jwt_issuer {
                    Some(iss) => validation.set_issuer(&[iss]),
                    None => validation.iss = None,
                }
                match s.jwt_audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                Some(Jwt {
                    key,
                    validation,
                    tenant_claim: s.jwt_tenant_claim.to_owned(),
                })
            }
            _ => None,
        };
        if s.mode == AuthMode::ApiKeys && keys.is_empty() {
            bail!("HERALD_AUTH=api-keys needs keys: HERALD_API_KEYS=tenant:key,… or HERALD_API_KEYS_FILE");
        }
        let stream_secret = match s.stream_token_secret {
            Some(secret) if secret.len() >= 16 => secret.as_bytes().to_vec(),
            Some(_) => bail!("HERALD_STREAM_TOKEN_SECRET must be at least 16 characters"),
            None => {
                if s.mode != AuthMode::None {
                    tracing::warn!("HERALD_STREAM_TOKEN_SECRET is not set: stream tokens are signed with a random per-process secret and will not survive a restart or work across nodes");
                }
                let mut secret = vec![0u8; 32];
                rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
                secret
            }
        };
        Ok(Auth {
            mode: s.mode,
            keys,
            jwt,
            stream_secret,
            stream_ttl: s.stream_token_ttl,
        })
    }

    /// The tenant for an `Authorization` header value (or its absence).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Tenant, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Tenant(String::new()));
        }
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        match self.mode {
            AuthMode::ApiKeys => {
                let presented = sha256(token.as_bytes());
                // Compare against every key, so timing says nothing about which matched.
                let mut found = None;
                for (tenant, hash) in &self.keys {
                    if bool::from(hash.ct_eq(&presented)) {
                        found = Some(tenant);
                    }
                }
                found.map(|t| Tenant(t.clone())).ok_or(AuthError::Invalid)
            }
            AuthMode::Jwt => {
                let jwt = self.jwt.as_ref().ok_or(AuthError::Invalid)?;
                let data = jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(
                    token,
                    &jwt.key,
                    &jwt.validation,
                )
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                })?;
                match data.claims.get(&jwt.tenant_claim) {
                    Some(serde_json::Value::String(t)) if !t.is_empty() => Ok(Tenant(t.clone())),
                    _ => Err(AuthError::Invalid),
                }
            }
            AuthMode::None => unreachable!("handled above"),
        }
    }

    /// A token that opens `scope` (a job's stream, or the tenant's feed) for
    /// `tenant` until it expires.
    pub fn mint_stream_token(
        &self,
        tenant: &Tenant,
        scope: impl Into<TokenScope>,
    ) -> (String, SystemTime) {
        // Rounded up to the next whole second: a token lives at least its TTL
        // (rounding down let a 1 s token expire at once, in the next second).
        let until = (SystemTime::now() + self.stream_ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let exp = until.as_secs() + u64::from(until.subsec_nanos() > 0);
        let expires = UNIX_EPOCH + Duration::from_secs(exp);
        let claims = StreamClaims {
            j: scope.into().claim(),
            t: tenant.0.clone(),
            e: exp,
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let sig = URL_SAFE_NO_PAD.encode(self.sign(payload.as_bytes()));
        (format!("{payload}.{sig}"), expires)
    }

    /// The tenant a stream token was minted for, if it is genuine, unexpired
    /// and for this scope.
    pub fn verify_stream_token(
        &self,
        token: &str,
        scope: impl Into<TokenScope>,
    ) -> Result<Tenant, AuthError> {
        let (payload, sig) = token.split_once('.').ok_or(AuthError::Invalid)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AuthError::Invalid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.stream_secret).expect("any key length");
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| AuthError::Invalid)?;
        let claims: StreamClaims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Invalid)?;
        if claims.j != scope.into().claim() {
            return Err(AuthError::Invalid);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if claims.e <= now {
            return Err(AuthError::Expired);
        }
        Ok(Tenant(claims.t))
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(bytes);
        mac.finalize().into_bytes().to_vec()
    }

    /// HMAC-SHA256 keyed with the stream-token secret.
    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.stream_secret).expect("HMAC takes keys of any length")
    }
}

/// What a stream token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// One job's stream.
    Job(JobId),
    /// The tenant's multiplexed feed (`GET /v1/events`).
    Feed,
}

impl From<JobId> for TokenScope {
    fn from(id: JobId) -> Self {
        TokenScope::Job(id)
    }
}

impl TokenScope {
    fn claim(self) -> String {
        match self {
            TokenScope::Job(id) => id.to_string(),
            TokenScope::Feed => "feed".to_owned(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StreamClaims {
    j: String,
    t: String,
    e: u64,
}

#[cfg(test)]
mod tests;
