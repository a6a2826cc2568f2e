//! Authentication, tenants, stream tokens, CORS and limits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::config::AuthMode;
use herald::config::Secret;
use serde_json::{json, Value};

use crate::common::legacy::{ids, read_to_end};
use crate::common::{HeraldProcess, TestApp};

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

fn req(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
) -> reqwest::RequestBuilder {
    let r = app.client.request(method, app.url(path));
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

async fn submit_as(app: &TestApp, key: &str, body: Value) -> Value {
    let resp = req(app, reqwest::Method::POST, "/v1/jobs", Some(key))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

async fn api_keys_are_required_and_tenants_are_separate() {
    let app = keyed(|_| {}).await;
    for key in [None, Some("wrong-key-0123456789abcdef")] {
        let resp = req(&app, reqwest::Method::GET, "/v1/jobs", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Bearer realm="herald""#
        );
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["code"], "unauthorized");
    }
    // Probes stay public.
    assert_eq!(
        req(&app, reqwest::Method::GET, "/healthz", None)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let job = submit_as(
        &app,
        ACME,
        json!({"kind": "demo", "input": {"steps": 200, "step_ms": 50}, "idempotency_key": "k1"}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let missing = uuid::Uuid::now_v7().to_string();
    // Everything globex tries on acme's job looks exactly like a missing job.
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/jobs/{id}")),
        (reqwest::Method::POST, format!("/v1/jobs/{id}/cancel")),
        (reqwest::Method::GET, format!("/v1/jobs/{id}/events")),
        (reqwest::Method::POST, format!("/v1/jobs/{id}/stream-token")),
    ] {
        let theirs = req(&app, method.clone(), &path, Some(GLOBEX))
            .send()
            .await
            .unwrap();
        let nobody = req(&app, method, &path.replace(id, &missing), Some(GLOBEX))
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
    let theirs: Value = req(&app, reqwest::Method::GET, "/v1/jobs", Some(GLOBEX))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        theirs["items"].as_array().unwrap().is_empty(),
        "globex lists only its own"
    );
    let mine: Value = req(&app, reqwest::Method::GET, "/v1/jobs", Some(ACME))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    // Idempotency keys are per tenant: globex's k1 is a new job.
    let other = submit_as(
        &app,
        GLOBEX,
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "k1"}),
    )
    .await;
    assert_ne!(other["id"], job["id"]);
    // And acme can still cancel its own.
    let resp = req(
        &app,
        reqwest::Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        Some(ACME),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
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
    let resp = req(
        &app,
        reqwest::Method::GET,
        "/v1/jobs",
        Some(&jwt(good.clone(), secret)),
    )
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
        let resp = req(&app, reqwest::Method::GET, "/v1/jobs", Some(&token))
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
    let job = submit_as(
        &app,
        &token,
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}),
    )
    .await;
    assert!(job["id"].is_string());
    // An HS256 token signed with the public key's bytes must not pass.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "acme", "exp": in_secs(600)}),
        &jsonwebtoken::EncodingKey::from_secret(
            &std::fs::read(format!("{dir}/jwt_rs256_public.pem")).unwrap(),
        ),
    )
    .unwrap();
    let resp = req(&app, reqwest::Method::GET, "/v1/jobs", Some(&forged))
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
    let job = submit_as(
        &app,
        ACME,
        json!({"kind": "demo", "input": {"steps": 12, "step_ms": 250}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let events_url = job["links"]["events"].as_str().unwrap().to_owned();
    assert!(events_url.contains("?token="), "{events_url}");

    // The token alone opens the stream; read a few events, then let it go.
    let resp = app.client.get(app.url(&events_url)).send().await.unwrap();
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
    let other = submit_as(
        &app,
        ACME,
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}),
    )
    .await;
    let token = events_url.split("token=").nth(1).unwrap();
    let resp = app
        .client
        .get(app.url(&format!(
            "/v1/jobs/{}/events?token={token}",
            other["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // After the TTL the token is refused; a fresh one and Last-Event-ID deliver the rest.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = app
        .client
        .get(app.url(&events_url))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let p: Value = resp.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("expired"));
    let fresh: Value = req(
        &app,
        reqwest::Method::POST,
        &format!("/v1/jobs/{id}/stream-token"),
        Some(ACME),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(fresh["expires_at"].as_str().unwrap().ends_with('Z'));
    let rest = read_to_end(
        app.client
            .get(app.url(fresh["events_url"].as_str().unwrap()))
            .header("Last-Event-ID", "3")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mut all = first.clone();
    all.extend(ids(&rest));
    let n = all.len() as i64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>(), "every event exactly once");
    assert_eq!(rest.last().unwrap().event, "result");
    app.stop().await;
}

async fn cors_answers_allowed_origins_only() {
    let app = keyed(|c| c.cors_origins = vec!["https://dash.example".into()]).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/jobs"))
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

    let resp = req(&app, reqwest::Method::GET, "/v1/jobs", Some(ACME))
        .header("Origin", "https://dash.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://dash.example"
    );

    let resp = req(&app, reqwest::Method::GET, "/v1/jobs", Some(ACME))
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
    for _ in 0..5 {
        let resp = req(&app, reqwest::Method::POST, "/v1/jobs", Some(ACME))
            .json(&json!({"kind": "demo", "input": {"steps": 100, "step_ms": 100}}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 202 && first_id.is_none() {
            let job: Value = resp.json().await.unwrap();
            first_id = job["id"].as_str().map(str::to_owned);
            continue;
        }
        if resp.status() == 429 {
            retry_after = Some(resp.headers()["retry-after"].to_str().unwrap().to_owned());
            let p: Value = resp.json().await.unwrap();
            assert_eq!(p["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], [202, 202, 202]);
    assert_eq!(statuses[3], 429);
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    // Another tenant has its own bucket.
    let resp = req(&app, reqwest::Method::POST, "/v1/jobs", Some(GLOBEX))
        .json(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // Streams: two open, the third is 429. (The job runs for 10 s.)
    let id = first_id.expect("a job was accepted");
    let path = format!("/v1/jobs/{id}/events");
    let s1 = req(&app, reqwest::Method::GET, &path, Some(ACME))
        .send()
        .await
        .unwrap();
    let s2 = req(&app, reqwest::Method::GET, &path, Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (s1.status(), s2.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let s3 = req(&app, reqwest::Method::GET, &path, Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(s3.status(), 429);
    assert!(s3.headers().contains_key("retry-after"));
    drop(s1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = req(&app, reqwest::Method::GET, &path, Some(ACME))
            .send()
            .await
            .unwrap();
        if s.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream frees its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(s2);

    // Input nested deeper than 64 levels: 422.
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    let body = format!(r#"{{"kind": "demo", "input": {deep}}}"#);
    let resp = req(&app, reqwest::Method::POST, "/v1/jobs", Some(GLOBEX))
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
    let herald = HeraldProcess::start(
        &dir.path().join("h.db"),
        "debug",
        &[("HERALD_AUTH", "api-keys"), ("HERALD_API_KEYS", &keys)],
    );
    let addr = herald.base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(ACME)
        .json(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = job["links"]["events"].as_str().unwrap();
    let token = events.split("token=").nth(1).unwrap().to_owned();
    let body = client
        .get(format!("http://{addr}{events}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: result"));
    tokio::time::sleep(Duration::from_millis(500)).await;
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
