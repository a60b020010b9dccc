//! `Corp`: one Fxiaoke tenant/app: its HTTP client (hyper-util + rustls), its base URL and
//! its token provider. Builds every upstream URL, so the token is injected in exactly one
//! place and a fresh UUIDv4 `thirdTraceId` goes with every attempt (fxiaoke.md §4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::field::Empty;

use super::budget::{BudgetStore, UpstreamBudget};
use super::envelope::{Envelope, Read, UpstreamCode};
use super::timing::Timing;
use super::token::store::TokenStore;
use super::token::{ApiStyle, CorpToken, Endpoint, TokenProvider};
use super::transport::{Egress, Pools};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::CorpConfig;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::worker::PerWorker;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

/// One configured corp.
#[derive(Debug)]
pub struct Corp {
    /// Its configuration.
    pub cfg: CorpConfig,
    /// Base URL without trailing slash (the sandbox's, for `base_url = "sandbox"`).
    pub base: String,
    /// One pool per serving thread: a pooled connection's task runs where the request does.
    clients: PerWorker<Pools>,
    /// Its legacy token (`corpAccessToken`), which media routes use.
    pub tokens: TokenProvider,
    /// Its OAuth token (`accessToken`), fetched when an OAuth-style call first needs it.
    pub oauth: TokenProvider,
    /// Its allowance at Fxiaoke.
    pub budget: UpstreamBudget,
    /// Its deadlines and refresh point in force (a reload changes them; read them here, not
    /// in `cfg`).
    pub timing: Arc<Timing>,
    metrics: Metrics,
}

/// A prepared upstream call: its URL, the trace id it carries, and its `upstream` span (one
/// attempt: the request and its answer; `timed` and `read_answer` fill it in when they run
/// inside it). `Debug` shows the path only: the query holds the token.
pub struct Target {
    /// The full URL; holds the token: never log it.
    pub uri: Uri,
    /// The `thirdTraceId` in it.
    pub third_trace_id: String,
    /// `traceparent` (and `tracestate`) naming this call, for the request.
    pub trace_headers: HeaderMap,
    /// The call's span.
    pub span: tracing::Span,
}

/// How long Fxiaoke took to answer a call's head (in the answer's extensions).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// The time Fxiaoke took for `resp` (zero for an answer that did not come through `timed`).
pub fn took<B>(resp: &Response<B>) -> Duration {
    resp.extensions()
        .get::<UpstreamTime>()
        .map_or(Duration::ZERO, |t| t.0)
}

impl Target {
    /// A POST to the URL, carrying the trace headers.
    pub fn post(&self) -> http::request::Builder {
        let mut b = Request::post(self.uri.clone());
        if let Some(h) = b.headers_mut() {
            h.extend(self.trace_headers.clone());
        }
        b
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("path", &self.uri.path())
            .field("third_trace_id", &self.third_trace_id)
            .finish_non_exhaustive()
    }
}

impl Corp {
    /// Builds the corp and starts its token refresher. Its token is shared through `tokens`
    /// and its budget counted in `budget` (memory, or Redis behind a fail-mode decorator).
    pub fn spawn(
        cfg: CorpConfig,
        base: String,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        counted: Arc<dyn BudgetStore>,
        tokens: impl Fn(ApiStyle) -> Arc<dyn TokenStore>,
        workers: usize,
    ) -> Arc<Self> {
        let budget = UpstreamBudget::new(
            &cfg.name,
            cfg.upstream_requests_per_20s,
            cfg.daily_call_budget,
            clock.clone(),
            counted,
        );
        let timing = Arc::new(Timing::new(&cfg));
        let clients = PerWorker::new(workers, || Pools::new(&timing, &Egress::of(&cfg)));
        let provider = |flow| {
            let endpoint = Endpoint {
                cfg: cfg.clone(),
                timing: timing.clone(),
                base: base.clone(),
            };
            TokenProvider::spawn(endpoint, flow, metrics.clone(), tokens(flow), clock.clone())
        };
        let (legacy, oauth) = (provider(ApiStyle::Legacy), provider(ApiStyle::OAuth));
        Arc::new(Self {
            cfg,
            base,
            clients,
            tokens: legacy,
            oauth,
            budget,
            timing,
            metrics,
        })
    }

    /// The call to `path`: its URL, with the token (when given), a fresh `thirdTraceId` and
    /// `extra`, and its span, which the `traceparent` sent with it names.
    pub fn target(
        &self,
        path: &str,
        token: Option<&CorpToken>,
        extra: &[(&str, &str)],
    ) -> Result<Target, GatewayError> {
        let third_trace_id = uuid::Uuid::new_v4().to_string();
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("thirdTraceId", &third_trace_id);
        if let Some(t) = token {
            q.append_pair("corpAccessToken", t.access_token.expose());
            q.append_pair("corpId", &t.corp_id);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        let uri = format!("{}{}?{}", self.base, path, q.finish())
            .parse()
            .map_err(|_| GatewayError::Internal {
                detail: format!("cannot build upstream URL for {path}"),
            })?;
        let span = tracing::info_span!(
            "upstream",
            otel.name = %format_args!("POST {path}"),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = "POST",
            url.path = path,
            fxgate.corp = self.cfg.name.as_str(),
            fxgate.third_trace_id = third_trace_id.as_str(),
            http.response.status_code = Empty,
            fxiaoke.error_code = Empty,
        );
        let mut trace_headers = HeaderMap::new();
        span.in_scope(|| crate::trace::inject(&mut trace_headers));
        Ok(Target {
            uri,
            third_trace_id,
            trace_headers,
            span,
        })
    }

    /// The provider of `flow`'s token.
    pub fn provider(&self, flow: ApiStyle) -> &TokenProvider {
        match flow {
            ApiStyle::Legacy => &self.tokens,
            ApiStyle::OAuth => &self.oauth,
        }
    }

    /// Sends a request and waits for the answer's head, at most `upstream_timeout` (measured
    /// from the call: for streamed uploads the caller applies its own deadlines while sending).
    pub async fn send(
        &self,
        label: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, GatewayError> {
        self.timed(label, self.client().calls.request(req)).await
    }

    /// Waits for an answer's head (a request future already running, e.g. beside an upload's
    /// body pump), at most `upstream_timeout`, and records how long Fxiaoke took.
    pub async fn timed<F, E>(
        &self,
        label: &str,
        answer: F,
    ) -> Result<Response<Incoming>, GatewayError>
    where
        F: std::future::Future<Output = Result<Response<Incoming>, E>>,
        E: Into<GatewayError>,
    {
        let started = Instant::now();
        let after = self.timing.upstream_timeout();
        let result = tokio::time::timeout(after, answer).await;
        let took = started.elapsed();
        self.metrics
            .upstream
            .duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
        let result = match result {
            Err(_) => Err(GatewayError::UpstreamTimeout { after }),
            Ok(r) => r.map_err(Into::into),
        };
        let span = tracing::Span::current();
        match &result {
            Ok(resp) => span.record(
                "http.response.status_code",
                i64::from(resp.status().as_u16()),
            ),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        result
            .map(|mut resp| {
                resp.extensions_mut().insert(UpstreamTime(took));
                resp
            })
            .inspect_err(|e| self.count_failure(label, e))
    }

    /// Counts a call that got no usable answer under what went wrong, so a dashboard tells a
    /// slow Fxiaoke from an unreachable one from one answering garbage.
    fn count_failure(&self, label: &str, e: &GatewayError) {
        let kind = match e {
            GatewayError::UpstreamTimeout { .. } => "timeout",
            GatewayError::UpstreamUnreachable { .. } => "unreachable",
            GatewayError::UpstreamInvalid { .. } => "invalid",
            _ => return,
        };
        self.count_label(label, kind);
    }

    /// Reads Fxiaoke's JSON answer, within `upstream_timeout` (the head's deadline bounds only
    /// the head: an answer that stalls in its body must not hold the caller, its slot or a
    /// coalesced claim), and counts it by its `errorCode`.
    pub async fn read_answer(
        &self,
        label: &str,
        resp: Response<Incoming>,
    ) -> Result<Answer, GatewayError> {
        let status = resp.status();
        let took = took(&resp);
        let after = self.timing.upstream_timeout();
        let env = tokio::time::timeout(after, Envelope::read(resp.into_body()))
            .await
            .map_err(|_| GatewayError::UpstreamTimeout { after })
            .and_then(|r| r)
            .inspect_err(|e| self.count_failure(label, e))?;
        self.classify(label, status, took, env)
    }

    /// An answer read whole: a JSON object, counted by its `errorCode`.
    fn classify(
        &self,
        label: &str,
        status: StatusCode,
        took: Duration,
        env: Envelope,
    ) -> Result<Answer, GatewayError> {
        if env.json.is_none() {
            // Every media answer is a JSON envelope; anything else (a proxy's HTML page, a
            // garbled body) must not reach the caller as a 200 that looks final.
            let e = GatewayError::UpstreamInvalid {
                detail: format!(
                    "HTTP {} with {} bytes that are not a JSON object",
                    status.as_u16(),
                    env.raw.len()
                ),
            };
            self.count_failure(label, &e);
            return Err(e);
        }
        let code = env.code();
        self.count(label, code);
        if let Some(c) = code.code() {
            tracing::Span::current().record("fxiaoke.error_code", c);
        }
        Ok(Answer {
            status,
            env,
            code,
            took,
        })
    }

    /// As `read_answer`, but an answer over `MAX_ENVELOPE_BYTES` (never a token or rate-limit
    /// envelope) comes back unread past its first bytes, to be streamed on.
    pub async fn read_answer_or_large(
        &self,
        label: &str,
        resp: Response<Incoming>,
    ) -> Result<Passing, GatewayError> {
        let took = took(&resp);
        let (parts, body) = resp.into_parts();
        let after = self.timing.upstream_timeout();
        let read = tokio::time::timeout(after, Envelope::read_or_large(body))
            .await
            .map_err(|_| GatewayError::UpstreamTimeout { after })
            .and_then(|r| r)
            .inspect_err(|e| self.count_failure(label, e))?;
        match read {
            Read::Whole(env) => self
                .classify(label, parts.status, took, env)
                .map(Passing::Whole),
            Read::Large { head, rest } => {
                self.count(label, Envelope::leading_code(&head));
                Ok(Passing::Large {
                    status: parts.status,
                    head,
                    rest,
                })
            }
        }
    }

    /// The pools, for calls that drive the request future themselves.
    pub fn client(&self) -> &Pools {
        self.clients.get()
    }

    /// Puts a reloaded corp's live settings in force: its budget (`set_budget`), its deadlines
    /// for the next call and connection, and its refresh point, which reschedules the token
    /// refreshes due under the old one.
    pub fn apply(&self, cfg: &CorpConfig) {
        self.set_budget(cfg.upstream_requests_per_20s, cfg.daily_call_budget);
        if self.timing.set(cfg) {
            self.tokens.reschedule();
            self.oauth.reschedule();
        }
    }

    /// New budget limits from a reload, and the gauges that show them: the limit, and what is
    /// left of it today (the new limit less today's use).
    fn set_budget(&self, per_20s: u32, daily: Option<u64>) {
        self.budget.set_limits(per_20s, daily);
        if let Some(limit) = daily {
            let name = [self.cfg.name.as_str()];
            self.metrics
                .upstream
                .budget_limit
                .with_label_values(&name)
                .set(limit as i64);
            if let Some(left) = self.budget.remaining_today() {
                self.metrics
                    .upstream
                    .budget_remaining
                    .with_label_values(&name)
                    .set(left as i64);
            }
        }
    }

    /// Takes one call on the interface at `path` from the corp's budget (each path has its
    /// own 20 s window; waiting briefly for it), unless `guard` holds a value in the store
    /// (then that value, and nothing taken), and publishes what is left of the day's budget.
    pub(super) async fn take_budget(
        &self,
        path: &str,
        guard: Option<&str>,
    ) -> Result<Option<String>, GatewayError> {
        let r = self.budget.acquire_unless(path, guard).await;
        if let Some(left) = self.budget.remaining_today() {
            self.metrics
                .upstream
                .budget_remaining
                .with_label_values(&[&self.cfg.name])
                .set(left as i64);
        }
        r
    }

    /// Counts one upstream answer on the route labelled `label` by its `errorCode`.
    pub fn count(&self, label: &str, code: UpstreamCode) {
        self.count_label(label, code.label());
    }

    fn count_label(&self, label: &str, error_code: &str) {
        self.metrics
            .upstream
            .requests
            .with_label_values(&[&self.cfg.name, label, error_code])
            .inc();
    }
}

/// A passthrough call's answer: read and classified, or too large to read.
#[derive(Debug)]
pub enum Passing {
    /// Read whole.
    Whole(Answer),
    /// Over `MAX_ENVELOPE_BYTES`: its status, first bytes and the rest.
    Large {
        /// The HTTP status.
        status: StatusCode,
        /// The first bytes.
        head: bytes::Bytes,
        /// The rest of the body.
        rest: Incoming,
    },
}

/// Fxiaoke's answer to a call, read and classified.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status (200 for nearly everything, errors included).
    pub status: StatusCode,
    /// The body.
    pub env: Envelope,
    /// Its `errorCode`, classified.
    pub code: UpstreamCode,
    /// How long Fxiaoke took to answer its head.
    pub took: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_never_prints_its_query() {
        let t = Target {
            uri: "http://x/media/upload?corpAccessToken=SECRET&corpId=c"
                .parse()
                .unwrap(),
            third_trace_id: "t".into(),
            trace_headers: HeaderMap::new(),
            span: tracing::Span::none(),
        };
        let shown = format!("{t:?}");
        assert!(
            shown.contains("/media/upload") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}
