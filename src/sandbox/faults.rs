//! The faults a test scripts into the sandbox (`POST /_sandbox/faults`): delays, failures,
//! scripted answers, one of each kind of misbehaviour Fxiaoke may show. Public and `Serialize`
//! so that tests script them as values (`Faults { upload_delay, ..Faults::default() }`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One script: every field left at its default is "behave". Posting one replaces the last
/// (`revoke_tokens` aside, which acts at once).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Forget every issued token: the next use answers 20016.
    #[serde(default)]
    pub revoke_tokens: bool,
    /// Hold each upload answer this long after reading the body.
    #[serde(default, rename = "upload_delay_ms", with = "millis")]
    pub upload_delay: Duration,
    /// Answer the next N token calls with errorCode -1.
    #[serde(default)]
    pub token_fail_calls: u32,
    /// Answer the next upload with this errorCode.
    #[serde(default)]
    pub fail_next_upload: Option<i64>,
    /// Answer the next N token calls with a head and the start of a body that never ends.
    #[serde(default)]
    pub token_stall_calls: u32,
    /// Answer the next N uploads (body read, nothing stored) likewise.
    #[serde(default)]
    pub upload_stall_answers: u32,
    /// Send the next N downloads' first half, then nothing more, for good.
    #[serde(default)]
    pub download_stalls: u32,
    /// Read every upload body at most this fast, in KiB/s (a slow Fxiaoke: back-pressure all
    /// the way to the caller); 0 = as fast as it comes.
    #[serde(default)]
    pub upload_read_kib_per_sec: u64,
    /// Answers for the next uploads (body read, nothing stored), one per upload, in order.
    #[serde(default)]
    pub upload_answers: std::collections::VecDeque<ScriptedAnswer>,
    /// Answer the next N business calls with 20016, whatever token they carry (a token that
    /// Fxiaoke stopped accepting before its time).
    #[serde(default)]
    pub reject_calls: u32,
    /// Answer every business call acting as this user with 20016 while its token is valid
    /// (Fxiaoke's "the cropId,cropAccessToken or authorization is error" for a reason of that
    /// call's own, such as a user the app may not act as); other calls are served.
    #[serde(default)]
    pub reject_user: Option<String>,
    /// File Service: hand out signatures that have already expired.
    #[serde(default)]
    pub file_expired_signatures: bool,
    /// File Service: this URL in step 1's answer instead of the sandbox's own (another host).
    #[serde(default)]
    pub file_upload_url: Option<String>,
    /// File Service: refuse the next N step-2 uploads (`success:false`, body read).
    #[serde(default)]
    pub file_upload_failures: u32,
}

/// A broken answer the sandbox can give an upload instead of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptedAnswer {
    /// 200 with an HTML error page (a proxy in the way).
    Html,
    /// 200 `application/json` whose body is not JSON.
    Garbage,
    /// 200 `text/plain` `OK`.
    PlainText,
    /// 502 with an HTML body (a load balancer).
    BadGateway,
    /// 500 with Fxiaoke's JSON envelope.
    ServerError,
    /// A head, a few bytes of body, then the connection is cut.
    ResetMidBody,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Reading `len` bytes of an upload body at `kib_per_sec` (the `upload_read_kib_per_sec`
/// fault, per upload route): waits as long as that takes; 0 = no wait.
pub(super) async fn pace_read(kib_per_sec: u64, len: usize) {
    if kib_per_sec > 0 {
        let secs = len as f64 / kib_per_sec.saturating_mul(1024) as f64;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
}

impl Faults {
    pub(super) fn apply(&mut self, new: Faults) {
        self.upload_delay = new.upload_delay;
        self.token_fail_calls = new.token_fail_calls;
        self.fail_next_upload = new.fail_next_upload;
        self.token_stall_calls = new.token_stall_calls;
        self.upload_stall_answers = new.upload_stall_answers;
        self.download_stalls = new.download_stalls;
        self.upload_answers = new.upload_answers;
        self.upload_read_kib_per_sec = new.upload_read_kib_per_sec;
        self.reject_calls = new.reject_calls;
        self.reject_user = new.reject_user;
        self.file_expired_signatures = new.file_expired_signatures;
        self.file_upload_url = new.file_upload_url;
        self.file_upload_failures = new.file_upload_failures;
    }

    pub(super) fn rejects_user(&self, user: Option<&str>) -> bool {
        self.reject_user.is_some() && self.reject_user.as_deref() == user
    }

    pub(super) fn take_call_rejection(&mut self) -> bool {
        let reject = self.reject_calls > 0;
        self.reject_calls = self.reject_calls.saturating_sub(1);
        reject
    }

    pub(super) fn take_file_upload_failure(&mut self) -> bool {
        let fail = self.file_upload_failures > 0;
        self.file_upload_failures = self.file_upload_failures.saturating_sub(1);
        fail
    }

    pub(super) fn take_upload_stall(&mut self) -> bool {
        let stall = self.upload_stall_answers > 0;
        self.upload_stall_answers = self.upload_stall_answers.saturating_sub(1);
        stall
    }

    pub(super) fn take_download_stall(&mut self) -> bool {
        let stall = self.download_stalls > 0;
        self.download_stalls = self.download_stalls.saturating_sub(1);
        stall
    }

    pub(super) fn take_token_stall(&mut self) -> bool {
        let stall = self.token_stall_calls > 0;
        self.token_stall_calls = self.token_stall_calls.saturating_sub(1);
        stall
    }

    pub(super) fn take_token_failure(&mut self) -> bool {
        if self.token_fail_calls > 0 {
            self.token_fail_calls -= 1;
            true
        } else {
            false
        }
    }
}
