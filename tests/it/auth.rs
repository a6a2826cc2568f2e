//! Authentication, tenants, stream tokens, CORS and limits.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::config::AuthMode;
use herald::config::Secret;
use serde_json::{json, Value};

use crate::common::{read_to_end, seqs, HeraldProcess, Job, TestApp, WAIT};

const ACME: &str = "acme-key-0123456789abcdef";
const GLOBEX: &str = "globex-key-0123456789abcdef";

async fn keyed(f: impl FnOnce(&mut herald::Config)) -> TestApp {
    TestApp::spawn_with(|c| {
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![
            Secret(format!("acme:{ACME}")),
            Secret(format!("globex:{GLOBEX}")),
        ];
        c.stream_token_secret = Some(Secret("stream-secret-for-tests-0123".into()));
        f(c)
    })
    .await
}

async fn api_keys_are_required_and_tenants_are_separate() {
    let app = keyed(|_| {}).await;
    for api in [
        app.api.clone(),
        app.with_bearer("wrong-key-0123456789abcdef"),
    ] {
        let resp = api.get("/v1/jobs").send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Bearer realm="herald""#
        );
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["code"], "unauthorized");
    }
    // Probes stay public.
    assert_eq!(app.get("/healthz").send().await.unwrap().status(), 200);

    let (acme, globex) = (app.with_bearer(ACME), app.with_bearer(GLOBEX));
    let job = acme
        .submit_with(
            "demo",
            json!({"steps": 200, "step_ms": 50}),
            json!({"idempotency_key": "k1"}),
        )
        .await;
    let id = &job.id.to_string();
    let missing = uuid::Uuid::now_v7().to_string();
    // Everything globex tries on acme's job looks exactly like a missing job.
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/jobs/{id}")),
        (reqwest::Method::POST, format!("/v1/jobs/{id}/cancel")),
        (reqwest::Method::GET, format!("/v1/jobs/{id}/events")),
        (reqwest::Method::POST, format!("/v1/jobs/{id}/stream-token")),
    ] {
        let theirs = globex.request(method.clone(), &path).send().await.unwrap();
        let nobody = globex
            .request(method, &path.replace(id, &missing))
            .send()
            .await
            .unwrap();
        assert_eq!(theirs.status(), 404, "{path}");
        assert_eq!(nobody.status(), 404);
        let a: Value = theirs.json().await.unwrap();
        let b: Value = nobody.json().await.unwrap();
        assert_eq!(a["code"], b["code"]);
        assert_eq!(
            a["detail"].as_str().unwrap().replace(id, "X"),
            b["detail"].as_str().unwrap().replace(&missing, "X")
        );
    }
    assert!(
        globex.list("").await.items.is_empty(),
        "globex lists only its own"
    );
    assert_eq!(acme.list("").await.items.len(), 1);
    // Idempotency keys are per tenant: globex's k1 is a new job.
    let other = globex
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0}),
            json!({"idempotency_key": "k1"}),
        )
        .await;
    assert_ne!(other.id, job.id);
    // And acme can still cancel its own.
    assert_eq!(acme.cancel(job.id).await.status(), 202);
    app.stop().await;
}

fn jwt(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn in_secs(s: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + s
}

async fn jwts_are_checked_for_signature_issuer_audience_and_expiry() {
    let app = TestApp::spawn_with(|c| {
        c.auth = AuthMode::Jwt;
        c.jwt_secret = Some(Secret("jwt-secret-for-tests-0123456789".into()));
        c.jwt_issuer = Some("https://id.example".into());
        c.jwt_audience = Some("herald".into());
        c.jwt_tenant_claim = "org".into();
    })
    .await;
    let secret = "jwt-secret-for-tests-0123456789";
    let good = json!({"sub": "u1", "org": "acme", "iss": "https://id.example", "aud": "herald", "exp": in_secs(600)});
    let resp = app
        .with_bearer(&jwt(good.clone(), secret))
        .get("/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let mut bad_iss = good.clone();
    bad_iss["iss"] = json!("https://evil.example");
    let mut bad_aud = good.clone();
    bad_aud["aud"] = json!("someone-else");
    let mut expired = good.clone();
    expired["exp"] = json!(in_secs(-600));
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_tenant = good.clone();
    no_tenant.as_object_mut().unwrap().remove("org");
    for token in [
        jwt(good.clone(), "another-secret-0123456789abcdef"),
        jwt(bad_iss, secret),
        jwt(bad_aud, secret),
        jwt(expired, secret),
        jwt(no_exp, secret),
        jwt(no_tenant, secret),
        "not.a.jwt".to_owned(),
    ] {
        let resp = app
            .with_bearer(&token)
            .get("/v1/jobs")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{token}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    app.stop().await;
}

async fn rs256_jwts_verify_with_the_public_key() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let app = TestApp::spawn_with(|c| {
        c.auth = AuthMode::Jwt;
        c.jwt_public_key_file = Some(format!("{dir}/jwt_rs256_public.pem").into());
    })
    .await;
    let private = std::fs::read(format!("{dir}/jwt_rs256_private.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "acme", "exp": in_secs(600)}),
        &key,
    )
    .unwrap();
    // Accepted, answered with a job.
    app.with_bearer(&token)
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await;
    // An HS256 token signed with the public key's bytes must not pass.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "acme", "exp": in_secs(600)}),
        &jsonwebtoken::EncodingKey::from_secret(
            &std::fs::read(format!("{dir}/jwt_rs256_public.pem")).unwrap(),
        ),
    )
    .unwrap();
    let resp = app
        .with_bearer(&forged)
        .get("/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    app.stop().await;
}

async fn stream_tokens_open_streams_without_headers_and_expire() {
    let app = keyed(|c| {
        c.stream_token_ttl_secs = 1;
        c.progress_min_interval_ms = 0;
    })
    .await;
    let acme = app.with_bearer(ACME);
    let job = acme
        .submit("demo", json!({"steps": 12, "step_ms": 250}))
        .await;
    let events_url = job.links.events.clone();
    assert!(events_url.contains("?token="), "{events_url}");

    // The token alone opens the stream; read a few events, then let it go.
    let resp = app.get(&events_url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut first = Vec::new();
    {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut es = resp.bytes_stream().eventsource();
        while first.len() < 3 {
            let ev = es.next().await.unwrap().unwrap();
            first.push(ev.id.parse::<i64>().unwrap());
        }
    }
    // The same token for another job: 401.
    let other = acme.submit("demo", json!({"steps": 1, "step_ms": 0})).await;
    let token = events_url.split("token=").nth(1).unwrap();
    let resp = app
        .get(&format!("/v1/jobs/{}/events?token={token}", other.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Once the TTL has passed the token is refused; a fresh one and
    // Last-Event-ID deliver the rest.
    let deadline = Instant::now() + WAIT;
    let resp = loop {
        let resp = app
            .get(&events_url)
            .header("Last-Event-ID", "3")
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            break resp;
        }
        assert!(Instant::now() < deadline, "the stream token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resp.status(), 401);
    let p: Value = resp.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("expired"));
    let fresh = acme
        .stream_token(&format!("/v1/jobs/{}/stream-token", job.id))
        .await;
    assert!(fresh.expires_at.ends_with('Z'));
    let rest = read_to_end(
        app.get(&fresh.events_url)
            .header("Last-Event-ID", "3")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mut all = first.clone();
    all.extend(seqs(&rest));
    let n = all.len() as i64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>(), "every event exactly once");
    assert_eq!(rest.last().unwrap().event, "result");
    app.stop().await;
}

async fn cors_answers_allowed_origins_only() {
    let app = keyed(|c| c.cors_origins = vec!["https://dash.example".into()]).await;
    let preflight = app
        .request(reqwest::Method::OPTIONS, "/v1/jobs")
        .header("Origin", "https://dash.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let allowed_headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed_headers.contains("authorization"));

    let resp = app
        .with_bearer(ACME)
        .get("/v1/jobs")
        .header("Origin", "https://dash.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://dash.example"
    );

    let resp = app
        .with_bearer(ACME)
        .get("/v1/jobs")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

async fn each_limit_answers_with_its_status_and_retry_after() {
    let app = keyed(|c| {
        c.max_streams_per_tenant = 2;
        c.submit_rate_per_sec = 3;
    })
    .await;
    // Submissions: a burst of 3, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut first_id = None;
    let (acme, globex) = (app.with_bearer(ACME), app.with_bearer(GLOBEX));
    for _ in 0..5 {
        let resp = acme
            .post_job(&json!({"kind": "demo", "input": {"steps": 100, "step_ms": 100}}))
            .await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 202 && first_id.is_none() {
            let job: Job = resp.json().await.unwrap();
            first_id = Some(job.id);
            continue;
        }
        if resp.status() == 429 {
            retry_after = Some(resp.headers()["retry-after"].to_str().unwrap().to_owned());
            let p: Value = resp.json().await.unwrap();
            assert_eq!(p["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], [202, 202, 202]);
    // The bucket refills a token every third of a second: on a loaded
    // machine (PostgreSQL commits each submission) one may come back
    // before the fourth, never before the fifth as well.
    assert!(
        statuses[3..].contains(&429),
        "a burst past 3 is refused: {statuses:?}"
    );
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    // Another tenant has its own bucket.
    let resp = globex
        .post_job(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
        .await;
    assert_eq!(resp.status(), 202);

    // Streams: two open, the third is 429. (The job runs for 10 s.)
    let id = first_id.expect("a job was accepted");
    let path = format!("/v1/jobs/{id}/events");
    let s1 = acme.get(&path).send().await.unwrap();
    let s2 = acme.get(&path).send().await.unwrap();
    assert_eq!(
        (s1.status(), s2.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let s3 = acme.get(&path).send().await.unwrap();
    assert_eq!(s3.status(), 429);
    assert!(s3.headers().contains_key("retry-after"));
    drop(s1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = acme.get(&path).send().await.unwrap();
        if s.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a closed stream frees its slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(s2);

    // Input nested deeper than 64 levels: 422.
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    let body = format!(r#"{{"kind": "demo", "input": {deep}}}"#);
    let resp = globex
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["code"], "too_deeply_nested");
    app.stop().await;
}

#[tokio::test]
async fn none_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(&dir);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = herald::Application::build(config)
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("HERALD_AUTH=none") && msg.contains("HERALD_API_KEYS"),
        "{msg}"
    );
}

#[tokio::test]
async fn tokens_and_keys_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let keys = format!("acme:{ACME}");
    let mut herald = HeraldProcess::start(
        &dir.path().join("h.db"),
        "debug",
        &[("HERALD_AUTH", "api-keys"), ("HERALD_API_KEYS", &keys)],
    );
    let job = herald
        .api()
        .with_bearer(ACME)
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await;
    let events = &job.links.events;
    let token = events.split("token=").nth(1).unwrap().to_owned();
    let body = herald
        .api()
        .get(events)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: result"));
    herald
        .next_json(WAIT, |v| v.to_string().contains("/events"))
        .expect("the stream request is logged");
    let all = herald.kill().join("\n");
    assert!(
        all.contains("/events"),
        "the stream request was logged: {all}"
    );
    assert!(!all.contains(&token), "a stream token leaked into the logs");
    assert!(!all.contains(ACME), "an API key leaked into the logs");
}

backend_tests!(
    api_keys_are_required_and_tenants_are_separate,
    jwts_are_checked_for_signature_issuer_audience_and_expiry,
    rs256_jwts_verify_with_the_public_key,
    stream_tokens_open_streams_without_headers_and_expire,
    cors_answers_allowed_origins_only,
    each_limit_answers_with_its_status_and_retry_after,
);
