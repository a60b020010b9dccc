//! The whole OpenAPI through one URL (design §9), black-box: the real binary in front of the
//! sandbox, over loopback sockets. Callers send no Fxiaoke credential; fxgate injects the
//! corp's token in the caller's style, checks the user it acts as, keeps every other body byte,
//! and answers its own token endpoints with caller-bound `fxg_` tokens for unmodified SDKs.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::sdk::FxiaokeSdk;
use support::*;

const LEGACY_KEY: &str = "legacy-key-0b5d7c9e21";
const OAUTH_KEY: &str = "oauth-key-6f2a8d4c13";

/// `legacy` (default style, acts as FSUID_A or FSUID_B) and `oauth` (acts as 1000), both
/// limited to media, messages and CRM queries.
fn callers() -> [ClientFile; 2] {
    let routes = list(&["/media/*", "/cgi/message/send", "/cgi/crm/v2/data/query"]);
    [
        ClientFile {
            act_as: list(&["FSUID_A", "FSUID_B"]),
            routes: routes.clone(),
            ..caller("legacy", LEGACY_KEY)
        },
        ClientFile {
            api_style: some("oauth"),
            act_as: list(&["1000"]),
            routes,
            ..caller("oauth", OAUTH_KEY)
        },
    ]
}

/// The standard config with `callers()`, after `edit`.
fn with_callers(base_url: &str, edit: impl FnOnce(&mut FileConfig)) -> FileConfig {
    standard(base_url).with(|c| {
        c.add(callers());
        edit(c);
    })
}

fn setup(sandbox_args: &[&str], edit: impl FnOnce(&mut FileConfig)) -> (Sandbox, Gateway) {
    let sandbox = Sandbox::spawn(sandbox_args);
    let gateway = Gateway::spawn(&with_callers(&sandbox.url, edit));
    (sandbox, gateway)
}

async fn post(
    gw: &Gateway,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_with(gw, path, key, body, &[]).await
}

async fn post_with(
    gw: &Gateway,
    path: &str,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

fn image_message(media_id: &str) -> String {
    json!({"toUser": ["FSUID_X"], "msgType": "image", "image": {"mediaId": media_id}}).to_string()
}

#[tokio::test]
async fn an_uploaded_image_is_sent_in_either_style_without_a_fxiaoke_credential() {
    let (sandbox, gw) = setup(&[], |_| {});
    let http = client();
    let url = format!("{}/media/upload/message", gw.url);
    let (s, _, up) = upload_multipart(&http, &url, LEGACY_KEY, jpeg(4000, 7), "a.jpg").await;
    assert_eq!(s, 200, "{up}");
    let media_id = up["mediaId"].as_str().unwrap().to_string();

    let (s, h, sent) = post(
        &gw,
        "/cgi/message/send",
        LEGACY_KEY,
        &image_message(&media_id),
    )
    .await;
    assert_eq!((s, &sent["errorCode"]), (200, &json!(0)), "{sent}");
    assert!(h.contains_key("x-request-id"));
    let (s, _, sent) = post(
        &gw,
        "/cgi/message/send",
        OAUTH_KEY,
        &image_message(&media_id),
    )
    .await;
    assert_eq!((s, &sent["errorCode"]), (200, &json!(0)), "{sent}");

    let messages = sandbox.messages().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["media_id"], media_id.as_str());
    assert_eq!(
        (&messages[0]["style"], &messages[0]["sender"]),
        (&json!("legacy"), &json!("FSUID_A"))
    );
    assert_eq!(
        (&messages[1]["style"], &messages[1]["sender"]),
        (&json!("oauth"), &json!("1000"))
    );

    // A mediaId the sandbox never issued: its own refusal comes back as it answered it.
    let (s, _, refused) = post(&gw, "/cgi/message/send", LEGACY_KEY, &image_message("nope")).await;
    assert_eq!(s, 200);
    assert_eq!(refused["errorCode"], 10010);
    assert_eq!(refused["errorMessage"], "mediaId does not exist");
    assert!(refused["traceId"]
        .as_str()
        .unwrap()
        .starts_with("E-O.sandbox."));
    assert_eq!(sandbox.stats().await["messages_sent"], 2);
}

#[tokio::test]
async fn every_body_byte_but_the_credentials_reaches_fxiaoke_unchanged() {
    let (sandbox, gw) = setup(&[], |_| {});
    // Non-ASCII, `__c`/`__C` custom fields, numbers spelt as a re-serialiser would not keep
    // them, and a key order no sorted map would give.
    let body = r#"{"zeta":1.50,"data":{"dataObjectApiName":"AccountObj","UDSText1__C":"客户 “甲”\u00e9","field_Ab__c":[3,2,1e2]},"alpha":null}"#;
    let (s, h, answer) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, body).await;
    assert_eq!((s, &answer["errorCode"]), (200, &json!(0)), "{answer}");
    assert_eq!(answer["data"]["dataList"][0]["owner"], json!(["FSUID_A"]));
    assert_eq!(h["content-type"], "application/json");
    let token = sandbox.tokens().await[0].clone();
    let got = sandbox.received().await;
    let legacy = got.last().unwrap();
    let expected = format!(
        r#"{{"corpAccessToken":"{token}","corpId":"FSCID_SANDBOX0000000000000000000","currentOpenUserId":"FSUID_A",{}"#,
        &body[1..]
    );
    assert_eq!(legacy["body"], expected.as_str());

    // OAuth style: nothing injected into the body; the token and user travel in headers.
    let (s, _, answer) = post_with(&gw, "/cgi/crm/v2/data/query", OAUTH_KEY, body, &[]).await;
    assert_eq!((s, &answer["errorCode"]), (200, &json!(0)), "{answer}");
    let got = sandbox.received().await;
    let oauth = got.last().unwrap();
    assert_eq!(oauth["body"], body);
    let header = |name: &str| {
        oauth["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert!(header("authorization").unwrap().starts_with("Bearer sbxo"));
    assert_eq!(header("x-fs-ea").as_deref(), Some("sandbox_ea"));
    assert_eq!(header("x-fs-userid").as_deref(), Some("1000"));

    // A caller's own credentials and user are never forwarded, wherever they sit.
    let with_creds = r#"{"corpAccessToken":"mine","a":"1","corpId":"x","currentOpenUserId":"FSUID_B","data":{"dataObjectApiName":"X"}}"#;
    let (s, _, _) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, with_creds).await;
    assert_eq!(s, 200);
    let got = sandbox.received().await;
    let body = got.last().unwrap()["body"].as_str().unwrap().to_string();
    assert_eq!(
        body,
        format!(
            r#"{{"corpAccessToken":"{token}","corpId":"FSCID_SANDBOX0000000000000000000","currentOpenUserId":"FSUID_B","a":"1","data":{{"dataObjectApiName":"X"}}}}"#
        )
    );
}

#[tokio::test]
async fn users_and_routes_outside_the_callers_lists_are_refused_before_anything_goes_upstream() {
    let (sandbox, gw) = setup(&[], |_| {});
    let (s, _, e) = post(&gw, "/cgi/user/get", LEGACY_KEY, "{}").await;
    assert_eq!((s, &e["errorCode"]), (403, &json!(940301)), "{e}");
    let as_other = json!({"currentOpenUserId": "FSUID_Z", "toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let (s, _, e) = post(&gw, "/cgi/message/send", LEGACY_KEY, &as_other.to_string()).await;
    assert_eq!((s, &e["errorCode"]), (403, &json!(940302)), "{e}");
    assert!(e["errorDescription"].as_str().unwrap().contains("FSUID_Z"));
    let text = json!({"toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let (s, _, e) = post_with(
        &gw,
        "/cgi/message/send",
        OAUTH_KEY,
        &text.to_string(),
        &[("x-fs-userid", "2000")],
    )
    .await;
    assert_eq!((s, &e["errorCode"]), (403, &json!(940302)), "{e}");
    // The callers without lists (alpha) may call any path but may name no user.
    let (s, _, e) = post(&gw, "/cgi/message/send", ALPHA_KEY, &as_other.to_string()).await;
    assert_eq!((s, &e["errorCode"]), (403, &json!(940302)), "{e}");
    assert_eq!(sandbox.stats().await["cgi_calls"], 0);
    // A user in the list passes.
    let as_b = json!({"currentOpenUserId": "FSUID_B", "toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let (s, _, ok) = post(&gw, "/cgi/message/send", LEGACY_KEY, &as_b.to_string()).await;
    assert_eq!((s, &ok["errorCode"]), (200, &json!(0)), "{ok}");
    assert_eq!(sandbox.messages().await[0]["sender"], "FSUID_B");
}

#[tokio::test]
async fn a_rejected_token_is_checked_and_retried_once_only_when_a_new_one_comes_back() {
    let (sandbox, gw) = setup(&[], |_| {});
    let query = r#"{"data":{"dataObjectApiName":"AccountObj"}}"#;
    for key in [LEGACY_KEY, OAUTH_KEY] {
        let (s, _, a) = post(&gw, "/cgi/crm/v2/data/query", key, query).await;
        assert_eq!((s, &a["errorCode"]), (200, &json!(0)), "{a}");
    }
    let before = sandbox.stats().await;
    // Fxiaoke forgets every token: the next call of each style meets 20016, invisibly.
    sandbox
        .faults(Faults {
            revoke_tokens: true,
            ..Faults::default()
        })
        .await;
    for key in [LEGACY_KEY, OAUTH_KEY] {
        let (s, _, a) = post(&gw, "/cgi/crm/v2/data/query", key, query).await;
        assert_eq!((s, &a["errorCode"]), (200, &json!(0)), "{a}");
    }
    let after = sandbox.stats().await;
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("cgi_calls"), 4, "one retry per style");
    assert_eq!(delta("token_rejected"), 2);
    assert_eq!((delta("token_calls"), delta("oauth_token_calls")), (1, 1));

    // Refused while the token endpoint still hands out the same token: the rejection was
    // about the call; Fxiaoke's answer goes back as it is, never retried or looped.
    sandbox
        .faults(Faults {
            reject_calls: 5,
            ..Faults::default()
        })
        .await;
    let (s, _, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, query).await;
    assert_eq!((s, &e["errorCode"]), (200, &json!(20016)), "{e}");
    let last = sandbox.stats().await;
    let since = |k: &str| last[k].as_u64().unwrap() - after[k].as_u64().unwrap();
    assert_eq!((since("cgi_calls"), since("token_calls")), (1, 1));
    // Within a minute of that check the same token is not checked again.
    let (s, _, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, query).await;
    assert_eq!((s, &e["errorCode"]), (200, &json!(20016)), "{e}");
    assert_eq!(sandbox.stats().await["token_calls"], last["token_calls"]);
}

#[tokio::test]
async fn three_hundred_calls_at_a_cold_start_make_one_call_to_each_token_endpoint() {
    let (sandbox, gw) = setup(&["--no-path-limit"], |_| {});
    let query = r#"{"data":{"dataObjectApiName":"AccountObj"}}"#;
    let calls = (0..300).map(|i| {
        let key = if i % 2 == 0 { LEGACY_KEY } else { OAUTH_KEY };
        post(&gw, "/cgi/crm/v2/data/query", key, query)
    });
    let answers = futures_util::future::join_all(calls).await;
    for (s, _, a) in &answers {
        assert_eq!((*s, &a["errorCode"]), (200, &json!(0)), "{a}");
    }
    let stats = sandbox.stats().await;
    assert_eq!(
        (
            stats["token_calls"].as_u64(),
            stats["oauth_token_calls"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(stats["token_rejected_concurrent"], 0);
    assert_eq!(stats["oauth_token_rejected_concurrent"], 0);
    assert_eq!(stats["cgi_calls"], 300);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"fxgate_token_refresh_total{corp="default",flow="oauth",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"fxgate_requests_total{client="oauth",route="/cgi/crm/v2/data/query",status="200"}"#
        ),
        150.0
    );
}

#[tokio::test]
async fn each_path_has_its_own_budget_and_fxiaokes_limit_becomes_a_429() {
    let (sandbox, gw) = setup(&[], |c| c.corp().upstream_requests_per_20s = Some(100));
    let query = r#"{"data":{"dataObjectApiName":"AccountObj"}}"#;
    for _ in 0..100 {
        let (s, _, a) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, query).await;
        assert_eq!(s, 200, "{a}");
    }
    // Another path is not starved by the first one's spent window.
    let text = json!({"toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let (s, _, a) = post(&gw, "/cgi/message/send", LEGACY_KEY, &text.to_string()).await;
    assert_eq!((s, &a["errorCode"]), (200, &json!(0)), "{a}");
    // The 101st on the same path: fxgate's own 942902, and Fxiaoke never sees it.
    let (s, h, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, query).await;
    assert_eq!((s, &e["errorCode"]), (429, &json!(942902)), "{e}");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(sandbox.stats().await["cgi_calls"], 101);
    drop(gw);

    // With fxgate's budget above Fxiaoke's, Fxiaoke's own 14001 is a 429 as for uploads.
    let gw = Gateway::spawn(&with_callers(&sandbox.url, |_| {}));
    let (s, h, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, query).await;
    assert_eq!((s, &e["errorCode"]), (429, &json!(942902)), "{e}");
    assert!(
        e["errorDescription"].as_str().unwrap().contains("14001"),
        "{e}"
    );
    assert!(h.contains_key("retry-after"));
    assert_eq!(sandbox.stats().await["cgi_rate_limited"], 1);
}

#[tokio::test]
async fn bad_passthrough_bodies_get_envelopes() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox.url, |c| {
        c.passthrough.max_body = some("1KiB")
    }));
    let (s, _, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, "[1,2]").await;
    assert_eq!((s, &e["errorCode"]), (400, &json!(940003)), "{e}");
    let (s, _, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, "{\"a\":").await;
    assert_eq!((s, &e["errorCode"]), (400, &json!(940003)), "{e}");
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(2000));
    let (s, _, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, &big).await;
    assert_eq!((s, &e["errorCode"]), (413, &json!(941301)), "{e}");
    // The same bound holds for a body read to find an SDK's token in it.
    let r = client()
        .post(format!("{}/cgi/crm/v2/data/query", gw.url))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(sandbox.stats().await["cgi_calls"], 0);
}

#[tokio::test]
async fn an_unmodified_sdk_pointed_at_fxgate_uploads_and_sends_and_never_sees_the_real_token() {
    // The same client against "Fxiaoke" itself first: it is a faithful SDK, not a fxgate one.
    // (Before fxgate starts: Fxiaoke refuses concurrent token calls, from anyone.)
    let sandbox = Sandbox::spawn(&[]);
    let direct = FxiaokeSdk::new(
        &sandbox.url,
        "sandbox-app",
        APP_SECRET,
        "sandbox-permanent-code",
    );
    let up = direct.upload_image(jpeg(3000, 1), "d.jpg").await;
    assert_eq!(up["errorCode"], 0, "{up}");
    let gw = Gateway::spawn(&with_callers(&sandbox.url, |_| {}));

    // Pointed at fxgate: its appId is the caller's name, its appSecret the gateway key.
    let sdk = FxiaokeSdk::new(&gw.url, "legacy", LEGACY_KEY, "anything");
    let (token, corp_id) = sdk.token().await;
    assert!(
        token.starts_with("fxg_") && token.len() >= 4 + 43,
        "{token}"
    );
    assert_eq!(corp_id, "FSCID_SANDBOX0000000000000000000");
    let up = sdk.upload_image(jpeg(3000, 2), "s.jpg").await;
    assert_eq!(up["errorCode"], 0, "{up}");
    let media_id = up["mediaId"].as_str().unwrap();
    let sent = sdk
        .call(
            "/cgi/message/send",
            "FSUID_B",
            json!({"toUser": ["FSUID_X"], "msgType": "image", "image": {"mediaId": media_id}}),
        )
        .await;
    assert_eq!(sent["errorCode"], 0, "{sent}");
    assert_eq!(sandbox.messages().await[0]["sender"], "FSUID_B");
    // Its user list still applies.
    let refused = sdk
        .call(
            "/cgi/message/send",
            "FSUID_Z",
            json!({"toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "x"}}),
        )
        .await;
    assert_eq!(refused["errorCode"], 940302);
    // A made-up token is Fxiaoke's 20016, with HTTP 200, which the SDK knows how to handle.
    let r = client()
        .post(format!("{}/cgi/message/send", gw.url))
        .json(&json!({"corpAccessToken": "fxg_madeup", "corpId": corp_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], 20016);
    // A wrong appSecret gets no token.
    let wrong = client()
        .post(format!("{}/oauth2.0/token", gw.url))
        .json(&json!({"appId": "legacy", "appSecret": "nope", "permanentCode": "x", "grantType": "app_secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The corp's real tokens appear in no answer, header or log line.
    let real = sandbox.tokens().await;
    assert!(!real.is_empty());
    let seen = sdk.seen.lock().join("\n");
    let logs = gw.logs();
    for t in &real {
        assert!(!seen.contains(t.as_str()), "a real token reached the SDK");
        assert!(!logs.contains(t.as_str()), "a real token reached the log");
    }
    assert!(!logs.contains(&token), "an fxg_ token reached the log");
    assert!(!logs.contains(LEGACY_KEY));
    assert_eq!(
        sdk.token_fetches.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn the_oauth_endpoint_answers_an_oauth_token_for_header_style_calls() {
    let (sandbox, gw) = setup(&[], |_| {});
    let r: Value = client()
        .post(format!("{}/oauth2.0/token?thirdTraceId={}", gw.url, uuid::Uuid::new_v4()))
        .json(&json!({"appId": "oauth", "appSecret": OAUTH_KEY, "permanentCode": "x", "grantType": "app_secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["errorCode"], 0, "{r}");
    assert_eq!(r["ea"], "sandbox_ea");
    let token = r["accessToken"].as_str().unwrap();
    assert!(token.starts_with("fxg_"));
    assert!(r["expiresIn"].as_u64().unwrap() <= 7200);
    let text = json!({"toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let resp = client()
        .post(format!("{}/cgi/message/send", gw.url))
        .bearer_auth(token)
        .header("x-fs-ea", "sandbox_ea")
        .header("x-fs-userid", "1000")
        .json(&text)
        .send()
        .await
        .unwrap();
    let a: Value = resp.json().await.unwrap();
    assert_eq!(a["errorCode"], 0, "{a}");
    assert_eq!(sandbox.messages().await[0]["style"], "oauth");
    assert!(!sandbox.tokens().await.iter().any(|t| t == token));
}

#[tokio::test]
async fn an_expired_fxg_token_is_20016_and_the_sdk_fetches_another() {
    let opts = fxgate::sandbox::SandboxOptions::default();
    let gw = InProcess::spawn(opts, |c| c.add(callers())).await;
    let sdk = FxiaokeSdk::new(&gw.url, "legacy", LEGACY_KEY, "anything");
    let text = json!({"toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let a = sdk.call("/cgi/message/send", "FSUID_A", text.clone()).await;
    assert_eq!(a["errorCode"], 0, "{a}");
    let (first, _) = sdk.token().await;
    // Past the real token's life, so past ours too.
    gw.advance(Duration::from_secs(7300));
    let a = sdk.call("/cgi/message/send", "FSUID_A", text).await;
    assert_eq!(a["errorCode"], 0, "{a}");
    assert_eq!(
        sdk.token_fetches.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_ne!(sdk.token().await.0, first);
    assert!(sdk
        .seen
        .lock()
        .iter()
        .any(|s| s.contains("\"errorCode\":20016")));
}

#[tokio::test]
async fn a_reload_applies_new_users_styles_and_routes() {
    let (sandbox, gw) = setup(&[], |_| {});
    let as_c = json!({"currentOpenUserId": "FSUID_C", "toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let (s, _, _) = post(&gw, "/cgi/message/send", LEGACY_KEY, &as_c.to_string()).await;
    assert_eq!(s, 403);
    gw.rewrite_config(&with_callers(&sandbox.url, |c| {
        c.client("legacy").act_as = list(&["FSUID_C"]);
        c.client("oauth").api_style = some("legacy");
    }));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let (s, _, a) = post(&gw, "/cgi/message/send", LEGACY_KEY, &as_c.to_string()).await;
    assert_eq!((s, &a["errorCode"]), (200, &json!(0)), "{a}");
    // `oauth` now speaks legacy: its default user goes into the body.
    let text = json!({"toUser": ["FSUID_X"], "msgType": "text", "text": {"content": "hi"}});
    let (s, _, a) = post(&gw, "/cgi/message/send", OAUTH_KEY, &text.to_string()).await;
    assert_eq!((s, &a["errorCode"]), (200, &json!(0)), "{a}");
    let messages = sandbox.messages().await;
    assert_eq!(
        (&messages[1]["style"], &messages[1]["sender"]),
        (&json!("legacy"), &json!("1000"))
    );
    let clients = gw.admin_clients().await;
    let legacy = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "legacy")
        .unwrap();
    assert_eq!(legacy["act_as"], json!(["FSUID_C"]));
}
