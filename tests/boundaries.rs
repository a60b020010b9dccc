//! The boundaries a caller can never cross (design §9, Boundaries), each tried as an attacker
//! would, black-box through real sockets: one spelling per path, credential members in any
//! spelling, `fxg_` tokens bound to the credential that minted them (two replicas on a real
//! Redis), nothing held for a caller not yet known, one caller's token rejection never
//! stalling another, bounded answers and errors. Paths go over a raw socket: an HTTP client
//! library would resolve the dot segments and percent-encoding these tests are about.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DATA_KEY: &str = "data-key-5c1e9a7b3d";
const LEGACY_KEY: &str = "legacy-key-0b5d7c9e21";
const OAUTH_KEY: &str = "oauth-key-6f2a8d4c13";
const STALLED_KEY: &str = "stalled-key-2e8f4a6c91";

/// `data` may call `/cgi/crm/v2/data/*` only (legacy style, acts as FSUID_A); `legacy` and
/// `oauth` may call media and messages too.
fn callers() -> Vec<ClientFile> {
    let all = list(&["/media/*", "/cgi/message/send", "/cgi/crm/v2/data/*"]);
    vec![
        ClientFile {
            act_as: list(&["FSUID_A"]),
            routes: list(&["/cgi/crm/v2/data/*"]),
            ..caller("data", DATA_KEY)
        },
        ClientFile {
            act_as: list(&["FSUID_A", "FSUID_B"]),
            routes: all.clone(),
            ..caller("legacy", LEGACY_KEY)
        },
        ClientFile {
            api_style: some("oauth"),
            act_as: list(&["1000"]),
            routes: all,
            ..caller("oauth", OAUTH_KEY)
        },
    ]
}

/// The standard config with `callers()` beside alpha and beta, after `edit`.
fn with_callers(sandbox: &Sandbox, edit: impl FnOnce(&mut FileConfig)) -> FileConfig {
    standard(&sandbox.url).with(|c| {
        c.add(callers());
        edit(c);
    })
}

/// One raw HTTP/1.1 request (`target` sent byte for byte), answered and closed: the status
/// and the body (`Value::Null` when it is not JSON).
async fn raw(gw: &Gateway, target: &[u8], headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut req = b"POST ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").as_bytes());
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    tcp.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn post(gw: &Gateway, path: &str, key: &str, body: &str) -> (u16, Value) {
    post_with(gw, path, key, body, &[]).await
}

async fn post_with(
    gw: &Gateway,
    path: &str,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{path}", gw.url))
        .header("content-type", "application/json")
        .body(body.to_string());
    if !key.is_empty() {
        req = req.bearer_auth(key);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const QUERY: &str = r#"{"data":{"dataObjectApiName":"AccountObj"}}"#;

/// Every spelling of a path but the canonical one, each aimed at a boundary: the `data`
/// caller's allow-list, Fxiaoke's own token endpoints, a second budget window, a label.
fn spellings() -> Vec<Vec<u8>> {
    let long_segment = format!("/cgi/crm/v2/data/{}", "q".repeat(200));
    let long_path = format!("/cgi/crm/v2/data/{}query", "a/".repeat(300));
    let mut table: Vec<Vec<u8>> = [
        "/cgi/crm/v2/data/../../../message/send",
        "/cgi/crm/v2/data/%2e%2e/%2e%2e/%2e%2e/message/send",
        "/cgi/crm/v2/data/%2E%2E/%2E%2E/%2E%2E/message/send",
        "/cgi/crm/v2/data/.%2e/.%2E/%2e./message/send",
        "/cgi/crm/v2/data/..;/..;/..;/message/send",
        "/cgi/crm/v2/data/..;jsessionid=x/../../message/send",
        "/cgi/crm/v2/data/query;x=1",
        "/cgi/crm/v2/data/\\..\\..\\..\\message\\send",
        "/cgi/crm/v2/data\\query",
        "/cgi/crm/v2/data/%5c..%5c..%5c..%5cmessage%5csend",
        "/cgi/crm/v2/data/%2f..%2f..%2f..%2fmessage%2fsend",
        "/cgi/crm/v2/data/query%2F..%2F..%2F..%2Fmessage%2Fsend",
        "/cgi/crm/v2/data//query",
        "/cgi/crm/v2/data/./query",
        "/cgi/crm/v2/data/query/",
        "/cgi/crm/v2/data/query/.",
        "/cgi/crm/v2/data/query/..",
        "//cgi/crm/v2/data/query",
        "/cgi//crm/v2/data/query",
        "/cgi/crm/v2/data/%71uery",
        "/cgi/crm/v2/data/query%00",
        "/cgi/crm/v2/data/query%0a",
        "/cgi/crm/v2/data/qu%20ery",
        "/cgi/corpAccessToken/get/V2/",
        "/cgi/corpAccessToken/get/V2;",
        "/cgi/CorpAccessToken/get/V2",
        "/cgi/corpaccesstoken/get/v2",
        "/cgi/corpAccessToken/get/V2.json",
        "/cgi/../oauth2.0/token",
        "/cgi/%2e%2e/oauth2.0/token",
        "/cgi/crm/v2/data/../../corpAccessToken/get/V2",
        "/oauth2.0/token/",
        "/OAUTH2.0/TOKEN",
        "/media/upload/message/",
        "/media//upload/message",
        "/",
        long_segment.as_str(),
        long_path.as_str(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    table.push(b"/cgi/crm/v2/data/qu\xc3\xa9ry".to_vec());
    table
}

#[tokio::test]
async fn every_other_spelling_of_a_path_is_refused_before_anything_decides() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox, |_| {}));
    // Once a call went through, the token is held: nothing below needs the token endpoint.
    let (status, body) = post(&gw, "/cgi/crm/v2/data/query", DATA_KEY, QUERY).await;
    assert_eq!((status, &body["errorCode"]), (200, &json!(0)), "{body}");
    let before = sandbox.stats().await;
    let received = sandbox.received().await.len();
    let table = spellings();
    assert!(table.len() >= 30);
    for target in &table {
        let shown = String::from_utf8_lossy(target);
        let auth = format!("Bearer {DATA_KEY}");
        let (status, body) = raw(&gw, target, &[("Authorization", &auth)], QUERY).await;
        assert_eq!(
            (status, &body["errorCode"]),
            (400, &json!(940004)),
            "{shown}: {body}"
        );
        // Anonymous, and with an SDK's body credential: refused the same, before auth.
        let sdk = r#"{"appId":"data","appSecret":"data-key-5c1e9a7b3d","permanentCode":"x"}"#;
        let (status, body) = raw(&gw, target, &[], sdk).await;
        assert_eq!(
            (status, &body["errorCode"]),
            (400, &json!(940004)),
            "{shown}: {body}"
        );
    }
    // Control bytes never make it into a request: the HTTP parser refuses them.
    for target in [
        &b"/cgi/crm/v2/data/qu\x01ery"[..],
        b"/cgi/crm/v2/data/qu\x7fery",
    ] {
        let auth = format!("Bearer {DATA_KEY}");
        let (status, _) = raw(&gw, target, &[("Authorization", &auth)], QUERY).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(target));
    }
    // Nothing reached Fxiaoke, its token endpoints included.
    let after = sandbox.stats().await;
    for counter in ["cgi_calls", "token_calls", "oauth_token_calls"] {
        assert_eq!(after[counter], before[counter], "{counter}");
    }
    assert_eq!(sandbox.received().await.len(), received);
    // The one spelling works, and the allow-list still holds on it.
    let (status, body) = post(&gw, "/cgi/crm/v2/data/query", DATA_KEY, QUERY).await;
    assert_eq!((status, &body["errorCode"]), (200, &json!(0)), "{body}");
    let (status, body) = post(&gw, "/cgi/message/send", DATA_KEY, "{}").await;
    assert_eq!(
        (status, &body["errorCode"]),
        (403, &json!(940301)),
        "{body}"
    );
    // Metric labels saw only the canonical path and `other`.
    let m = gw.metrics().await;
    for line in m
        .lines()
        .filter(|l| l.starts_with("fxgate_requests_total{"))
    {
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert!(
            matches!(
                route,
                Some("other" | "/cgi/crm/v2/data/query" | "/cgi/message/send")
            ),
            "{line}"
        );
    }
}

#[tokio::test]
async fn no_spelling_of_a_path_opens_a_second_budget_window() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox, |c| {
        c.corp().upstream_requests_per_20s = Some(2)
    }));
    let auth = format!("Bearer {DATA_KEY}");
    let mut served = 0;
    for target in [
        "/cgi/crm/v2/data/query",
        "/cgi/crm/v2/data/query",
        "/cgi/crm/v2/data//query",
        "/cgi/crm/v2/data/./query",
        "/cgi/crm/v2/data/query/",
        "//cgi/crm/v2/data/query",
    ] {
        let (status, _) = raw(&gw, target.as_bytes(), &[("Authorization", &auth)], QUERY).await;
        served += u32::from(status == 200);
    }
    assert_eq!(
        served, 2,
        "one window for the interface, whatever the spelling"
    );
    assert_eq!(sandbox.stats().await["cgi_calls"], 2);
}

#[tokio::test]
async fn credential_members_in_any_spelling_are_never_forwarded_and_users_are_checked() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox, |_| {}));
    let smuggled = json!({
        "corp_access_token": "stolen", "CorpId": "FSCID_other", "CORP-ACCESS-TOKEN": "x",
        "data": {"dataObjectApiName": "AccountObj"}, "corpIdentity": 7
    });
    let (status, body) = post(
        &gw,
        "/cgi/crm/v2/data/query",
        LEGACY_KEY,
        &smuggled.to_string(),
    )
    .await;
    assert_eq!((status, &body["errorCode"]), (200, &json!(0)), "{body}");
    let received = sandbox.received().await;
    let forwarded: Value = serde_json::from_str(received[0]["body"].as_str().unwrap()).unwrap();
    let keys: Vec<&str> = forwarded
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in &keys {
        let folded = k.to_lowercase().replace(['_', '-'], "");
        if ["corpaccesstoken", "corpid", "currentopenuserid"].contains(&folded.as_str()) {
            assert!(
                ["corpAccessToken", "corpId", "currentOpenUserId"].contains(k),
                "{keys:?}"
            );
        }
    }
    assert_eq!(forwarded["currentOpenUserId"], "FSUID_A");
    assert_eq!(forwarded["corpIdentity"], 7);
    // A user outside `act_as`, in any spelling, is 403; one that is not a string is 400.
    for key in [
        "CurrentOpenUserId",
        "current_open_user_id",
        "CURRENT-OPEN-USER-ID",
    ] {
        let body = json!({key: "FSUID_EVIL", "data": {"dataObjectApiName": "AccountObj"}});
        let (status, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, &body.to_string()).await;
        assert_eq!(
            (status, &e["errorCode"]),
            (403, &json!(940302)),
            "{key}: {e}"
        );
    }
    let two = r#"{"currentOpenUserId":"FSUID_A","current_open_user_id":"FSUID_EVIL","data":{}}"#;
    let (status, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, two).await;
    assert_eq!((status, &e["errorCode"]), (400, &json!(940003)), "{e}");
    for user in ["1001", "[\"FSUID_A\"]", "{\"id\":\"FSUID_A\"}", "null"] {
        let body = format!(r#"{{"currentOpenUserId":{user},"data":{{"dataObjectApiName":"x"}}}}"#);
        let (status, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, &body).await;
        assert_eq!(
            (status, &e["errorCode"]),
            (400, &json!(940003)),
            "{user}: {e}"
        );
    }
    assert_eq!(
        sandbox.received().await.len(),
        1,
        "no refused call reached Fxiaoke"
    );
    // Download and delete check the user too, in any spelling.
    for (path, user) in [
        ("/media/download", "FSUID_EVIL"),
        ("/media/delete", "FSUID_EVIL"),
    ] {
        for key in ["currentOpenUserId", "CurrentOpenUserID"] {
            let body = json!({"mediaId": "m", "mediaTypeDesc": "IMAGE", key: user});
            let (status, e) = post(&gw, path, LEGACY_KEY, &body.to_string()).await;
            assert_eq!(
                (status, &e["errorCode"]),
                (403, &json!(940302)),
                "{path} {key}: {e}"
            );
        }
        let body = json!({"mediaId": "m", "currentOpenUserId": 1001});
        let (status, e) = post(&gw, path, LEGACY_KEY, &body.to_string()).await;
        assert_eq!(
            (status, &e["errorCode"]),
            (400, &json!(940003)),
            "{path}: {e}"
        );
    }
    let stats = sandbox.stats().await;
    assert_eq!(
        (stats["downloads"].as_u64(), stats["deletes"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn errors_on_json_routes_are_worded_for_them_and_echo_little() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox, |c| {
        c.passthrough.max_body = some("1KiB")
    }));
    let big = format!(r#"{{"data":{{"x":"{}"}}}}"#, "y".repeat(4000));
    let (status, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, &big).await;
    assert_eq!((status, &e["errorCode"]), (413, &json!(941301)), "{e}");
    let words = format!("{} {}", e["errorMessage"], e["errorDescription"]);
    assert!(
        !words.contains("file") && !words.contains("media"),
        "{words}"
    );
    let long_user = "U".repeat(100_000);
    let body = json!({"currentOpenUserId": long_user, "data": {}}).to_string();
    let resp = client()
        .post(format!("{}/cgi/crm/v2/data/query", gw.url))
        .bearer_auth(LEGACY_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    // The body is over max_body here; the act_as answer is tried within the limit below.
    assert_eq!(resp.status(), 413);
    drop(gw);
    let gw = Gateway::spawn(&with_callers(&sandbox, |_| {}));
    let resp = client()
        .post(format!("{}/cgi/crm/v2/data/query", gw.url))
        .bearer_auth(LEGACY_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 1024, "a {}-byte answer", text.len());
}

#[tokio::test]
async fn a_passthrough_answer_over_a_mib_streams_back_whole_up_to_the_cap() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox, |c| {
        c.passthrough.max_answer = some("8MiB")
    }));
    let ask = |pad: u64| json!({"data": {"dataObjectApiName": "AccountObj", "padBytes": pad}});
    let resp = client()
        .post(format!("{}/cgi/crm/v2/data/query", gw.url))
        .bearer_auth(LEGACY_KEY)
        .body(ask(3 << 20).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes).expect("the whole answer");
    assert_eq!(answer["errorCode"], 0);
    assert_eq!(
        answer["data"]["dataList"][0]["remark"]
            .as_str()
            .unwrap()
            .len(),
        3 << 20
    );
    let (status, e) = post(
        &gw,
        "/cgi/crm/v2/data/query",
        LEGACY_KEY,
        &ask(9 << 20).to_string(),
    )
    .await;
    assert_eq!((status, &e["errorCode"]), (502, &json!(950202)), "{e}");
    // Both counted, under the errorCode their first MiB holds (`none` here: the sandbox
    // writes `data` before `errorCode`).
    let m = gw.metrics().await;
    let counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("fxgate_upstream_requests_total{"))
        .filter(|l| l.contains(r#"route="/cgi/crm/v2/data/query""#))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 2.0, "{m}");
}

/// A token minted by `key` through `gw`'s legacy token endpoint, as an SDK asks for one.
async fn mint(gw: &Gateway, name: &str, key: &str) -> String {
    let (token, _) = support::sdk::FxiaokeSdk::new(&gw.url, name, key, "any")
        .token()
        .await;
    assert!(token.starts_with("fxg_"), "{token}");
    token
}

/// A query carrying `token` as a legacy SDK does: its errorCode.
async fn use_token(gw: &Gateway, token: &str) -> Value {
    let body = json!({"corpAccessToken": token, "corpId": "x", "data": {"dataObjectApiName": "AccountObj"}});
    let (status, answer) = post(gw, "/cgi/crm/v2/data/query", "", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer["errorCode"].clone()
}

/// Two replicas on one Redis, each with its config file rewritten to `clients` and reloaded.
async fn reload_both(
    a: &Gateway,
    b: &Gateway,
    sandbox: &Sandbox,
    redis: &RedisServer,
    clients: &[ClientFile],
) {
    for gw in [a, b] {
        gw.rewrite_config(&standard(&sandbox.url).with(|c| {
            c.store = redis_store(redis, "open");
            c.add(clients.to_vec());
        }));
        assert_eq!(gw.reload().await.status(), 200);
    }
}

#[tokio::test]
async fn an_fxg_token_dies_with_the_key_that_minted_it_on_every_replica() {
    const NEW_KEY: &str = "legacy-key-rotated-77aa";
    let sandbox = Sandbox::spawn(&[]);
    let redis = RedisServer::start();
    let spawn = || {
        Gateway::spawn(&with_callers(&sandbox, |c| {
            c.store = redis_store(&redis, "open")
        }))
    };
    let (a, b) = (spawn(), spawn());
    let token = mint(&a, "legacy", LEGACY_KEY).await;
    assert_eq!(use_token(&b, &token).await, 0, "any replica accepts it");

    // A token never mints another: only a key or a certificate does.
    let (status, e) = post(&b, "/cgi/corpAccessToken/get/V2", &token, "{}").await;
    assert_eq!((status, &e["errorCode"]), (401, &json!(940101)), "{e}");
    assert!(
        e["errorDescription"]
            .as_str()
            .unwrap()
            .contains("cannot mint"),
        "{e}"
    );
    let in_body = json!({"corpAccessToken": token, "appId": "legacy"}).to_string();
    let (status, _) = post(&a, "/oauth2.0/token", "", &in_body).await;
    assert_eq!(status, 401);

    // The key is replaced: tokens it minted die at the reload, on both replicas.
    let mut rotated = callers();
    rotated[1].key_sha256 = Some(sha256_hex(NEW_KEY.as_bytes()));
    reload_both(&a, &b, &sandbox, &redis, &rotated).await;
    assert_eq!(use_token(&a, &token).await, 20016);
    assert_eq!(use_token(&b, &token).await, 20016);
    let fresh = mint(&b, "legacy", NEW_KEY).await;
    assert_eq!(use_token(&a, &fresh).await, 0);

    // The new key passes its `not_after` (and another takes over): its tokens die too.
    let mut expired = callers();
    expired[1].key_sha256 = None;
    expired[1].keys = Some(vec![
        KeyFile {
            sha256: Some(sha256_hex(NEW_KEY.as_bytes())),
            not_after: some("2020-01-01T00:00:00Z"),
        },
        KeyFile {
            sha256: Some(sha256_hex(b"third-key-0c0c0c")),
            not_after: None,
        },
    ]);
    reload_both(&a, &b, &sandbox, &redis, &expired).await;
    assert_eq!(use_token(&a, &fresh).await, 20016);
    assert_eq!(use_token(&b, &fresh).await, 20016);

    // The caller is removed: its tokens die with it.
    let third = mint(&a, "legacy", "third-key-0c0c0c").await;
    assert_eq!(use_token(&b, &third).await, 0);
    let without = ClientFile {
        act_as: list(&["FSUID_A"]),
        ..caller("data", DATA_KEY)
    };
    reload_both(&a, &b, &sandbox, &redis, &[without]).await;
    assert_eq!(use_token(&a, &third).await, 20016);
    assert_eq!(use_token(&b, &third).await, 20016);
}

#[tokio::test]
async fn anonymous_bodies_wait_in_their_own_small_pool_and_never_take_a_callers_place() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_callers(&sandbox, |c| {
        c.server.max_inflight = Some(4);
        c.server.max_unauthenticated = Some(4);
        c.server.unauthenticated_body_bytes = some("64KiB");
        // Long enough that the pool is still full when the probes below arrive on a loaded
        // 2-core CI machine (at 2 s, a test starved that long saw only 401s); far from 30 s.
        c.server.unauthenticated_body_timeout = some("5s");
    }));
    let (status, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, QUERY).await;
    assert_eq!((status, &e["errorCode"]), (200, &json!(0)), "{e}");
    let addr = gw.url.trim_start_matches("http://").to_string();
    // Four anonymous callers announce 1000 bytes and send 10: they fill the pool.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /cgi/crm/v2/data/query HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n{{\"data\":1,"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        slow.push(tcp);
    }
    // Until they are all in the pool a fifth anonymous call is served (401); then it is 503.
    let started = Instant::now();
    let full = loop {
        let (status, e) = post(&gw, "/cgi/crm/v2/data/query", "", "{}").await;
        if status == 503 || started.elapsed() > Duration::from_secs(10) {
            break (status, e);
        }
        assert_eq!(status, 401, "{e}");
    };
    assert_eq!(
        (full.0, &full.1["errorCode"]),
        (503, &json!(950303)),
        "{}",
        full.1
    );
    // Callers with a key in the head neither wait for them nor are shed because of them,
    // though `max_inflight` is 4.
    for _ in 0..8 {
        let t = Instant::now();
        let (status, e) = post(&gw, "/cgi/crm/v2/data/query", LEGACY_KEY, QUERY).await;
        assert_eq!((status, &e["errorCode"]), (200, &json!(0)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    // The slow ones are answered at the pool's deadline, not the old 30 s.
    for mut tcp in slow {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer))
            .await
            .expect("answered within the pool deadline")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("940005"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    // A body larger than the pool holds in all is refused at once.
    let huge = format!(r#"{{"data":"{}"}}"#, "z".repeat(100 * 1024));
    let (status, e) = post(&gw, "/cgi/crm/v2/data/query", "", &huge).await;
    assert_eq!((status, &e["errorCode"]), (503, &json!(950303)), "{e}");
}

#[tokio::test]
async fn one_callers_token_rejection_never_stalls_another() {
    let sandbox = Sandbox::spawn(&[]);
    let stalled = ClientFile {
        api_style: some("oauth"),
        act_as: list(&["9999"]),
        ..caller("stalled", STALLED_KEY)
    };
    let gw = Gateway::spawn(&with_callers(&sandbox, |c| c.add([stalled])));
    // Fxiaoke refuses every call acting as 9999, for a reason of that call's own.
    sandbox
        .faults(Faults {
            reject_user: some("9999"),
            ..Faults::default()
        })
        .await;
    let (status, e) = post(&gw, "/cgi/crm/v2/data/query", OAUTH_KEY, QUERY).await;
    assert_eq!((status, &e["errorCode"]), (200, &json!(0)), "{e}");
    for _ in 0..6 {
        let (status, e) = post(&gw, "/cgi/crm/v2/data/query", STALLED_KEY, QUERY).await;
        // Its answer, as Fxiaoke gave it.
        assert_eq!((status, &e["errorCode"]), (200, &json!(20016)), "{e}");
        let t = Instant::now();
        let (status, e) = post(&gw, "/cgi/crm/v2/data/query", OAUTH_KEY, QUERY).await;
        assert_eq!((status, &e["errorCode"]), (200, &json!(0)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // One check of the token (the same came back), not one fetch per rejection.
    let stats = sandbox.stats().await;
    assert_eq!(stats["oauth_token_calls"], 2, "{stats}");
    assert_eq!(stats["cgi_calls"], 13, "no call retried");
}

#[tokio::test]
async fn a_file_over_the_callers_own_limit_is_413_whatever_its_bytes_today() {
    let sandbox = Sandbox::spawn(&[]);
    let gamma = ClientFile {
        max_file_bytes: some("1MiB"),
        bytes_per_day: some("2MiB"),
        ..gamma()
    };
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| c.add([gamma])));
    let http = client();
    let raw_upload = |bytes: Vec<u8>| {
        http.post(gw.upload_url())
            .bearer_auth(GAMMA_KEY)
            .header("content-type", "image/jpeg")
            .body(bytes)
            .send()
    };
    let too_big = unique_jpeg(1536 * 1024, 1);
    assert_eq!(raw_upload(too_big.clone()).await.unwrap().status(), 413);
    for n in 2..4 {
        let r = raw_upload(unique_jpeg(900 * 1024, n)).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // 1.8 MiB of today's 2 MiB are used: the same file is still 413, not 429.
    let r = raw_upload(too_big).await.unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["errorCode"], 941301, "{e}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(
        &standard(&sandbox.url).with(|c| c.server.request_header_timeout = some("1s")),
    );
    for url in [&gw.url, &gw.admin] {
        let addr = url.trim_start_matches("http://").to_string();
        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("closed by fxgate")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}
