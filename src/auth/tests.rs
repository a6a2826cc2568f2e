use super::*;

fn keys_auth() -> Auth {
    Auth::from_settings(AuthSettings {
        mode: AuthMode::ApiKeys,
        api_keys: &[
            Secret("acme:acme-key-0123456789".to_owned()),
            Secret("globex:globex-key-0123456789".to_owned()),
        ],
        stream_token_secret: Some("stream-secret-0123456789"),
        ..properties::settings()
    })
    .unwrap()
}

#[test]
fn api_keys_map_to_tenants() {
    let a = keys_auth();
    assert_eq!(
        a.authenticate(Some("Bearer acme-key-0123456789")),
        Ok(Tenant("acme".into()))
    );
    assert_eq!(
        a.authenticate(Some("Bearer globex-key-0123456789")),
        Ok(Tenant("globex".into()))
    );
    assert_eq!(
        a.authenticate(Some("Bearer wrong-key-0123456789")),
        Err(AuthError::Invalid)
    );
    assert_eq!(a.authenticate(None), Err(AuthError::Missing));
    assert_eq!(a.authenticate(Some("Basic xyz")), Err(AuthError::Missing));
    assert!(
        !format!("{a:?}").contains("acme-key"),
        "keys never show in Debug"
    );
}

#[test]
fn stream_tokens_are_bound_to_job_and_tenant() {
    let a = keys_auth();
    let job = JobId::new();
    let (token, _) = a.mint_stream_token(&Tenant("acme".into()), job);
    assert_eq!(
        a.verify_stream_token(&token, job),
        Ok(Tenant("acme".into()))
    );
    assert_eq!(
        a.verify_stream_token(&token, JobId::new()),
        Err(AuthError::Invalid)
    );
    let (payload, sig) = token.split_once('.').unwrap();
    let forged = URL_SAFE_NO_PAD.encode(format!(r#"{{"j":"{job}","t":"globex","e":99999999999}}"#));
    assert_eq!(
        a.verify_stream_token(&format!("{forged}.{sig}"), job),
        Err(AuthError::Invalid)
    );
    assert_eq!(a.verify_stream_token(payload, job), Err(AuthError::Invalid));
}

#[test]
fn a_stream_token_lives_at_least_its_ttl() {
    let a = keys_auth();
    let earliest_end = (SystemTime::now() + a.stream_ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (token, expires) = a.mint_stream_token(&Tenant("acme".into()), JobId::new());
    let payload = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let claims: StreamClaims = serde_json::from_slice(&payload).unwrap();
    assert!(
        claims.e as f64 >= earliest_end,
        "{} < {earliest_end}",
        claims.e
    );
    assert_eq!(expires, UNIX_EPOCH + Duration::from_secs(claims.e));
}

#[test]
fn misconfiguration_is_refused() {
    let base = |mode, keys: &'static [Secret]| AuthSettings {
        mode,
        api_keys: keys,
        ..properties::settings()
    };
    assert!(Auth::from_settings(base(AuthMode::ApiKeys, &[])).is_err());
    assert!(Auth::from_settings(base(AuthMode::Jwt, &[])).is_err());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn auth_with(secret: &str) -> Auth {
        Auth::from_settings(AuthSettings {
            stream_token_secret: Some(secret),
            ..settings()
        })
        .unwrap()
    }

    /// Settings with nothing configured (mode `none`).
    pub(super) fn settings() -> AuthSettings<'static> {
        AuthSettings {
            // Stream tokens are the same in every mode.
            mode: AuthMode::None,
            api_keys: &[],
            api_keys_file: None,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_tenant_claim: "sub",
            stream_token_secret: None,
            stream_token_ttl: Duration::from_secs(60),
        }
    }

    fn scope() -> impl Strategy<Value = TokenScope> {
        prop_oneof![
            Just(TokenScope::Feed),
            any::<u128>().prop_map(|b| TokenScope::Job(JobId(uuid::Uuid::from_u128(b)))),
        ]
    }

    /// One change to a token's text.
    #[derive(Debug, Clone)]
    enum Tamper {
        /// Flip one bit of one byte (kept ASCII so the text stays text).
        Flip(usize, u8),
        Insert(usize, char),
        Delete(usize),
        /// Replace a byte with another base64url character.
        Replace(usize, char),
        Truncate(usize),
        Append(String),
    }

    fn b64_char() -> impl Strategy<Value = char> {
        prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
                .chars()
                .collect::<Vec<_>>(),
        )
    }

    fn tamper() -> impl Strategy<Value = Tamper> {
        prop_oneof![
            (any::<usize>(), 0..7u8).prop_map(|(i, bit)| Tamper::Flip(i, bit)),
            (any::<usize>(), b64_char()).prop_map(|(i, c)| Tamper::Insert(i, c)),
            any::<usize>().prop_map(Tamper::Delete),
            (any::<usize>(), b64_char()).prop_map(|(i, c)| Tamper::Replace(i, c)),
            any::<usize>().prop_map(Tamper::Truncate),
            "[A-Za-z0-9_=.-]{1,4}".prop_map(Tamper::Append),
        ]
    }

    fn apply(token: &str, t: &Tamper) -> String {
        // Tokens are ASCII: every index is a character boundary.
        let mut b = token.as_bytes().to_vec();
        let at = |i: usize, len: usize| i % len.max(1);
        match t {
            Tamper::Flip(i, bit) => {
                let i = at(*i, b.len());
                b[i] ^= 1 << bit;
            }
            Tamper::Insert(i, c) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, c.to_string().into_bytes());
            }
            Tamper::Delete(i) => {
                b.remove(at(*i, b.len()));
            }
            Tamper::Replace(i, c) => {
                let i = at(*i, b.len());
                b.splice(i..i + 1, c.to_string().into_bytes());
            }
            Tamper::Truncate(i) => b.truncate(at(*i, b.len())),
            Tamper::Append(s) => b.extend_from_slice(s.as_bytes()),
        }
        String::from_utf8(b).expect("ASCII in, ASCII out")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// A token opens what it was minted for, for its tenant.
        #[test]
        fn a_minted_token_verifies_for_its_scope_and_tenant(tenant in ".{0,20}", scope in scope()) {
            let a = auth_with("stream-secret-0123456789");
            let (token, _) = a.mint_stream_token(&Tenant(tenant.clone()), scope);
            prop_assert_eq!(a.verify_stream_token(&token, scope), Ok(Tenant(tenant)));
        }

        /// Any change to its text, however small, and it opens nothing.
        #[test]
        fn no_tampered_token_verifies(tenant in "[a-z]{1,12}", scope in scope(), t in tamper()) {
            let a = auth_with("stream-secret-0123456789");
            let (token, _) = a.mint_stream_token(&Tenant(tenant), scope);
            let tampered = apply(&token, &t);
            prop_assume!(tampered != token);
            prop_assert_eq!(a.verify_stream_token(&tampered, scope), Err(AuthError::Invalid));
        }

        /// Claims rewritten (another tenant, scope or expiry) under the
        /// original signature, or the signature of another token: refused.
        #[test]
        fn rewritten_claims_and_swapped_signatures_are_refused(
            tenant in "[a-z]{1,12}",
            other in "[a-z]{1,12}",
            scope in scope(),
            other_scope in scope(),
            extra_secs in 1..1_000_000u64,
        ) {
            let a = auth_with("stream-secret-0123456789");
            let (token, _) = a.mint_stream_token(&Tenant(tenant.clone()), scope);
            let (payload, sig) = token.split_once('.').unwrap();
            let claims: StreamClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
            let rewrites = [
                StreamClaims { t: other.clone(), j: claims.j.clone(), e: claims.e },
                StreamClaims { t: tenant.clone(), j: other_scope.claim(), e: claims.e },
                StreamClaims { t: tenant.clone(), j: claims.j.clone(), e: claims.e + extra_secs },
            ];
            for forged in rewrites {
                let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
                if body == payload {
                    continue; // not a rewrite
                }
                let forged_token = format!("{body}.{sig}");
                for s in [scope, other_scope] {
                    prop_assert_eq!(a.verify_stream_token(&forged_token, s), Err(AuthError::Invalid));
                }
            }
            // Another token's signature on this payload.
            let (theirs, _) = a.mint_stream_token(&Tenant(other.clone()), other_scope);
            let their_sig = theirs.split_once('.').unwrap().1;
            if their_sig != sig {
                prop_assert_eq!(a.verify_stream_token(&format!("{payload}.{their_sig}"), scope), Err(AuthError::Invalid));
            }
        }

        /// A token opens only its own scope, and only where its secret
        /// is the one in use.
        #[test]
        fn a_token_opens_nothing_else(tenant in "[a-z]{1,12}", scope in scope(), other_scope in scope(), secret in "[ -~]{16,40}") {
            let a = auth_with("stream-secret-0123456789");
            let (token, _) = a.mint_stream_token(&Tenant(tenant), scope);
            if other_scope != scope {
                prop_assert_eq!(a.verify_stream_token(&token, other_scope), Err(AuthError::Invalid));
            }
            if secret != "stream-secret-0123456789" {
                prop_assert_eq!(auth_with(&secret).verify_stream_token(&token, scope), Err(AuthError::Invalid));
            }
        }

        /// Whatever text arrives as `?token=`, verifying it neither
        /// panics nor opens anything.
        #[test]
        fn arbitrary_text_opens_nothing(text in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}"], scope in scope()) {
            let a = auth_with("stream-secret-0123456789");
            prop_assert!(a.verify_stream_token(&text, scope).is_err());
        }
    }
}
