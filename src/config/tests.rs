use std::collections::HashMap;

use super::*;

const ADMIN_KEY: &str = "sk-admin-SECRETadminKEYvalue1234";
const CLIENT_SECRET_VALUE: &str = "GOCSPX-SECRETclientSECRET";

fn base() -> HashMap<String, String> {
    [
        (vars::ALLOWED_DOMAINS, "example.com"),
        (vars::OPENAI_MANAGEMENT_KEY, ADMIN_KEY),
        (vars::CLIENT_ID, "1234-abc.apps.googleusercontent.com"),
        (vars::CLIENT_SECRET, CLIENT_SECRET_VALUE),
        (
            vars::REDIRECT_URI,
            "https://keys.example.com/oauth2/callback",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn parse(env: &HashMap<String, String>) -> Result<Config, Error> {
    Config::from_lookup(|k| env.get(k).cloned())
}

fn with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = base();
    for (k, v) in pairs {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

fn problem_vars(err: &Error) -> Vec<&str> {
    err.problems.iter().map(|p| p.var.as_str()).collect()
}

#[test]
fn the_variable_names_are_those_of_the_go_original() {
    assert_eq!(vars::ALLOWED_USERS, "ALLOWED_USERS");
    assert_eq!(vars::ALLOWED_DOMAINS, "ALLOWED_DOMAINS");
    assert_eq!(vars::OPENAI_MANAGEMENT_KEY, "OPENAI_MANAGEMENT_KEY");
    assert_eq!(vars::CLIENT_ID, "CLIENT_ID");
    assert_eq!(vars::CLIENT_SECRET, "CLIENT_SECRET");
    assert_eq!(vars::REDIRECT_URI, "REDIRECT_URI");
    assert_eq!(vars::DEFAULT_PROJECT_NAME, "DEFAULT_PROJECT_NAME");
    assert_eq!(vars::PORT, "PORT");
    assert_eq!(vars::EXPIRATION, "EXPIRATION");
    assert_eq!(vars::CLEANUP_INTERVAL, "CLEANUP_INTERVAL");
    assert_eq!(vars::TIMEOUT, "TIMEOUT");
    assert_eq!(vars::GOOGLE_TOKEN_ISSUER_URL, "GOOGLE_TOKEN_ISSUER_URL");
}

#[test]
fn defaults_match_the_go_original() {
    let config = parse(&base()).unwrap();
    assert_eq!(config.project, ProjectSelector::Name("personal".into()));
    assert_eq!(config.port, 8080);
    assert_eq!(config.expiration, Duration::from_secs(86_400));
    assert_eq!(config.cleanup_interval, Duration::from_secs(3_600));
    assert_eq!(config.timeout, Duration::from_secs(10));
    assert_eq!(config.bind_address.to_string(), "0.0.0.0");
    assert_eq!(config.oidc_issuer.as_str(), "https://accounts.google.com/");
    assert_eq!(
        config.accepted_issuers,
        vec!["https://accounts.google.com", "accounts.google.com"]
    );
    assert_eq!(config.openai_base_url.as_str(), "https://api.openai.com/v1");
    assert_eq!(config.log_format, LogFormat::Json);
    assert!(config.session_secret.is_none());
    assert_eq!(config.cleanup_concurrency, 8);
    assert!(!config.cleanup_legacy_accounts);
}

#[test]
fn lists_are_trimmed_case_folded_and_skip_empty_items() {
    let env = with(&[
        (vars::ALLOWED_USERS, " Alice@Example.com, ,bob@gmail.com,"),
        (vars::ALLOWED_DOMAINS, "Example.COM , ,@corp.test"),
    ]);
    let config = parse(&env).unwrap();
    let users: Vec<_> = config.allow.users.iter().map(|u| u.as_str()).collect();
    assert_eq!(users, ["alice@example.com", "bob@gmail.com"]);
    let domains: Vec<_> = config.allow.domains.iter().map(|d| d.as_str()).collect();
    assert_eq!(domains, ["corp.test", "example.com"]);
}

#[test]
fn an_empty_environment_reports_every_required_variable_at_once() {
    let err = Config::from_lookup(|_| None).unwrap_err();
    let vars = problem_vars(&err);
    for required in [
        "ALLOWED_USERS/ALLOWED_DOMAINS",
        vars::OPENAI_MANAGEMENT_KEY,
        vars::CLIENT_ID,
        vars::CLIENT_SECRET,
        vars::REDIRECT_URI,
    ] {
        assert!(vars.contains(&required), "{required} missing from {vars:?}");
    }
    assert_eq!(err.to_string().lines().count(), err.problems.len());
}

#[test]
fn bad_numbers_and_durations_are_refused_with_the_variable_named() {
    for (var, value) in [
        (vars::PORT, "eighty"),
        (vars::PORT, "70000"),
        (vars::EXPIRATION, "0"),
        (vars::EXPIRATION, "-5"),
        (vars::EXPIRATION, "1.5"),
        (vars::EXPIRATION, "31536001"),
        (vars::CLEANUP_INTERVAL, "0"),
        (vars::TIMEOUT, "0"),
        (vars::TIMEOUT, "ten"),
        (vars::BIND_ADDRESS, "localhost:80"),
        (vars::LOG_FORMAT, "xml"),
        (vars::CLEANUP_CONCURRENCY, "0"),
        (vars::CLEANUP_CONCURRENCY, "many"),
        (vars::CLEANUP_LEGACY_ACCOUNTS, "maybe"),
        (vars::ALLOW_UNMANAGED_EMAILS, "sometimes"),
        (vars::SERVER_TIMING, "on-ish"),
    ] {
        let err = parse(&with(&[(var, value)])).unwrap_err();
        assert_eq!(problem_vars(&err), [var], "{var}={value}");
        assert!(err.to_string().starts_with(var), "{err}");
    }
}

#[test]
fn the_largest_expiration_openai_accepts_is_allowed() {
    let config = parse(&with(&[(vars::EXPIRATION, "31536000")])).unwrap();
    assert_eq!(config.expiration.as_secs(), MAX_EXPIRATION_SECS);
}

#[test]
fn a_redirect_uri_must_be_absolute_http_and_end_in_the_callback_path() {
    for bad in [
        "/oauth2/callback",
        "keys.example.com/oauth2/callback",
        "ftp://keys.example.com/oauth2/callback",
        "https://keys.example.com/callback",
        "https://keys.example.com/oauth2/callback/",
        "https://keys.example.com/oauth2/callback?x=1",
    ] {
        let err = parse(&with(&[(vars::REDIRECT_URI, bad)])).unwrap_err();
        assert_eq!(problem_vars(&err), [vars::REDIRECT_URI], "{bad}");
    }
    let ok = parse(&with(&[(
        vars::REDIRECT_URI,
        "http://localhost:8080/oauth2/callback",
    )]))
    .unwrap();
    assert!(!ok.is_https());
}

#[test]
fn bad_allow_list_entries_are_named() {
    let err = parse(&with(&[
        (vars::ALLOWED_USERS, "alice@example.com,not-an-email"),
        (vars::ALLOWED_DOMAINS, "exa mple.com"),
    ]))
    .unwrap_err();
    assert_eq!(
        problem_vars(&err),
        [vars::ALLOWED_USERS, vars::ALLOWED_DOMAINS]
    );
    assert!(err.to_string().contains("not-an-email"));
}

#[test]
fn secrets_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("oks-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("admin-key");
    std::fs::write(&path, format!("{ADMIN_KEY}\n")).unwrap();
    let mut env = base();
    env.remove(vars::OPENAI_MANAGEMENT_KEY);
    env.insert(
        "OPENAI_MANAGEMENT_KEY_FILE".into(),
        path.display().to_string(),
    );
    let config = parse(&env).unwrap();
    assert_eq!(config.management_key.expose_secret(), ADMIN_KEY);

    env.insert(vars::OPENAI_MANAGEMENT_KEY.into(), ADMIN_KEY.into());
    let both = parse(&env).unwrap_err();
    assert_eq!(problem_vars(&both), [vars::OPENAI_MANAGEMENT_KEY]);

    env.remove(vars::OPENAI_MANAGEMENT_KEY);
    env.insert(
        "OPENAI_MANAGEMENT_KEY_FILE".into(),
        dir.join("missing").display().to_string(),
    );
    let missing = parse(&env).unwrap_err();
    assert_eq!(problem_vars(&missing), ["OPENAI_MANAGEMENT_KEY_FILE"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_session_secret_must_be_base64_of_at_least_32_bytes() {
    let short = parse(&with(&[(vars::SESSION_SECRET, "c2hvcnQ=")])).unwrap_err();
    assert_eq!(problem_vars(&short), [vars::SESSION_SECRET]);
    let junk = parse(&with(&[(vars::SESSION_SECRET, "!!!not base64!!!")])).unwrap_err();
    assert_eq!(problem_vars(&junk), [vars::SESSION_SECRET]);
    let good = base64::engine::general_purpose::STANDARD.encode([7u8; 48]);
    let config = parse(&with(&[(vars::SESSION_SECRET, &good)])).unwrap();
    assert_eq!(config.session_secret.unwrap().expose(), [7u8; 48]);
}

#[test]
fn the_original_issuer_variable_is_an_alias_and_a_project_id_skips_the_name() {
    let config = parse(&with(&[
        (vars::GOOGLE_TOKEN_ISSUER_URL, "http://127.0.0.1:9000"),
        (vars::OPENAI_PROJECT_ID, "proj_abc"),
        (vars::OIDC_ACCEPTED_ISSUERS, "127.0.0.1:9000"),
    ]))
    .unwrap();
    assert_eq!(config.oidc_issuer.as_str(), "http://127.0.0.1:9000/");
    assert_eq!(
        config.accepted_issuers,
        vec!["http://127.0.0.1:9000", "127.0.0.1:9000"]
    );
    assert_eq!(config.project, ProjectSelector::Id("proj_abc".into()));
}

#[test]
fn no_secret_appears_in_debug_errors_or_the_description() {
    let config = parse(&with(&[(
        vars::SESSION_SECRET,
        &base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
    )]))
    .unwrap();
    let shown = format!("{config:?} {:?}", config.describe());
    assert!(!shown.contains(ADMIN_KEY));
    assert!(!shown.contains(CLIENT_SECRET_VALUE));
    assert!(shown.contains("REDACTED"));
    // A secret file that does not exist must not echo the secret either.
    let err = parse(&with(&[("CLIENT_SECRET_FILE", "/nonexistent")])).unwrap_err();
    assert!(!err.to_string().contains(CLIENT_SECRET_VALUE));
}

#[test]
fn new_settings_have_their_names() {
    assert_eq!(vars::TRUSTED_PROXIES, "TRUSTED_PROXIES");
    assert_eq!(vars::MAX_CONNECTIONS, "MAX_CONNECTIONS");
}

#[test]
fn no_spelling_of_googles_issuer_turns_googles_rules_off() {
    for spelling in [
        "https://accounts.google.com",
        "https://accounts.google.com/",
        "HTTPS://Accounts.Google.COM",
        "https://accounts.google.com:443",
        " https://accounts.google.com ",
    ] {
        let config = parse(&with(&[(vars::OIDC_ISSUER_URL, spelling)])).unwrap();
        assert!(
            !config.allow_unmanaged_emails,
            "{spelling:?} is Google: unmanaged addresses stay refused"
        );
        assert_eq!(
            config.accepted_issuers,
            ["https://accounts.google.com", "accounts.google.com"],
            "{spelling:?}"
        );
    }
    let other = parse(&with(&[(
        vars::OIDC_ISSUER_URL,
        "https://login.example.com/realms/x",
    )]))
    .unwrap();
    assert!(other.allow_unmanaged_emails);
}

#[test]
fn upstream_urls_that_would_carry_a_secret_in_clear_text_are_refused() {
    for (var, url) in [
        (vars::OIDC_ISSUER_URL, "http://idp.example.com"),
        (
            vars::OPENAI_ADMIN_BASE_URL,
            "http://openai-proxy.internal:8080/v1",
        ),
        (vars::GOOGLE_TOKEN_ISSUER_URL, "http://accounts.google.com"),
    ] {
        let err = parse(&with(&[(var, url)])).unwrap_err();
        let problem = err.problems.iter().find(|p| p.var == var).unwrap();
        assert!(problem.message.contains("https"), "{problem:?}");
    }
    // Loopback fakes are fine over http.
    for url in [
        "http://127.0.0.1:9000",
        "http://localhost:9000",
        "http://[::1]:9000",
    ] {
        let config = parse(&with(&[
            (vars::OIDC_ISSUER_URL, url),
            (vars::OPENAI_ADMIN_BASE_URL, &format!("{url}/v1")),
        ]))
        .unwrap();
        assert_eq!(config.oidc_issuer.scheme(), "http");
    }
}

#[test]
fn credentials_queries_and_discovery_paths_in_urls_are_refused_without_echoing_them() {
    for (var, url) in [
        (
            vars::OPENAI_ADMIN_BASE_URL,
            "https://user:hunter2@api.openai.com/v1",
        ),
        (
            vars::OIDC_ISSUER_URL,
            "https://user:hunter2@accounts.google.com",
        ),
        (
            vars::REDIRECT_URI,
            "https://user:hunter2@keys.example.com/oauth2/callback",
        ),
    ] {
        let err = parse(&with(&[(var, url)])).unwrap_err();
        assert_eq!(problem_vars(&err), [var], "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let err = parse(&with(&[(
        vars::OPENAI_ADMIN_BASE_URL,
        "https://api.openai.com/v1?key=x",
    )]))
    .unwrap_err();
    assert_eq!(problem_vars(&err), [vars::OPENAI_ADMIN_BASE_URL]);
    let err = parse(&with(&[(
        vars::OIDC_ISSUER_URL,
        "https://accounts.google.com/.well-known/openid-configuration",
    )]))
    .unwrap_err();
    assert!(
        err.to_string().contains("not its discovery document"),
        "{err}"
    );
    let err = parse(&with(&[(
        vars::OPENAI_ADMIN_BASE_URL,
        "https://api.openai.com",
    )]))
    .unwrap_err();
    assert!(err.to_string().contains("/v1"), "{err}");
    assert!(
        parse(&with(&[(
            vars::OPENAI_ADMIN_BASE_URL,
            "https://api.openai.com/v1/"
        )]))
        .is_ok()
    );
}

#[test]
fn trusted_proxies_are_networks_and_the_missing_ones_are_warned_about_behind_https() {
    let config = parse(&with(&[(
        vars::TRUSTED_PROXIES,
        "10.0.0.0/8, 192.168.1.7 ,fd00::/8",
    )]))
    .unwrap();
    assert_eq!(
        config.trusted_proxies.to_string(),
        "10.0.0.0/8,192.168.1.7/32,fd00::/8"
    );
    assert!(
        !config
            .warnings
            .iter()
            .any(|w| w.contains(vars::TRUSTED_PROXIES)),
        "{:?}",
        config.warnings
    );
    let err = parse(&with(&[(
        vars::TRUSTED_PROXIES,
        "10.0.0.1/8,proxy.internal",
    )]))
    .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("10.0.0.0/8"), "{err}");

    // https in front, plain http here, no proxy trusted: a warning.
    let config = parse(&base()).unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains(vars::TRUSTED_PROXIES) && w.contains(vars::REDIRECT_URI)),
        "{:?}",
        config.warnings
    );
    let local = parse(&with(&[(
        vars::REDIRECT_URI,
        "http://localhost:8080/oauth2/callback",
    )]))
    .unwrap();
    assert!(
        !local
            .warnings
            .iter()
            .any(|w| w.contains(vars::TRUSTED_PROXIES))
    );
    // Plain http on another port than PORT, no proxy named: a warning.
    let elsewhere = parse(&with(&[(
        vars::REDIRECT_URI,
        "http://localhost:3000/oauth2/callback",
    )]))
    .unwrap();
    assert!(
        elsewhere
            .warnings
            .iter()
            .any(|w| w.contains("names port 3000") && w.contains("PORT 8080")),
        "{:?}",
        elsewhere.warnings
    );
}

#[test]
fn max_connections_is_a_positive_number_or_derived() {
    assert!(
        parse(&base())
            .unwrap()
            .max_connections
            .derived_from_fd_limit
            .is_some()
    );
    assert_eq!(
        parse(&with(&[(vars::MAX_CONNECTIONS, "500")]))
            .unwrap()
            .max_connections,
        ConnectionLimit {
            max: 500,
            derived_from_fd_limit: None
        }
    );
    for bad in ["0", "-1", "lots", "2000000"] {
        let err = parse(&with(&[(vars::MAX_CONNECTIONS, bad)])).unwrap_err();
        assert_eq!(problem_vars(&err), [vars::MAX_CONNECTIONS], "{bad}");
    }
    let described = parse(&base()).unwrap().describe();
    let (_, value) = described
        .iter()
        .find(|(name, _)| *name == vars::MAX_CONNECTIONS)
        .unwrap();
    assert!(
        value.contains("derived from the open-file limit"),
        "{value}"
    );
}

#[test]
fn a_project_name_in_the_project_id_setting_is_warned_about() {
    let config = parse(&with(&[(vars::OPENAI_PROJECT_ID, "personal")])).unwrap();
    assert!(
        config.warnings.iter().any(|w| w.contains("proj_")),
        "{:?}",
        config.warnings
    );
    let config = parse(&with(&[(vars::OPENAI_PROJECT_ID, "proj_abc")])).unwrap();
    assert!(!config.warnings.iter().any(|w| w.contains("proj_")));
}
