//! Loading, validation and the effective view, end to end from TOML text.

use super::*;

#[test]
fn a_type_error_names_the_kind_but_never_the_value() {
    let e = without_values(r#"invalid type: string "s3cr3t, x", expected a map"#);
    assert_eq!(e, "invalid type: string, expected a map");
    let e = without_values(
        "invalid value: integer `987654321`, expected u16; invalid type: map, expected a string",
    );
    assert_eq!(
        e,
        "invalid value: integer, expected u16; invalid type: map, expected a string"
    );
}

/// Issue 14: the parser's error quoted the line, and with it an unterminated secret.
#[test]
fn a_parse_error_names_the_place_but_never_quotes_the_line() {
    let dir = std::env::temp_dir().join(format!("fxgate-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[corps.default]\nbase_url = \"sandbox\"\napp_secret = \"TOPSECRET123\n",
    )
    .unwrap();
    let err = Config::load(&path, Some(HashMap::new()))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("TOPSECRET123"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("k", "5MiB").ok(), Some(5 * 1024 * 1024));
    assert_eq!(parse_size("k", "20GiB").ok(), Some(20 << 30));
    assert_eq!(parse_size("k", "1000").ok(), Some(1000));
    assert!(parse_size("k", "5 parsecs").is_err());
    assert!(parse_size("k", "-1").is_err());
    assert_eq!(
        parse_duration("k", "72h").ok(),
        Some(Duration::from_secs(72 * 3600))
    );
    assert!(parse_duration("k", "soon").is_err());
}

#[test]
fn rotation_keys_are_checked_and_named_by_place() {
    let base = "[corps.default]\nbase_url = \"sandbox\"\napp_id = \"a\"\napp_secret = \"s\"\npermanent_code = \"p\"\n";
    let sha = |k: &str| hex::encode(hash_key(k));
    let load = |clients: String| Config::from_toml(&format!("{base}{clients}"), HashMap::new());
    let cfg = load(format!(
        "[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\nkeys = [{{ sha256 = \"{}\", not_after = \"2027-01-31T00:00:00Z\" }}]\n",
        sha("k1"),
        sha("k2")
    ))
    .unwrap();
    assert_eq!(cfg.clients[0].keys.len(), 2);
    assert_eq!(cfg.clients[0].keys[1].not_after_ms, Some(1_801_353_600_000));
    let err = load(format!(
        "[[clients]]\nname = \"a\"\nkeys = [{{ sha256 = \"{}\", not_after = \"next week\" }}]\n",
        sha("k1")
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("keys[0].not_after") && err.contains("RFC 3339"),
        "{err}"
    );
    let err = load(format!(
        "[[clients]]\nname = \"a\"\nkey_sha256 = \"{0}\"\n[[clients]]\nname = \"b\"\nkeys = [{{ sha256 = \"{0}\" }}]\n",
        sha("k1")
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("also a key of `a`"), "{err}");
}
