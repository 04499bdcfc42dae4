//! The fake Google (and the fake GitHub Actions issuer) driven over real
//! HTTP, the way a relying party meets them: discovery, JWKS, the code flow
//! with PKCE, the sign-in form, refusals, key rotation and forged tokens.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, LOCATION};
use reqwest::{Client, Response, StatusCode};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};
use sandbox::Sandbox;
use sandbox::oidc::{Config, GithubClaims, Identity, IssuerForm, Signing, TokenOverride};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use url::Url;

const REDIRECT_URI: &str = "http://127.0.0.1:8080/oauth2/callback";
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const STATE: &str = "st4te/with&odd=chars";
const NONCE: &str = "n-0S6_WzA2Mj";
const AUTH_PATH: &str = "/o/oauth2/v2/auth";

/// A sandbox and a client that, like a browser driven by a test, does not
/// follow redirects.
struct Idp {
    sandbox: Sandbox,
    http: Client,
}

impl Idp {
    async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    async fn start_with(config: Config) -> Self {
        let sandbox = Sandbox::builder()
            .oidc(config)
            .start()
            .await
            .expect("the sandbox starts");
        install_crypto();
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client");
        Self { sandbox, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.oidc.origin())
    }

    /// A valid authorization request: code flow, `openid email`, state,
    /// nonce, PKCE S256.
    fn auth_params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("client_id", self.sandbox.oidc.client_id()),
            ("redirect_uri", REDIRECT_URI.to_owned()),
            ("response_type", "code".to_owned()),
            ("scope", "openid email".to_owned()),
            ("state", STATE.to_owned()),
            ("nonce", NONCE.to_owned()),
            ("code_challenge", CHALLENGE.to_owned()),
            ("code_challenge_method", "S256".to_owned()),
        ]
    }

    async fn authorize(&self, params: &[(&str, String)]) -> Response {
        self.http
            .get(self.url(AUTH_PATH))
            .query(params)
            .send()
            .await
            .expect("the authorization endpoint answers")
    }

    /// Signs `identity` in with the default request; returns the code.
    async fn sign_in(&self, identity: Identity) -> String {
        self.sandbox.oidc.queue_identity(identity);
        let response = self.authorize(&self.auth_params()).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        callback_params(&response)["code"].clone()
    }

    /// Exchanges a code with HTTP Basic client authentication.
    async fn exchange(&self, code: &str, verifier: Option<&str>) -> Response {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
        ];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier));
        }
        self.token_request(&form, Some(self.basic(&self.sandbox.oidc.client_secret())))
            .await
    }

    async fn token_request(
        &self,
        form: &[(&str, &str)],
        authorization: Option<String>,
    ) -> Response {
        let mut request = self.http.post(self.url("/token")).form(form);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        request.send().await.expect("the token endpoint answers")
    }

    fn basic(&self, secret: &str) -> String {
        let credentials = format!("{}:{secret}", self.sandbox.oidc.client_id());
        format!("Basic {}", STANDARD.encode(credentials))
    }

    /// A complete sign-in; returns the token endpoint's JSON.
    async fn tokens_for(&self, identity: Identity) -> Value {
        let code = self.sign_in(identity).await;
        let response = self.exchange(&code, Some(VERIFIER)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("token JSON")
    }

    async fn id_token_for(&self, identity: Identity) -> String {
        let tokens = self.tokens_for(identity).await;
        tokens["id_token"].as_str().expect("an id_token").to_owned()
    }

    async fn jwks(&self) -> Value {
        self.get_json(&self.url("/oauth2/v3/certs")).await
    }

    async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.expect("GET answers");
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        response.json().await.expect("JSON")
    }

    async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("a control route answers")
    }
}

fn location(response: &Response) -> Url {
    let location = response
        .headers()
        .get(LOCATION)
        .expect("a Location header")
        .to_str()
        .expect("an ASCII Location");
    Url::parse(location).expect("an absolute Location")
}

/// The query of the redirect back to the client, decoded.
fn callback_params(response: &Response) -> HashMap<String, String> {
    let url = location(response);
    assert_eq!(
        url[..url::Position::AfterPath],
        *REDIRECT_URI,
        "redirects go to the registered URI"
    );
    url.query_pairs().into_owned().collect()
}

async fn oauth_error(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("an OAuth error body");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A compact JWS, split.
struct Jwt {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

fn decode(token: &str) -> Jwt {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "three parts in {token}");
    let json = |part: &str| -> Map<String, Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    };
    Jwt {
        header: json(parts[0]),
        claims: json(parts[1]),
        signing_input: format!("{}.{}", parts[0], parts[1]),
        signature: URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("base64url signature"),
    }
}

fn public_key(jwk: &Value) -> RsaPublicKey {
    let part = |name: &str| {
        BigUint::from_bytes_be(
            &URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().expect("a JWK member"))
                .expect("base64url"),
        )
    };
    RsaPublicKey::new(part("n"), part("e")).expect("a valid RSA public key")
}

fn rs256_verifies(jwt: &Jwt, jwk: &Value) -> bool {
    let key = VerifyingKey::<Sha256>::new(public_key(jwk));
    Signature::try_from(jwt.signature.as_slice())
        .is_ok_and(|signature| key.verify(jwt.signing_input.as_bytes(), &signature).is_ok())
}

fn jwk<'a>(jwks: &'a Value, kid: &str) -> Option<&'a Value> {
    jwks["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .find(|key| key["kid"] == kid)
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .map(|key| key["kid"].as_str().expect("a kid").to_owned())
        .collect()
}

/// Verifies `token` with the JWKS key its header names.
fn verifies_with_jwks(token: &str, jwks: &Value) -> bool {
    let jwt = decode(token);
    let kid = jwt.header["kid"].as_str().unwrap_or_default();
    jwk(jwks, kid).is_some_and(|key| rs256_verifies(&jwt, key))
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// `(name, value)` of every hidden input of a page, HTML-unescaped.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let attribute = |tag: &str, name: &str| -> String {
        let start = tag.find(&format!("{name}=\"")).expect("the attribute") + name.len() + 2;
        let end = start + tag[start..].find('"').expect("a closing quote");
        unescape(&tag[start..end])
    };
    html.split("<input")
        .skip(1)
        .map(|rest| &rest[..rest.find('>').expect("a closed tag")])
        .filter(|tag| tag.contains("type=\"hidden\""))
        .map(|tag| (attribute(tag, "name"), attribute(tag, "value")))
        .collect()
}

fn unescape(text: &str) -> String {
    [
        ("&#34;", "\""),
        ("&quot;", "\""),
        ("&#39;", "'"),
        ("&#60;", "<"),
        ("&lt;", "<"),
        ("&#62;", ">"),
        ("&gt;", ">"),
        ("&#38;", "&"),
        ("&amp;", "&"),
    ]
    .iter()
    .fold(text.to_owned(), |text, (entity, raw)| {
        text.replace(entity, raw)
    })
}

#[tokio::test]
async fn discovery_points_every_endpoint_at_the_fake_origin() {
    let idp = Idp::start().await;
    let origin = idp.sandbox.oidc.origin();

    let document = idp
        .get_json(&format!(
            "{}/.well-known/openid-configuration",
            idp.sandbox.oidc_issuer_url()
        ))
        .await;

    assert_eq!(document["issuer"], idp.sandbox.oidc_issuer_url());
    assert_eq!(idp.sandbox.oidc_issuer_url(), origin);
    assert!(!origin.ends_with('/'));
    assert_eq!(
        document["authorization_endpoint"],
        format!("{origin}/o/oauth2/v2/auth")
    );
    assert_eq!(document["token_endpoint"], format!("{origin}/token"));
    assert_eq!(document["jwks_uri"], format!("{origin}/oauth2/v3/certs"));
    assert_eq!(
        document["userinfo_endpoint"],
        format!("{origin}/v1/userinfo")
    );
    assert_eq!(document["revocation_endpoint"], format!("{origin}/revoke"));
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        document["code_challenge_methods_supported"],
        json!(["plain", "S256"])
    );
    assert_eq!(
        document["token_endpoint_auth_methods_supported"],
        json!(["client_secret_post", "client_secret_basic"])
    );
    let client_id = idp.sandbox.oidc.client_id();
    assert!(
        client_id.ends_with(".apps.googleusercontent.com"),
        "{client_id}"
    );
    assert!(idp.sandbox.oidc.client_secret().starts_with("GOCSPX-"));
}

#[tokio::test]
async fn discovery_overrides_add_change_and_remove_fields() {
    let idp = Idp::start_with(Config {
        discovery_overrides: claims(json!({
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": ["openid"],
            "device_authorization_endpoint": null,
        })),
        ..Config::default()
    })
    .await;

    let document = idp
        .get_json(&idp.url("/.well-known/openid-configuration"))
        .await;

    assert_eq!(
        document["authorization_response_iss_parameter_supported"],
        true
    );
    assert_eq!(document["scopes_supported"], json!(["openid"]));
    assert!(document.get("device_authorization_endpoint").is_none());
    assert_eq!(document["token_endpoint"], idp.url("/token"));
}

#[tokio::test]
async fn jwks_carries_google_caching_headers_and_every_fetch_is_counted() {
    let idp = Idp::start().await;

    let response = idp
        .http
        .get(idp.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(
        headers[CACHE_CONTROL],
        "public, max-age=21600, must-revalidate, no-transform"
    );
    assert_eq!(headers["age"], "0");
    assert!(headers["expires"].to_str().unwrap().ends_with(" GMT"));
    let jwks: Value = response.json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["e"], "AQAB");
    let kid = key["kid"].as_str().unwrap();
    assert!(
        kid.len() == 40 && kid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{kid}"
    );
    assert_eq!(public_key(key).size(), 256, "RSA-2048");

    idp.sandbox.oidc.set_jwks_max_age(60);
    let response = idp
        .http
        .get(idp.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()[CACHE_CONTROL],
        "public, max-age=60, must-revalidate, no-transform"
    );
    assert_eq!(idp.sandbox.oidc.jwks_fetches(), 2);
    assert_eq!(idp.sandbox.oidc.journal().count("GET /oauth2/v3/certs"), 2);
}

#[tokio::test]
async fn a_queued_workspace_user_signs_in_with_pkce_and_basic_auth_and_gets_a_verifiable_id_token()
{
    let idp = Idp::start().await;
    let client_id = idp.sandbox.oidc.client_id();
    idp.sandbox
        .oidc
        .queue_identity(Identity::workspace("alice@example.com").with_name("Alice Example"));

    let response = idp.authorize(&idp.auth_params()).await;

    assert_eq!(response.status(), StatusCode::FOUND);
    let callback = callback_params(&response);
    assert_eq!(callback["state"], STATE);
    assert!(callback["code"].starts_with("4/0"), "{}", callback["code"]);
    assert_eq!(
        callback["scope"],
        "email openid https://www.googleapis.com/auth/userinfo.email"
    );
    assert_eq!(callback["authuser"], "0");
    assert_eq!(callback["prompt"], "none");
    assert_eq!(callback["hd"], "example.com");
    let raw_location = response.headers()[LOCATION].to_str().unwrap();
    assert!(
        raw_location
            .contains("scope=email%20openid%20https://www.googleapis.com/auth/userinfo.email"),
        "{raw_location}"
    );

    let response = idp.exchange(&callback["code"], Some(VERIFIER)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3599);
    assert_eq!(tokens["scope"], callback["scope"].as_str());
    let access_token = tokens["access_token"].as_str().unwrap();
    assert!(access_token.starts_with("ya29."));
    assert!(tokens.get("refresh_token").is_none());

    let id_token = decode(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token.header.len(), 3, "{:?}", id_token.header);
    assert_eq!(id_token.header["alg"], "RS256");
    assert_eq!(id_token.header["typ"], "JWT");
    assert_eq!(id_token.header["kid"], idp.sandbox.oidc.current_kid());
    let c = &id_token.claims;
    assert_eq!(c["iss"], idp.sandbox.oidc_issuer_url());
    assert_eq!(c["aud"], client_id);
    assert_eq!(c["azp"], client_id);
    let sub = c["sub"].as_str().unwrap();
    assert!(
        sub.len() == 21 && sub.bytes().all(|b| b.is_ascii_digit()),
        "{sub}"
    );
    assert_eq!(sub, idp.sandbox.oidc.sub_for("alice@example.com"));
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["hd"], "example.com");
    assert_eq!(c["nonce"], NONCE);
    assert_eq!(c["name"], "Alice Example");
    let iat = c["iat"].as_i64().unwrap();
    assert!((iat - idp.sandbox.clock.unix()).abs() <= 2);
    assert_eq!(c["exp"].as_i64().unwrap() - iat, 3600);
    let digest = Sha256::digest(access_token.as_bytes());
    assert_eq!(c["at_hash"], URL_SAFE_NO_PAD.encode(&digest[..16]));

    let jwks = idp.jwks().await;
    let key = jwk(&jwks, id_token.header["kid"].as_str().unwrap()).expect("the kid is published");
    assert!(rs256_verifies(&id_token, key));

    let journal = idp.sandbox.oidc.journal();
    assert_eq!(journal.count("GET /o/oauth2/v2/auth"), 1);
    assert_eq!(journal.count("POST /token"), 1);
    assert_eq!(idp.sandbox.oidc.issued_codes_count(), 1);
}

#[tokio::test]
async fn a_consumer_account_signs_in_with_client_secret_post_and_its_token_has_no_hd() {
    let idp = Idp::start().await;
    let code = idp.sign_in(Identity::consumer("bob@gmail.com")).await;
    let client_id = idp.sandbox.oidc.client_id();
    let secret = idp.sandbox.oidc.client_secret();

    let response = idp
        .token_request(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("code_verifier", VERIFIER),
            ],
            None,
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    let jwt = decode(id_token);
    assert_eq!(jwt.claims["email"], "bob@gmail.com");
    assert_eq!(jwt.claims["email_verified"], true);
    assert!(!jwt.claims.contains_key("hd"));
    assert!(verifies_with_jwks(id_token, &idp.jwks().await));

    let again = idp.id_token_for(Identity::consumer("BOB@gmail.com")).await;
    assert_eq!(
        decode(&again).claims["sub"],
        jwt.claims["sub"],
        "sub is stable per email"
    );
    let other = idp.id_token_for(Identity::consumer("carl@gmail.com")).await;
    assert_ne!(decode(&other).claims["sub"], jwt.claims["sub"]);
    let pinned = idp
        .id_token_for(Identity::workspace("alice@example.com").with_sub("42"))
        .await;
    assert_eq!(decode(&pinned).claims["sub"], "42");
}

#[tokio::test]
async fn the_form_is_shown_when_nobody_is_queued_and_posting_it_signs_that_person_in() {
    let idp = Idp::start_with(Config {
        form_default_email: Some("you@example.com".to_owned()),
        form_default_hd: Some("example.com".to_owned()),
        ..Config::default()
    })
    .await;
    let mut params = idp.auth_params();
    params.retain(|(name, _)| *name != "state");
    params.push(("state", "\"><script>alert(1)</script>".to_owned()));

    let response = idp.authorize(&params).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("value=\"you@example.com\""), "{html}");
    assert!(html.contains("value=\"example.com\""));
    assert!(html.contains("Sign in") && html.contains("Deny"));
    assert!(!html.contains("<script>"), "request parameters are escaped");
    assert!(
        !html.contains("<link") && !html.contains("src="),
        "no external resources"
    );
    let hidden = hidden_fields(&html);
    assert!(hidden.contains(&(
        "state".to_owned(),
        "\"><script>alert(1)</script>".to_owned()
    )));
    assert!(hidden.contains(&("code_challenge".to_owned(), CHALLENGE.to_owned())));

    let mut form = hidden.clone();
    form.extend([
        ("signin_email".to_owned(), "carol@example.com".to_owned()),
        ("signin_hd".to_owned(), "example.com".to_owned()),
        ("signin_name".to_owned(), "Carol".to_owned()),
        ("signin_email_verified".to_owned(), "on".to_owned()),
        ("signin_action".to_owned(), "approve".to_owned()),
    ]);
    let response = idp
        .http
        .post(idp.url(AUTH_PATH))
        .form(&form)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::FOUND);
    let callback = callback_params(&response);
    assert_eq!(callback["state"], "\"><script>alert(1)</script>");
    assert_eq!(callback["hd"], "example.com");
    let tokens: Value = idp
        .exchange(&callback["code"], Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let jwt = decode(tokens["id_token"].as_str().unwrap());
    assert_eq!(jwt.claims["email"], "carol@example.com");
    assert_eq!(jwt.claims["hd"], "example.com");
    assert_eq!(jwt.claims["email_verified"], true);
    assert_eq!(jwt.claims["name"], "Carol");

    // Unchecking "email verified" and clearing hd gives a consumer account.
    let mut form = hidden.clone();
    form.extend([
        ("signin_email".to_owned(), "mallory@example.com".to_owned()),
        ("signin_hd".to_owned(), String::new()),
        ("signin_action".to_owned(), "approve".to_owned()),
    ]);
    let response = idp
        .http
        .post(idp.url(AUTH_PATH))
        .form(&form)
        .send()
        .await
        .unwrap();
    let code = callback_params(&response)["code"].clone();
    let tokens: Value = idp
        .exchange(&code, Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let jwt = decode(tokens["id_token"].as_str().unwrap());
    assert_eq!(jwt.claims["email_verified"], false);
    assert!(!jwt.claims.contains_key("hd"));
}

#[tokio::test]
async fn the_form_post_is_validated_again_and_a_forged_redirect_uri_gets_no_redirect() {
    let idp = Idp::start().await;
    let mut form: Vec<(String, String)> = idp
        .auth_params()
        .into_iter()
        .filter(|(name, _)| *name != "redirect_uri")
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    form.push((
        "redirect_uri".to_owned(),
        "https://evil.test/callback".to_owned(),
    ));
    form.push(("signin_email".to_owned(), "alice@example.com".to_owned()));
    form.push(("signin_action".to_owned(), "approve".to_owned()));

    let response = idp
        .http
        .post(idp.url(AUTH_PATH))
        .form(&form)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get(LOCATION).is_none());
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("redirect_uri_mismatch")
    );
    assert_eq!(idp.sandbox.oidc.issued_codes_count(), 0);
}

#[tokio::test]
async fn denying_on_the_form_or_by_knob_redirects_with_access_denied() {
    let idp = Idp::start().await;
    let mut form: Vec<(&str, String)> = idp.auth_params();
    form.push(("signin_email", "alice@example.com".to_owned()));
    form.push(("signin_action", "deny".to_owned()));

    let response = idp
        .http
        .post(idp.url(AUTH_PATH))
        .form(&form)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::FOUND);
    let callback = callback_params(&response);
    assert_eq!(callback["error"], "access_denied");
    assert_eq!(callback["state"], STATE);
    assert!(!callback.contains_key("code"));

    idp.sandbox
        .oidc
        .queue_identity(Identity::workspace("alice@example.com"));
    idp.sandbox.oidc.deny_next();
    let response = idp.authorize(&idp.auth_params()).await;
    assert_eq!(callback_params(&response)["error"], "access_denied");
    let response = idp.authorize(&idp.auth_params()).await;
    assert!(
        callback_params(&response).contains_key("code"),
        "deny_next is one-shot"
    );
}

#[tokio::test]
async fn a_code_used_twice_is_refused_and_the_first_access_token_dies_with_it() {
    let idp = Idp::start().await;
    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;
    let first = idp.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(first.status(), StatusCode::OK);
    let access_token = first.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let second = idp.exchange(&code, Some(VERIFIER)).await;

    assert_eq!(
        oauth_error(second).await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_grant".to_owned(),
            "Malformed auth code.".to_owned()
        )
    );
    let third = idp.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(
        oauth_error(third).await.1,
        "invalid_grant",
        "the code stays dead"
    );
    let userinfo = idp
        .http
        .get(idp.url("/v1/userinfo"))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_wrong_or_missing_pkce_verifier_is_refused() {
    let idp = Idp::start().await;

    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;
    let wrong = idp
        .exchange(
            &code,
            Some("wrong-verifier-wrong-verifier-wrong-verifier-0"),
        )
        .await;
    assert_eq!(oauth_error(wrong).await.1, "invalid_grant");
    let retry = idp.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(
        oauth_error(retry).await.1,
        "invalid_grant",
        "a failed attempt burns the code"
    );

    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;
    let missing = idp.exchange(&code, None).await;
    assert_eq!(
        oauth_error(missing).await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_grant".to_owned(),
            "Missing code verifier.".to_owned()
        )
    );
}

#[tokio::test]
async fn plain_pkce_is_the_default_method_and_can_be_forbidden() {
    let idp = Idp::start().await;
    let mut params = idp.auth_params();
    params.retain(|(name, _)| !name.starts_with("code_challenge"));
    params.push(("code_challenge", VERIFIER.to_owned()));
    idp.sandbox
        .oidc
        .queue_identity(Identity::workspace("alice@example.com"));

    let response = idp.authorize(&params).await;
    let code = callback_params(&response)["code"].clone();
    assert_eq!(
        idp.exchange(&code, Some(VERIFIER)).await.status(),
        StatusCode::OK
    );

    idp.sandbox.oidc.set_require_pkce_s256(true);
    let response = idp.authorize(&params).await;
    assert_eq!(callback_params(&response)["error"], "invalid_request");
    params.retain(|(name, _)| !name.starts_with("code_challenge"));
    let response = idp.authorize(&params).await;
    assert_eq!(callback_params(&response)["error"], "invalid_request");
}

#[tokio::test]
async fn a_wrong_or_missing_client_secret_gets_401_invalid_client() {
    let idp = Idp::start().await;
    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;
    let client_id = idp.sandbox.oidc.client_id();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
    ];

    let wrong_basic = idp
        .token_request(&form, Some(idp.basic("GOCSPX-wrong")))
        .await;
    let mut post_without_secret = form.to_vec();
    post_without_secret.push(("client_id", &client_id));
    let missing_post = idp.token_request(&post_without_secret, None).await;
    let mut post_wrong_secret = post_without_secret.clone();
    post_wrong_secret.push(("client_secret", "GOCSPX-wrong"));
    let wrong_post = idp.token_request(&post_wrong_secret, None).await;

    let unauthorized = (
        StatusCode::UNAUTHORIZED,
        "invalid_client".to_owned(),
        "Unauthorized".to_owned(),
    );
    assert_eq!(oauth_error(wrong_basic).await, unauthorized);
    assert_eq!(oauth_error(missing_post).await, unauthorized);
    assert_eq!(oauth_error(wrong_post).await, unauthorized);
    let good = idp.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(
        good.status(),
        StatusCode::OK,
        "failed client auth does not burn the code"
    );
}

#[tokio::test]
async fn malformed_token_requests_get_the_oauth_error_that_names_the_problem() {
    let idp = Idp::start().await;
    let basic = Some(idp.basic(&idp.sandbox.oidc.client_secret()));

    let no_code = idp
        .token_request(
            &[
                ("grant_type", "authorization_code"),
                ("redirect_uri", REDIRECT_URI),
            ],
            basic.clone(),
        )
        .await;
    let unknown_grant = idp
        .token_request(&[("grant_type", "password")], basic.clone())
        .await;
    let garbage_code = idp
        .token_request(
            &[
                ("grant_type", "authorization_code"),
                ("code", "4/0garbage"),
                ("redirect_uri", REDIRECT_URI),
            ],
            basic.clone(),
        )
        .await;
    idp.sandbox
        .oidc
        .allow_redirect_uri("http://127.0.0.1:9999/other");
    idp.sandbox
        .oidc
        .queue_identity(Identity::workspace("alice@example.com"));
    let mut params = idp.auth_params();
    params.retain(|(name, _)| *name != "redirect_uri");
    params.push(("redirect_uri", "http://127.0.0.1:9999/other".to_owned()));
    let response = idp.authorize(&params).await;
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "an allowed redirect URI works"
    );
    let code = location(&response)
        .query_pairs()
        .find(|(name, _)| name == "code")
        .unwrap()
        .1
        .into_owned();
    let other_redirect = idp.exchange(&code, Some(VERIFIER)).await;

    assert_eq!(
        oauth_error(no_code).await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_request".to_owned(),
            "Missing required parameter: code".to_owned()
        )
    );
    assert_eq!(oauth_error(unknown_grant).await.1, "unsupported_grant_type");
    assert_eq!(oauth_error(garbage_code).await.1, "invalid_grant");
    assert_eq!(
        oauth_error(other_redirect).await,
        (
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch".to_owned(),
            "Bad Request".to_owned()
        )
    );
}

#[tokio::test]
async fn an_unknown_client_or_unregistered_redirect_uri_gets_a_400_page_and_no_redirect() {
    let idp = Idp::start().await;
    idp.sandbox
        .oidc
        .queue_identity(Identity::workspace("alice@example.com"));
    let mut unknown_client = idp.auth_params();
    unknown_client[0].1 = "1234-nope.apps.googleusercontent.com".to_owned();
    let mut wrong_redirect = idp.auth_params();
    wrong_redirect[1].1 = "http://127.0.0.1:8080/oauth2/callback/".to_owned();

    let unknown_client = idp.authorize(&unknown_client).await;
    let wrong_redirect = idp.authorize(&wrong_redirect).await;

    for (response, error) in [
        (unknown_client, "invalid_client"),
        (wrong_redirect, "redirect_uri_mismatch"),
    ] {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(LOCATION).is_none());
        assert!(response.text().await.unwrap().contains(error), "{error}");
    }
    assert_eq!(idp.sandbox.oidc.issued_codes_count(), 0);
}

#[tokio::test]
async fn a_bad_scope_or_response_type_redirects_back_with_the_error_and_state() {
    let idp = Idp::start().await;
    idp.sandbox
        .oidc
        .set_auto_approve(Some(Identity::workspace("alice@example.com")));
    let with = |name: &'static str, value: &str| {
        let mut params = idp.auth_params();
        params.retain(|(n, _)| *n != name);
        params.push((name, value.to_owned()));
        params
    };

    for (params, error) in [
        (with("scope", "openid"), "invalid_scope"),
        (with("scope", "openid profile"), "invalid_scope"),
        (with("scope", "email"), "invalid_scope"),
        (with("response_type", "token"), "unsupported_response_type"),
        (with("code_challenge_method", "S512"), "invalid_request"),
        (with("prompt", "login"), "invalid_request"),
    ] {
        let response = idp.authorize(&params).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        let callback = callback_params(&response);
        assert_eq!(callback["error"], error, "{params:?}");
        assert_eq!(callback["state"], STATE);
        assert!(!callback.contains_key("code"));
    }
    assert_eq!(idp.sandbox.oidc.issued_codes_count(), 0);
}

#[tokio::test]
async fn prompt_none_without_a_scripted_identity_redirects_with_login_required() {
    let idp = Idp::start().await;
    let mut params = idp.auth_params();
    params.push(("prompt", "none".to_owned()));

    let response = idp.authorize(&params).await;

    assert_eq!(callback_params(&response)["error"], "login_required");
}

#[tokio::test]
async fn a_code_is_refused_once_its_ten_minutes_are_up() {
    let idp = Idp::start().await;
    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;

    idp.sandbox.clock.advance(Duration::from_secs(601));
    let response = idp.exchange(&code, Some(VERIFIER)).await;

    assert_eq!(
        oauth_error(response).await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_grant".to_owned(),
            "Bad Request".to_owned()
        )
    );
}

#[tokio::test]
async fn userinfo_answers_for_a_live_access_token_and_revocation_kills_it() {
    let idp = Idp::start().await;
    let tokens = idp
        .tokens_for(Identity::workspace("alice@example.com"))
        .await;
    let access_token = tokens["access_token"].as_str().unwrap();
    let userinfo = |token: &str| {
        idp.http
            .get(idp.url("/v1/userinfo"))
            .bearer_auth(token)
            .send()
    };
    let revoke = |token: &str| {
        idp.http
            .post(idp.url("/revoke"))
            .form(&[("token", token)])
            .send()
    };

    let info: Value = userinfo(access_token).await.unwrap().json().await.unwrap();
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["hd"], "example.com");
    assert_eq!(
        info["sub"],
        decode(tokens["id_token"].as_str().unwrap()).claims["sub"]
    );
    assert_eq!(
        userinfo("ya29.nope").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(revoke(access_token).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        userinfo(access_token).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let again = revoke(access_token).await.unwrap();
    assert_eq!(oauth_error(again).await.1, "invalid_token");
}

#[tokio::test]
async fn rotating_keys_signs_with_a_new_kid_and_keeps_or_drops_the_old_one() {
    let idp = Idp::start().await;
    let first = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;
    let first_kid = decode(&first).header["kid"].as_str().unwrap().to_owned();

    let second_kid = idp.sandbox.oidc.rotate_keys(true);
    let second = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    assert_ne!(second_kid, first_kid);
    assert_eq!(decode(&second).header["kid"], second_kid);
    let jwks = idp.jwks().await;
    assert_eq!(kids(&jwks), vec![second_kid.clone(), first_kid.clone()]);
    assert!(
        verifies_with_jwks(&first, &jwks),
        "the old key still verifies"
    );
    assert!(verifies_with_jwks(&second, &jwks));
    assert_ne!(
        jwk(&jwks, &first_kid).unwrap()["n"],
        jwk(&jwks, &second_kid).unwrap()["n"]
    );

    let third_kid = idp.sandbox.oidc.rotate_keys(false);
    let jwks = idp.jwks().await;
    assert_eq!(kids(&jwks), vec![third_kid]);
    assert!(!verifies_with_jwks(&first, &jwks));
    assert!(!verifies_with_jwks(&second, &jwks));
}

#[tokio::test]
async fn claim_overrides_shape_the_next_token_only_and_stay_properly_signed() {
    let idp = Idp::start().await;
    let now = idp.sandbox.clock.unix();
    idp.sandbox
        .oidc
        .override_next_token(TokenOverride::claims(json!({
            "exp": now - 10,
            "iat": now + 3600,
            "aud": [idp.sandbox.oidc.client_id(), "someone-else"],
            "azp": "someone-else",
            "iss": "https://evil.test",
            "nonce": "replayed",
            "email_verified": "true",
            "hd": null,
        })));

    let forged = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;
    let normal = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    let jwks = idp.jwks().await;
    let jwt = decode(&forged);
    assert!(verifies_with_jwks(&forged, &jwks));
    assert_eq!(jwt.claims["exp"], now - 10);
    assert_eq!(jwt.claims["iat"], now + 3600);
    assert_eq!(
        jwt.claims["aud"],
        json!([idp.sandbox.oidc.client_id(), "someone-else"])
    );
    assert_eq!(jwt.claims["azp"], "someone-else");
    assert_eq!(jwt.claims["iss"], "https://evil.test");
    assert_eq!(jwt.claims["nonce"], "replayed");
    assert_eq!(jwt.claims["email_verified"], "true");
    assert!(!jwt.claims.contains_key("hd"));
    assert_eq!(
        jwt.claims["email"], "alice@example.com",
        "other claims are untouched"
    );
    let normal = decode(&normal);
    assert_eq!(
        normal.claims["hd"], "example.com",
        "the override was single-shot"
    );
    assert_eq!(normal.claims["iss"], idp.sandbox.oidc_issuer_url());
}

#[tokio::test]
async fn alg_none_tokens_have_no_kid_and_an_empty_signature() {
    let idp = Idp::start().await;
    idp.sandbox
        .oidc
        .override_next_token(TokenOverride::signing(Signing::AlgNone));

    let token = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    assert!(token.ends_with('.'), "{token}");
    let jwt = decode(&token);
    assert_eq!(jwt.header["alg"], "none");
    assert!(!jwt.header.contains_key("kid"));
    assert!(jwt.signature.is_empty());
    assert_eq!(jwt.claims["email"], "alice@example.com");
}

#[tokio::test]
async fn hs256_tokens_are_keyed_with_the_published_public_key_pem() {
    let idp = Idp::start().await;
    idp.sandbox
        .oidc
        .override_next_token(TokenOverride::signing(Signing::Hs256WithPublicKey));

    let token = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    let jwt = decode(&token);
    assert_eq!(jwt.header["alg"], "HS256");
    let jwks = idp.jwks().await;
    let key = jwk(&jwks, jwt.header["kid"].as_str().unwrap()).expect("the current kid");
    let pem = public_key(key).to_public_key_pem(LineEnding::LF).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(pem.as_bytes()).unwrap();
    mac.update(jwt.signing_input.as_bytes());
    assert!(mac.verify_slice(&jwt.signature).is_ok());
    assert!(!rs256_verifies(&jwt, key));
}

#[tokio::test]
async fn foreign_key_tokens_claim_the_published_kid_but_verify_with_no_published_key() {
    let idp = Idp::start().await;
    idp.sandbox.oidc.rotate_keys(true);
    idp.sandbox
        .oidc
        .override_next_token(TokenOverride::signing(Signing::ForeignKey));

    let token = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    let jwt = decode(&token);
    assert_eq!(jwt.header["alg"], "RS256");
    assert_eq!(jwt.header["kid"], idp.sandbox.oidc.current_kid());
    assert_eq!(jwt.signature.len(), 256, "a real RSA-2048 signature");
    let jwks = idp.jwks().await;
    for key in jwks["keys"].as_array().unwrap() {
        assert!(!rs256_verifies(&jwt, key), "verified with {}", key["kid"]);
    }
}

#[tokio::test]
async fn unknown_kid_tokens_name_a_key_the_jwks_does_not_have() {
    let idp = Idp::start().await;
    idp.sandbox
        .oidc
        .override_next_token(TokenOverride::signing(Signing::UnknownKid));

    let token = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    let jwt = decode(&token);
    assert_eq!(jwt.header["alg"], "RS256");
    let kid = jwt.header["kid"].as_str().unwrap();
    assert_eq!(kid.len(), 40);
    let jwks = idp.jwks().await;
    assert!(jwk(&jwks, kid).is_none());
    for key in jwks["keys"].as_array().unwrap() {
        assert!(!rs256_verifies(&jwt, key));
    }
}

#[tokio::test]
async fn a_payload_tampered_after_signing_fails_verification() {
    let idp = Idp::start().await;
    idp.sandbox.oidc.override_next_token(TokenOverride {
        claims: claims(json!({"hd": "example.com", "email": "mallory@example.com"})),
        tamper_payload_after_signing: true,
        ..TokenOverride::default()
    });
    let forged = idp
        .id_token_for(Identity::consumer("mallory@gmail.com"))
        .await;
    idp.sandbox.oidc.override_next_token(TokenOverride {
        tamper_payload_after_signing: true,
        ..TokenOverride::default()
    });
    let bare = idp
        .id_token_for(Identity::consumer("mallory@gmail.com"))
        .await;

    let jwks = idp.jwks().await;
    let jwt = decode(&forged);
    assert_eq!(jwt.claims["hd"], "example.com");
    assert_eq!(jwt.claims["email"], "mallory@example.com");
    assert_eq!(jwt.header["kid"], idp.sandbox.oidc.current_kid());
    assert!(!verifies_with_jwks(&forged, &jwks));
    assert!(!verifies_with_jwks(&bare, &jwks));
    assert_ne!(
        decode(&bare).claims["sub"],
        idp.sandbox.oidc.sub_for("mallory@gmail.com"),
        "with no claims given, sub is what changes"
    );
}

#[tokio::test]
async fn header_overrides_and_raw_minting_sign_whatever_a_test_asks_for() {
    let idp = Idp::start().await;
    idp.sandbox.oidc.override_next_token(TokenOverride {
        header: claims(json!({"typ": null, "kid": "not-a-kid"})),
        ..TokenOverride::default()
    });
    let odd_header = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;
    let jwt = decode(&odd_header);
    assert!(!jwt.header.contains_key("typ"));
    assert_eq!(jwt.header["kid"], "not-a-kid");

    let raw = idp
        .sandbox
        .oidc
        .mint_id_token(claims(json!({"sub": "1", "anything": [1, 2]})));

    let jwt = decode(&raw);
    assert_eq!(jwt.claims, claims(json!({"sub": "1", "anything": [1, 2]})));
    assert!(verifies_with_jwks(&raw, &idp.jwks().await));
}

#[tokio::test]
async fn the_bare_issuer_form_drops_the_scheme_from_iss_only() {
    let idp = Idp::start().await;
    idp.sandbox.oidc.set_issuer_form(IssuerForm::Bare);

    let token = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;

    let issuer = idp.sandbox.oidc_issuer_url();
    assert_eq!(
        decode(&token).claims["iss"],
        issuer.trim_start_matches("http://")
    );
    let document = idp
        .get_json(&format!("{issuer}/.well-known/openid-configuration"))
        .await;
    assert_eq!(document["issuer"], issuer);

    idp.sandbox.oidc.set_issuer_form(IssuerForm::Alternate);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let token = idp
            .id_token_for(Identity::workspace("alice@example.com"))
            .await;
        seen.push(decode(&token).claims["iss"].as_str().unwrap().to_owned());
    }
    let bare = issuer.trim_start_matches("http://").to_owned();
    assert_eq!(seen, [issuer.clone(), bare, issuer]);
}

#[tokio::test]
async fn injected_jwks_and_token_failures_answer_errors_then_recover() {
    let idp = Idp::start().await;
    idp.sandbox.oidc.fail_next_jwks(2);
    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;
    idp.sandbox.oidc.fail_next_token(1, 503);

    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = idp
            .http
            .get(idp.url("/oauth2/v3/certs"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    let failed = idp.exchange(&code, Some(VERIFIER)).await;
    let recovered = idp.exchange(&code, Some(VERIFIER)).await;

    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK
        ]
    );
    assert_eq!(idp.sandbox.oidc.jwks_fetches(), 3);
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        recovered.status(),
        StatusCode::OK,
        "the injected failure left the code alone"
    );
}

#[tokio::test]
async fn oversized_answers_are_armed_per_endpoint_and_streamed_with_no_length() {
    let idp = Idp::start().await;
    idp.sandbox
        .oidc
        .oversize_next(sandbox::oidc::Endpoint::Jwks, 1, 200_000);
    let armed = idp
        .post_json(
            "/_sandbox/oidc/oversize-next",
            &json!({"endpoint": "discovery", "bytes": 100_000}),
        )
        .await;
    assert_eq!(armed.status(), StatusCode::NO_CONTENT);

    let jwks = idp
        .http
        .get(idp.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);
    assert!(!jwks.headers().contains_key("content-length"));
    assert_eq!(jwks.text().await.unwrap().len(), 200_000);
    let discovery = idp
        .http
        .get(idp.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(discovery.text().await.unwrap().len(), 100_000);

    let jwks: Value = idp
        .http
        .get(idp.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(jwks["keys"].is_array(), "armed once only");
}

#[tokio::test]
async fn the_control_routes_drive_the_fake_over_http() {
    let idp = Idp::start().await;
    let no_content = StatusCode::NO_CONTENT;

    let queued = idp
        .post_json(
            "/_sandbox/oidc/queue-identity",
            &json!({"email": "dave@sub.example.com", "hd": "example.com"}),
        )
        .await;
    assert_eq!(queued.status(), no_content);
    let response = idp.authorize(&idp.auth_params()).await;
    let code = callback_params(&response)["code"].clone();
    let tokens: Value = idp
        .exchange(&code, Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let jwt = decode(tokens["id_token"].as_str().unwrap());
    assert_eq!(jwt.claims["email"], "dave@sub.example.com");
    assert_eq!(jwt.claims["hd"], "example.com");
    assert_eq!(
        jwt.claims["email_verified"], true,
        "verified unless said otherwise"
    );

    let overridden = idp
        .post_json(
            "/_sandbox/oidc/override-next-token",
            &json!({"signing": "alg_none", "claims": {"email": "x@y.z"}}),
        )
        .await;
    assert_eq!(overridden.status(), no_content);
    let auto = idp
        .post_json(
            "/_sandbox/oidc/auto-approve",
            &json!({"email": "erin@example.com"}),
        )
        .await;
    assert_eq!(auto.status(), no_content);
    let forged = idp.tokens_for_scripted().await;
    let jwt = decode(&forged);
    assert_eq!(jwt.header["alg"], "none");
    assert_eq!(jwt.claims["email"], "x@y.z");

    let denied = idp
        .post_json("/_sandbox/oidc/deny-next", &json!(null))
        .await;
    assert_eq!(denied.status(), no_content);
    let response = idp.authorize(&idp.auth_params()).await;
    assert_eq!(callback_params(&response)["error"], "access_denied");

    let rotated: Value = idp
        .post_json("/_sandbox/oidc/rotate-keys", &json!({"keep_old": false}))
        .await
        .json()
        .await
        .unwrap();
    let minted: Value = idp
        .post_json("/_sandbox/oidc/mint-id-token", &json!({"sub": "7"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        decode(minted["id_token"].as_str().unwrap()).header["kid"],
        rotated["kid"]
    );

    let stats = idp.get_json(&idp.url("/_sandbox/oidc/stats")).await;
    assert_eq!(stats["issued_codes"], 2);
    assert_eq!(stats["current_kid"], rotated["kid"]);
    assert_eq!(stats["published_kids"], json!([rotated["kid"]]));
    assert_eq!(stats["counters"]["POST /token"], 2);
    assert!(
        stats["counters"]
            .get("POST /_sandbox/oidc/deny-next")
            .is_none(),
        "control calls are not journaled"
    );
}

impl Idp {
    /// The ID token of a sign-in whose identity the fake already has
    /// scripted (queued or auto-approved).
    async fn tokens_for_scripted(&self) -> String {
        let response = self.authorize(&self.auth_params()).await;
        let code = callback_params(&response)["code"].clone();
        let tokens: Value = self
            .exchange(&code, Some(VERIFIER))
            .await
            .json()
            .await
            .unwrap();
        tokens["id_token"].as_str().expect("an id_token").to_owned()
    }
}

#[tokio::test]
async fn github_tokens_carry_workflow_claims_and_verify_only_with_the_github_jwks() {
    let idp = Idp::start().await;
    let github = &idp.sandbox.github;
    let issuer = idp.sandbox.github_issuer_url();

    let token = github.mint_github_token(GithubClaims {
        repository: "octo-org/octo-repo".to_owned(),
        ref_: "refs/heads/main".to_owned(),
        audience: "https://api.openai.com/v1".to_owned(),
        environment: None,
        extra: claims(json!({"actor": "octocat"})),
    });

    let document = idp
        .get_json(&format!("{issuer}/.well-known/openid-configuration"))
        .await;
    assert_eq!(document["issuer"], issuer);
    let github_jwks = idp.get_json(document["jwks_uri"].as_str().unwrap()).await;
    assert!(verifies_with_jwks(&token, &github_jwks));
    assert!(
        !verifies_with_jwks(&token, &idp.jwks().await),
        "not a Google key"
    );
    assert_eq!(github.jwks_fetches(), 1);

    let c = decode(&token).claims;
    assert_eq!(c["iss"], issuer);
    assert_eq!(c["aud"], "https://api.openai.com/v1");
    assert_eq!(c["sub"], "repo:octo-org/octo-repo:ref:refs/heads/main");
    assert_eq!(c["repository"], "octo-org/octo-repo");
    assert_eq!(c["repository_owner"], "octo-org");
    assert_eq!(c["ref"], "refs/heads/main");
    assert_eq!(c["actor"], "octocat");
    for id in ["repository_id", "repository_owner_id", "run_id"] {
        let value = c[id].as_str().unwrap_or_else(|| panic!("{id} is a string"));
        assert!(value.bytes().all(|b| b.is_ascii_digit()), "{id}: {value}");
    }
    assert_eq!(c["sha"].as_str().unwrap().len(), 40);
    assert!(c["workflow"].is_string() && c["jti"].is_string());
    assert_eq!(
        c["job_workflow_ref"],
        "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main"
    );
    let iat = c["iat"].as_i64().unwrap();
    assert_eq!(c["nbf"].as_i64().unwrap(), iat - 600);
    assert_eq!(c["event_name"], "push");
    assert_eq!(c["exp"].as_i64().unwrap() - iat, 300);
    assert!(!c.contains_key("environment"));

    let response = idp
        .http
        .post(format!("{issuer}/_sandbox/oidc/github-token"))
        .json(
            &json!({"repository": "octo-org/octo-repo", "ref": "refs/heads/main",
                      "environment": "production"}),
        )
        .send()
        .await
        .unwrap();
    let value: Value = response.json().await.unwrap();
    let c = decode(value["value"].as_str().unwrap()).claims;
    assert_eq!(c["sub"], "repo:octo-org/octo-repo:environment:production");
    assert_eq!(c["environment"], "production");
    assert_eq!(c["aud"], "https://github.com/octo-org");
    assert_eq!(
        c["repository_id"],
        decode(&token).claims["repository_id"],
        "ids are stable per repository"
    );

    let pull =
        github.mint_github_token(GithubClaims::new("octo-org/octo-repo", "refs/pull/7/merge"));
    let c = decode(&pull).claims;
    assert_eq!(c["sub"], "repo:octo-org/octo-repo:pull_request");
    assert_eq!(c["event_name"], "pull_request");

    let sign_in = idp
        .http
        .get(format!("{issuer}/o/oauth2/v2/auth"))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), StatusCode::BAD_REQUEST);
}

// ----- fixtures, refresh tokens, key lifecycle, journal, clock -----

/// The default request plus `extra` parameters.
fn with_params(idp: &Idp, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut params = idp.auth_params();
    params.extend(
        extra
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    params
}

/// Signs in with `extra` parameters (nobody queued) and exchanges the code.
async fn tokens_with(idp: &Idp, extra: &[(&'static str, &str)]) -> Value {
    let response = idp.authorize(&with_params(idp, extra)).await;
    assert_eq!(response.status(), StatusCode::FOUND, "{extra:?}");
    let code = callback_params(&response)["code"].clone();
    let response = idp.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("token JSON")
}

#[tokio::test]
async fn a_login_hint_naming_a_fixture_signs_it_in_without_the_form() {
    let idp = Idp::start().await;
    let fixtures = idp.sandbox.oidc.fixtures();
    let ids: Vec<&str> = fixtures.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["alice", "mallory", "bob", "eve", "carol", "dave", "alice2"]
    );

    let mallory = tokens_with(&idp, &[("login_hint", "mallory")]).await;
    let claims = decode(mallory["id_token"].as_str().unwrap()).claims;
    assert_eq!(claims["email"], "mallory@example.com");
    assert_eq!(claims["email_verified"], true);
    assert!(
        !claims.contains_key("hd"),
        "a consumer account on the company address"
    );

    let carol = tokens_with(&idp, &[("login_hint", "CAROL")]).await;
    let claims = decode(carol["id_token"].as_str().unwrap()).claims;
    assert_eq!(claims["email_verified"], false);
    assert_eq!(claims["hd"], "example.com");

    let dave = tokens_with(&idp, &[("login_hint", "dave")]).await;
    let claims = decode(dave["id_token"].as_str().unwrap()).claims;
    assert_eq!(claims["email"], "dave@sub.example.com");
    assert_eq!(claims["hd"], "example.com");

    // alice and alice2 share an address and a domain but not a `sub`; the
    // address alone names alice, as does a queued identity with it.
    let by_email = tokens_with(&idp, &[("login_hint", "alice@example.com")]).await;
    let alice2 = tokens_with(&idp, &[("login_hint", "alice2")]).await;
    let alice = decode(by_email["id_token"].as_str().unwrap()).claims;
    let alice2 = decode(alice2["id_token"].as_str().unwrap()).claims;
    assert_eq!(alice["email"], alice2["email"]);
    assert_eq!(alice["hd"], alice2["hd"]);
    assert_ne!(alice["sub"], alice2["sub"]);
    assert_eq!(
        Some(alice["sub"].as_str().unwrap()),
        idp.sandbox.oidc.fixture("alice").unwrap().sub.as_deref()
    );
    let queued = idp
        .id_token_for(Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(decode(&queued).claims["sub"], alice["sub"]);

    // A hint that names nobody only fills in the form.
    let form = idp
        .authorize(&with_params(&idp, &[("login_hint", "zoe@example.com")]))
        .await;
    assert_eq!(form.status(), StatusCode::OK);
    assert!(
        form.text()
            .await
            .unwrap()
            .contains("value=\"zoe@example.com\"")
    );

    let listed = idp.get_json(&idp.url("/_sandbox/oidc/fixtures")).await;
    assert_eq!(listed["bob"]["email"], "bob@gmail.com");
    assert_eq!(listed["eve"]["hd"], "evil.test");
}

#[tokio::test]
async fn offline_access_gets_one_refresh_token_that_refreshes_until_revoked() {
    let idp = Idp::start().await;
    let online = tokens_with(&idp, &[("login_hint", "alice")]).await;
    assert!(online.get("refresh_token").is_none());

    let first = tokens_with(&idp, &[("login_hint", "alice"), ("access_type", "offline")]).await;
    let refresh_token = first["refresh_token"].as_str().expect("a refresh token");
    assert!(refresh_token.starts_with("1//"), "{refresh_token}");
    let again = tokens_with(&idp, &[("login_hint", "alice"), ("access_type", "offline")]).await;
    assert!(
        again.get("refresh_token").is_none(),
        "only on the first consent"
    );
    let consent = tokens_with(
        &idp,
        &[
            ("login_hint", "alice"),
            ("access_type", "offline"),
            ("prompt", "consent"),
        ],
    )
    .await;
    assert!(
        consent["refresh_token"].as_str().is_some(),
        "again with prompt=consent"
    );

    let secret = idp.sandbox.oidc.client_secret();
    let refreshed = idp
        .token_request(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            Some(idp.basic(&secret)),
        )
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed: Value = refreshed.json().await.unwrap();
    assert_eq!(refreshed["token_type"], "Bearer");
    assert_eq!(refreshed["expires_in"], 3599);
    assert!(
        refreshed.get("refresh_token").is_none(),
        "not rotated by default"
    );
    assert_ne!(refreshed["access_token"], first["access_token"]);
    let claims = decode(refreshed["id_token"].as_str().unwrap()).claims;
    assert_eq!(claims["email"], "alice@example.com");
    assert!(
        !claims.contains_key("nonce"),
        "the nonce belongs to the sign-in"
    );

    let stranger = idp
        .token_request(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "1//0gnope"),
            ],
            Some(idp.basic(&secret)),
        )
        .await;
    assert_eq!(
        oauth_error(stranger).await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_grant".to_owned(),
            "Token has been expired or revoked.".to_owned()
        )
    );
    let bad_secret = idp
        .token_request(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            Some(idp.basic("GOCSPX-wrong")),
        )
        .await;
    assert_eq!(bad_secret.status(), StatusCode::UNAUTHORIZED);

    // Revoking the refresh token ends the grant: it and its access tokens.
    let revoked = idp
        .http
        .post(idp.url("/revoke"))
        .form(&[("token", refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let dead = idp
        .token_request(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            Some(idp.basic(&secret)),
        )
        .await;
    assert_eq!(oauth_error(dead).await.1, "invalid_grant");
    for token in [&first["access_token"], &refreshed["access_token"]] {
        let userinfo = idp
            .http
            .get(idp.url("/v1/userinfo"))
            .bearer_auth(token.as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(userinfo.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_when_the_knob_says_so() {
    let idp = Idp::start().await;
    let first = tokens_with(&idp, &[("login_hint", "bob"), ("access_type", "offline")]).await;
    let old = first["refresh_token"].as_str().unwrap().to_owned();
    let switched = idp
        .post_json(
            "/_sandbox/oidc/rotate-refresh-tokens",
            &json!({"enabled": true}),
        )
        .await;
    assert_eq!(switched.status(), StatusCode::NO_CONTENT);
    let form = |token: &str| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", token.to_owned()),
            ("client_id", idp.sandbox.oidc.client_id()),
            ("client_secret", idp.sandbox.oidc.client_secret()),
        ]
    };

    let rotated: Value = idp
        .http
        .post(idp.url("/token"))
        .form(&form(&old))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = rotated["refresh_token"]
        .as_str()
        .expect("a new refresh token");
    let reused = idp
        .http
        .post(idp.url("/token"))
        .form(&form(&old))
        .send()
        .await
        .unwrap();

    assert_ne!(new, old);
    assert_eq!(oauth_error(reused).await.1, "invalid_grant");
}

#[tokio::test]
async fn an_unknown_access_type_is_refused_by_redirect() {
    let idp = Idp::start().await;

    let response = idp
        .authorize(&with_params(
            &idp,
            &[("login_hint", "alice"), ("access_type", "forever")],
        ))
        .await;

    let callback = callback_params(&response);
    assert_eq!(callback["error"], "invalid_request");
    assert_eq!(callback["state"], STATE);
}

#[tokio::test]
async fn a_rotation_with_an_overlap_drops_the_old_key_once_the_clock_passes_it() {
    let idp = Idp::start().await;
    let old_kid = idp.sandbox.oidc.current_kid();

    let next_kid = idp
        .post_json("/_sandbox/oidc/publish-next-key", &json!({}))
        .await
        .json::<Value>()
        .await
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(kids(&idp.jwks().await), [old_kid.clone(), next_kid.clone()]);
    assert_eq!(
        idp.sandbox.oidc.current_kid(),
        old_kid,
        "published, not signing yet"
    );

    let rotated = idp
        .post_json(
            "/_sandbox/oidc/rotate-keys",
            &json!({"overlap_seconds": 3600}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        rotated["kid"],
        next_kid.as_str(),
        "the pre-published key signs now"
    );
    assert_eq!(kids(&idp.jwks().await), [next_kid.clone(), old_kid.clone()]);

    idp.sandbox.clock.advance(Duration::from_secs(3599));
    assert_eq!(idp.sandbox.oidc.published_kids().len(), 2);
    idp.sandbox.clock.advance(Duration::from_secs(1));
    assert_eq!(kids(&idp.jwks().await), [next_kid]);
}

#[tokio::test]
async fn a_hanging_jwks_leaves_the_client_to_time_out_then_answers() {
    let idp = Idp::start().await;
    let armed = idp
        .post_json("/_sandbox/oidc/hang-next-jwks", &json!({"count": 1}))
        .await;
    assert_eq!(armed.status(), StatusCode::NO_CONTENT);

    let hung = idp
        .http
        .get(idp.url("/oauth2/v3/certs"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;

    assert!(hung.is_err_and(|e| e.is_timeout()));
    assert_eq!(idp.jwks().await["keys"].as_array().unwrap().len(), 1);
    assert_eq!(idp.sandbox.oidc.jwks_fetches(), 2);
}

#[tokio::test]
async fn the_journal_shows_what_the_client_sent_to_the_token_endpoint() {
    let idp = Idp::start().await;
    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;
    let secret = idp.sandbox.oidc.client_secret();

    idp.exchange(&code, Some(VERIFIER)).await;

    let entries = idp.sandbox.oidc.journal().entries();
    let token = entries
        .iter()
        .find(|e| e.path == "/token")
        .expect("the token request");
    assert_eq!(token.status, 200);
    assert!(token.authorized_with(&idp.basic(&secret)));
    let form: HashMap<String, String> = token.form().into_iter().collect();
    assert_eq!(form["code_verifier"], VERIFIER);
    assert_eq!(form["redirect_uri"], REDIRECT_URI);
    assert!(
        !form.contains_key("client_secret"),
        "client_secret_basic only"
    );
    let authorize = &entries[0];
    assert_eq!(authorize.path, AUTH_PATH);
    assert!(
        authorize
            .query
            .as_deref()
            .unwrap()
            .contains("code_challenge=")
    );
    let dumped = idp.get_json(&idp.url("/_sandbox/oidc/journal")).await;
    assert_eq!(
        dumped["entries"][1]["authorization_sha256"],
        sandbox::journal::authorization_hash(&idp.basic(&secret))
    );
}

#[tokio::test]
async fn the_shared_clock_and_the_code_lifetime_are_controlled_from_the_google_port() {
    let idp = Idp::start().await;
    let ttl = idp
        .post_json("/_sandbox/oidc/code-ttl", &json!({"seconds": 30}))
        .await;
    assert_eq!(ttl.status(), StatusCode::NO_CONTENT);
    let code = idp.sign_in(Identity::workspace("alice@example.com")).await;

    let moved = idp
        .post_json("/_sandbox/clock", &json!({"advance_seconds": 30}))
        .await;

    assert_eq!(moved.status(), StatusCode::OK);
    let moved: Value = moved.json().await.unwrap();
    assert!(moved["offset_ms"].as_i64().unwrap() >= 30_000);
    assert_eq!(
        idp.sandbox.clock.offset_ms(),
        moved["offset_ms"].as_i64().unwrap()
    );
    let late = idp.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(oauth_error(late).await.1, "invalid_grant");
    let github_clock = idp
        .get_json(&format!("{}/_sandbox/clock", idp.sandbox.github.origin()))
        .await;
    assert_eq!(github_clock["offset_ms"], moved["offset_ms"]);
    let refused = idp
        .post_json("/_sandbox/clock", &json!({"advance_seconds": -1}))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

/// reqwest is built with `rustls-no-provider` in a workspace build (the key
/// server's choice), so a provider must be installed before any client.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
