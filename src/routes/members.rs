//! A caller's JSON object as byte spans of its top-level members, so the passthrough can drop
//! and inject credential members while every other key and value reaches Fxiaoke exactly as
//! the caller wrote it: keys are case-sensitive (`UDSText1__C`), numbers keep their spelling,
//! non-ASCII stays unescaped, order stays. A parse-and-reserialise would change all of that.

use std::borrow::Cow;

use serde::de::IgnoredAny;

/// The credential members (design §9, Boundaries): fxgate sets them, a caller never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `corpAccessToken`.
    Token,
    /// `corpId`.
    Corp,
    /// `currentOpenUserId`: the user, checked against `act_as`.
    User,
}

impl Credential {
    /// The credential `key` names in any spelling Fxiaoke's JSON readers may accept: compared
    /// lowercased with `_` and `-` removed (`CurrentOpenUserId`, `current_open_user_id`,
    /// `CORP-ID` …), since loose binders commonly match so and keep the last value.
    pub fn of(key: &str) -> Option<Self> {
        let mut folded = String::with_capacity(key.len());
        for c in key.chars().filter(|c| *c != '_' && *c != '-') {
            folded.extend(c.to_lowercase());
        }
        match folded.as_str() {
            "corpaccesstoken" => Some(Self::Token),
            "corpid" => Some(Self::Corp),
            "currentopenuserid" => Some(Self::User),
            _ => None,
        }
    }
}

/// The user a body names, in any spelling: one JSON string (every member naming a user must
/// be a string, and all must agree), or `None` when none does.
pub fn named_user<'k>(
    members: impl Iterator<Item = (&'k str, Result<String, ()>)>,
) -> Result<Option<String>, &'static str> {
    let mut found: Option<String> = None;
    for (key, value) in members {
        if Credential::of(key) != Some(Credential::User) {
            continue;
        }
        let Ok(user) = value else {
            return Err("the user (`currentOpenUserId`) must be a JSON string");
        };
        match &found {
            Some(other) if *other != user => {
                return Err("the body names two different users (`currentOpenUserId`)")
            }
            _ => found = Some(user),
        }
    }
    Ok(found)
}

/// One top-level member: its decoded key and where it lies in the body.
#[derive(Debug)]
struct Member {
    key: String,
    start: usize,
    /// Where its value starts.
    value: usize,
    end: usize,
}

/// A validated JSON object and its members.
#[derive(Debug)]
pub struct Members<'a> {
    raw: &'a [u8],
    open: usize,
    members: Vec<Member>,
}

impl<'a> Members<'a> {
    /// Splits `raw`, which must be one JSON object.
    pub fn parse(raw: &'a [u8]) -> Result<Self, &'static str> {
        // Validated whole first, so the scanner below may trust the grammar. Skipping into
        // `IgnoredAny` does not check that strings are UTF-8 (found by fuzz/members): without
        // the check a body Fxiaoke cannot parse would be forwarded with fxgate's token in it.
        std::str::from_utf8(raw).map_err(|_| "the body is not valid JSON (not UTF-8)")?;
        serde_json::from_slice::<IgnoredAny>(raw).map_err(|_| "the body is not valid JSON")?;
        let open = skip_ws(raw, 0);
        if raw.get(open) != Some(&b'{') {
            return Err("the body must be a JSON object");
        }
        let mut members = Vec::new();
        let mut i = open + 1;
        loop {
            i = skip_ws(raw, i);
            match raw.get(i) {
                Some(b'}') | None => break,
                Some(b',') => i = skip_ws(raw, i + 1),
                _ => {}
            }
            let start = i;
            i = end_of_string(raw, i);
            let key = decode_key(&raw[start..i]);
            let value = skip_ws(raw, skip_ws(raw, i) + 1); // past the ':'
            i = end_of_value(raw, value);
            members.push(Member {
                key,
                start,
                value,
                end: i,
            });
        }
        Ok(Self { raw, open, members })
    }

    /// The string value of the first member named `key`.
    pub fn str_value(&self, key: &str) -> Option<String> {
        let m = self.members.iter().find(|m| m.key == key)?;
        serde_json::from_slice::<String>(&self.raw[m.value..m.end]).ok()
    }

    /// The user the body names, in any spelling (`named_user`).
    pub fn user(&self) -> Result<Option<String>, &'static str> {
        named_user(self.members.iter().map(|m| {
            let value = serde_json::from_slice::<String>(&self.raw[m.value..m.end]);
            (m.key.as_str(), value.map_err(|_| ()))
        }))
    }

    /// The object with every credential member (`Credential::of`, any spelling, every
    /// duplicate) removed and `inject` (key, value) pairs first.
    pub fn without_credentials(&self, inject: &[(&str, &str)]) -> Vec<u8> {
        self.rebuild(|key| Credential::of(key).is_some(), inject)
    }

    /// The object with every member `drop` names removed (all of them, so a duplicate cannot
    /// smuggle a second value past the check) and `inject` (key, value) pairs first. With
    /// nothing removed the caller's bytes follow unchanged; otherwise the kept members are
    /// joined by `,` (whitespace between members is the only thing not kept).
    fn rebuild(&self, drop: impl Fn(&str) -> bool, inject: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 256);
        out.push(b'{');
        for (i, (k, v)) in inject.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_string(&mut out, k);
            out.push(b':');
            push_string(&mut out, v);
        }
        let removed = self.members.iter().any(|m| drop(&m.key));
        if !removed {
            if !inject.is_empty() && !self.members.is_empty() {
                out.push(b',');
            }
            let rest = &self.raw[self.open + 1..];
            if inject.is_empty() || !self.members.is_empty() {
                out.extend_from_slice(rest);
            } else {
                out.push(b'}');
            }
            return out;
        }
        let mut first = inject.is_empty();
        for m in self.members.iter().filter(|m| !drop(&m.key)) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.raw[m.start..m.end]);
        }
        out.push(b'}');
        out
    }
}

fn push_string(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str cannot fail.
    out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while raw.get(i).is_some_and(|b| b" \t\r\n".contains(b)) {
        i += 1;
    }
    i
}

/// `raw[i]` is an opening quote: the index after its closing quote.
fn end_of_string(raw: &[u8], mut i: usize) -> usize {
    i += 1;
    while let Some(b) = raw.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index after the value starting at `raw[i]`.
fn end_of_value(raw: &[u8], mut i: usize) -> usize {
    match raw.get(i) {
        Some(b'"') => end_of_string(raw, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(b) = raw.get(i) {
                match b {
                    b'"' => {
                        i = end_of_string(raw, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            i
        }
        _ => {
            while raw.get(i).is_some_and(|b| !b",}] \t\r\n".contains(b)) {
                i += 1;
            }
            i
        }
    }
}

/// A key as JSON means it (`"corp\u0049d"` is `corpId`).
fn decode_key(quoted: &[u8]) -> String {
    let plain = &quoted[1..quoted.len().saturating_sub(1)];
    match plain.contains(&b'\\') {
        false => String::from_utf8_lossy(plain).into_owned(),
        true => serde_json::from_slice::<Cow<'_, str>>(quoted)
            .map(Cow::into_owned)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_bytes_follow_the_injected_members() {
        let body = r#"{"zeta":1.50,"名字":"客户 A","Field__c":{"a":[1,"}"]},"alpha":null}"#;
        let m = Members::parse(body.as_bytes()).unwrap();
        let out = m.without_credentials(&[("corpAccessToken", "t"), ("corpId", "c")]);
        let expected = format!(r#"{{"corpAccessToken":"t","corpId":"c",{}"#, &body[1..]);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn credentials_are_dropped_everywhere_even_escaped_or_repeated() {
        let body = r#"{ "corpId" : "x", "a":"1", "corp\u0049d":"y", "corpAccessToken":"fxg_z", "b" : [ 2 ] }"#;
        let m = Members::parse(body.as_bytes()).unwrap();
        assert_eq!(m.str_value("corpAccessToken").as_deref(), Some("fxg_z"));
        assert_eq!(m.str_value("b"), None);
        let colon = Members::parse(br#"{"a:b" : "x"}"#).unwrap();
        assert_eq!(colon.str_value("a:b").as_deref(), Some("x"));
        let out = m.without_credentials(&[("corpId", "real")]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"corpId":"real","a":"1","b" : [ 2 ]}"#
        );
    }

    #[test]
    fn credential_members_are_known_in_any_spelling() {
        let body = r#"{"CurrentOpenUserId":"FSUID_X","a":1,"current_open_user_id":"FSUID_X","CORP-ID":"c","corp_access_token":"t","corpIdentity":2}"#;
        let m = Members::parse(body.as_bytes()).unwrap();
        assert_eq!(m.user(), Ok(Some("FSUID_X".to_string())));
        assert_eq!(
            String::from_utf8(m.without_credentials(&[])).unwrap(),
            r#"{"a":1,"corpIdentity":2}"#
        );
        for bad in [
            r#"{"currentOpenUserId":1001}"#,
            r#"{"currentOpenUserId":["FSUID_A"]}"#,
            r#"{"currentOpenUserId":{"id":"FSUID_A"}}"#,
            r#"{"currentOpenUserId":null}"#,
            r#"{"currentOpenUserId":"FSUID_A","CURRENTOPENUSERID":"FSUID_B"}"#,
        ] {
            assert!(
                Members::parse(bad.as_bytes()).unwrap().user().is_err(),
                "{bad}"
            );
        }
        let escaped = Members::parse(br#"{"Corp\u0049d":"x","b":1}"#).unwrap();
        assert_eq!(escaped.without_credentials(&[]), br#"{"b":1}"#);
        assert_eq!(Credential::of("corpId"), Some(Credential::Corp));
    }

    #[test]
    fn a_string_that_is_not_utf8_is_not_json() {
        let body = b"{\"r\xf6\xf6\":{},\"a\":\"\xff\"}";
        assert!(Members::parse(body).is_err());
        assert!(Members::parse("{\"ключ\":\"значение\"}".as_bytes()).is_ok());
    }

    #[test]
    fn edge_shapes() {
        let empty = Members::parse(b" {} ").unwrap();
        assert_eq!(empty.without_credentials(&[("k", "v")]), br#"{"k":"v"}"#);
        assert_eq!(empty.without_credentials(&[]), b"{} ");
        let only = Members::parse(br#"{"corpId":"x"}"#).unwrap();
        assert_eq!(only.without_credentials(&[]), b"{}");
        assert!(Members::parse(b"[1]").is_err());
        assert!(Members::parse(br#"{"a":1"#).is_err());
        assert!(Members::parse(b"").is_err());
    }
}
