//! A client that behaves exactly like Fxiaoke's published SDKs (the Go, .NET and PHP ones
//! in fxiaoke.md's sources): it fetches a token from `/cgi/corpAccessToken/get/V2` with
//! `appId` / `appSecret` / `permanentCode`, caches it, puts `corpAccessToken` / `corpId` (and
//! `currentOpenUserId`) at the top of every JSON body or, for media uploads, in the query, and
//! on `errorCode` 20016 drops its cache, fetches a new token and retries once. It knows nothing
//! about fxgate: tests point it at the sandbox or at fxgate by base URL alone. Every answer it
//! sees (headers and body) is kept, so tests can search them for a leaked secret.

use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

/// An SDK instance, configured as a service would configure the real one.
pub struct FxiaokeSdk {
    base: String,
    app_id: String,
    app_secret: String,
    permanent_code: String,
    http: reqwest::Client,
    cache: Mutex<Option<(String, String)>>,
    /// Token endpoint calls it made.
    pub token_fetches: AtomicU32,
    /// Every answer it received, headers then body, as text.
    pub seen: Mutex<Vec<String>>,
}

impl FxiaokeSdk {
    pub fn new(base: &str, app_id: &str, app_secret: &str, permanent_code: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            app_id: app_id.into(),
            app_secret: app_secret.into(),
            permanent_code: permanent_code.into(),
            http: reqwest::Client::new(),
            cache: Mutex::new(None),
            token_fetches: AtomicU32::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}?thirdTraceId={}", self.base, uuid::Uuid::new_v4())
    }

    async fn keep(&self, resp: reqwest::Response) -> Value {
        let mut text = format!("{:?}\n", resp.headers());
        let body = resp.text().await.unwrap_or_default();
        text.push_str(&body);
        self.seen.lock().push(text);
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// The cached token and corpId, fetched when there is none.
    pub async fn token(&self) -> (String, String) {
        if let Some(t) = self.cache.lock().clone() {
            return t;
        }
        self.token_fetches.fetch_add(1, Ordering::SeqCst);
        let resp = self
            .http
            .post(self.url("/cgi/corpAccessToken/get/V2"))
            .json(&json!({
                "appId": self.app_id,
                "appSecret": self.app_secret,
                "permanentCode": self.permanent_code,
            }))
            .send()
            .await
            .unwrap();
        let v = self.keep(resp).await;
        assert_eq!(v["errorCode"], 0, "token call failed: {v}");
        let t = (
            v["corpAccessToken"].as_str().unwrap().to_string(),
            v["corpId"].as_str().unwrap().to_string(),
        );
        *self.cache.lock() = Some(t.clone());
        t
    }

    /// A legacy-style call: credentials and the user at the top of the body.
    pub async fn call(&self, path: &str, user: &str, body: Value) -> Value {
        for attempt in 0..2 {
            let (token, corp_id) = self.token().await;
            let mut b = Map::new();
            b.insert("corpAccessToken".into(), token.into());
            b.insert("corpId".into(), corp_id.into());
            b.insert("currentOpenUserId".into(), user.into());
            if let Value::Object(rest) = body.clone() {
                b.extend(rest);
            }
            let resp = self
                .http
                .post(self.url(path))
                .json(&b)
                .send()
                .await
                .unwrap();
            let v = self.keep(resp).await;
            if v["errorCode"] == 20016 && attempt == 0 {
                *self.cache.lock() = None;
                continue;
            }
            return v;
        }
        unreachable!()
    }

    /// `POST /media/upload/message` as the official curl example: credentials in the query.
    pub async fn upload_image(&self, bytes: Vec<u8>, name: &str) -> Value {
        for attempt in 0..2 {
            let (token, corp_id) = self.token().await;
            let part = reqwest::multipart::Part::bytes(bytes.clone())
                .file_name(name.to_string())
                .mime_str("image/jpeg")
                .unwrap();
            let url = format!(
                "{}&corpAccessToken={token}&corpId={corp_id}",
                self.url("/media/upload/message")
            );
            let form = reqwest::multipart::Form::new().part("media", part);
            let resp = self.http.post(url).multipart(form).send().await.unwrap();
            let v = self.keep(resp).await;
            if v["errorCode"] == 20016 && attempt == 0 {
                *self.cache.lock() = None;
                continue;
            }
            return v;
        }
        unreachable!()
    }
}
