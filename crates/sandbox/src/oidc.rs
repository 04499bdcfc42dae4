//! A fake Google-style OpenID Connect provider (and, with
//! [`Config::github_actions`], a fake GitHub Actions workload issuer) served
//! over HTTP on loopback, with knobs to script sign-ins and forge tokens.
//!
//! Routes of the Google flavour (all under the origin it is served at):
//!
//! | Route | What it does |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery document |
//! | `GET /oauth2/v3/certs` | JWKS, with Google's caching headers |
//! | `GET, POST /o/oauth2/v2/auth` | authorization endpoint and sign-in form |
//! | `POST /token` | authorization-code and refresh-token grants |
//! | `GET /v1/userinfo` | claims for a bearer access token |
//! | `POST /revoke` | revocation of an access or refresh token's grant |
//! | `/_sandbox/oidc/...` | JSON control routes (see [`FakeOidc::router`]) |
//! | `GET, POST /_sandbox/clock` | the shared virtual clock |
//!
//! Who signs in, in this order: the user fixture that `login_hint` names
//! (see [`FakeOidc::fixtures`]), the next queued identity, the
//! auto-approved one, else whoever a person types into the form.
//!
//! The GitHub flavour serves discovery, its JWKS at `/.well-known/jwks` and
//! the control routes; its authorization endpoint answers 400, since
//! workloads never sign in interactively.

mod authorize;
mod control;
mod discovery;
mod github;
mod jwt;
mod keys;
mod params;
mod token;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::clock::Clock;
use crate::journal::{self, Journal};

pub use github::GithubClaims;
pub use jwt::{Signing, TokenOverride};

/// Which real service a provider imitates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Google accounts: interactive sign-in, code flow, ID tokens for people.
    #[default]
    Google,
    /// GitHub Actions' token issuer: workload tokens minted on request.
    GithubActions,
}

/// How the `iss` claim of issued tokens spells the issuer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerForm {
    /// Exactly the issuer of the discovery document, scheme included
    /// (`https://accounts.google.com` for the real Google).
    #[default]
    Https,
    /// The issuer without its scheme, like Google's `accounts.google.com`.
    Bare,
    /// Scheme form and bare form by turns, starting with the scheme form.
    Alternate,
}

/// Settings of a fake provider. Fields are read once by [`FakeOidc::new`];
/// the knobs that tests change later have setters on [`FakeOidc`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Which service to imitate.
    pub kind: Kind,
    /// The one registered OAuth client id (Google form
    /// `NNNN-xxxx.apps.googleusercontent.com`).
    pub client_id: String,
    /// That client's secret (Google form `GOCSPX-...`).
    pub client_secret: String,
    /// Redirect URIs registered for the client, compared exactly.
    pub redirect_uris: Vec<String>,
    /// The issuer; `None` means the origin the provider is served at.
    pub issuer: Option<String>,
    /// How tokens spell the issuer in `iss`.
    pub issuer_form: IssuerForm,
    /// `max-age` of the JWKS response's `Cache-Control`.
    pub jwks_max_age: Duration,
    /// How long an authorization code can be exchanged.
    pub code_ttl: Duration,
    /// Refuse authorization requests without an `S256` PKCE challenge.
    pub require_pkce_s256: bool,
    /// Email prefilled in the sign-in form (the request's `login_hint` wins).
    pub form_default_email: Option<String>,
    /// Hosted domain prefilled in the sign-in form.
    pub form_default_hd: Option<String>,
    /// Fields merged over the discovery document; a `null` removes a field.
    pub discovery_overrides: Map<String, Value>,
}

impl Default for Config {
    /// Google-like: a random client id and secret in Google's formats, the
    /// key server's usual loopback callbacks registered.
    fn default() -> Self {
        Self {
            kind: Kind::Google,
            client_id: format!(
                "{}-{}.apps.googleusercontent.com",
                random_digits(12),
                random_string(32, b"abcdefghijklmnopqrstuvwxyz0123456789")
            ),
            client_secret: format!("GOCSPX-{}", random_string(28, URL_SAFE)),
            redirect_uris: vec![
                "http://127.0.0.1:8080/oauth2/callback".to_owned(),
                "http://localhost:8080/oauth2/callback".to_owned(),
            ],
            issuer: None,
            issuer_form: IssuerForm::Https,
            jwks_max_age: Duration::from_secs(21_600),
            code_ttl: Duration::from_secs(600),
            require_pkce_s256: false,
            form_default_email: None,
            form_default_hd: None,
            discovery_overrides: Map::new(),
        }
    }
}

impl Config {
    /// Settings for a GitHub-Actions-style workload issuer: no OAuth client,
    /// no redirect URIs; tokens come from [`FakeOidc::mint_github_token`].
    pub fn github_actions() -> Self {
        Self {
            kind: Kind::GithubActions,
            client_id: String::new(),
            client_secret: String::new(),
            redirect_uris: Vec::new(),
            ..Self::default()
        }
    }
}

/// Who signs in: what the ID token will say about the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The `email` claim.
    pub email: String,
    /// The `email_verified` claim.
    #[serde(default = "yes")]
    pub email_verified: bool,
    /// The `hd` claim; `None` for consumer accounts (the claim is absent).
    #[serde(default)]
    pub hd: Option<String>,
    /// The `name` claim; `None` uses the email's local part.
    #[serde(default)]
    pub name: Option<String>,
    /// The `sub` claim; `None` uses a 21-digit id that the provider keeps
    /// stable for this email.
    #[serde(default)]
    pub sub: Option<String>,
    /// A `groups` claim, as Okta, Entra ID and Keycloak send one (Google
    /// never does); `None` leaves the claim out.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl Identity {
    /// A Google Workspace account: `hd` is the email's domain, verified.
    pub fn workspace(email: &str) -> Self {
        let hd = email.rsplit_once('@').map(|(_, domain)| domain.to_owned());
        Self {
            hd,
            ..Self::consumer(email)
        }
    }

    /// A consumer account (Gmail, or a non-Gmail address registered as a
    /// Google account): no `hd`, verified.
    pub fn consumer(email: &str) -> Self {
        Self {
            email: email.to_owned(),
            email_verified: true,
            hd: None,
            name: None,
            sub: None,
            groups: None,
        }
    }

    /// The same identity with a `groups` claim.
    pub fn with_groups(self, groups: &[&str]) -> Self {
        Self {
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            ..self
        }
    }

    /// The same identity with `hd` replaced.
    pub fn with_hd(self, hd: Option<&str>) -> Self {
        Self {
            hd: hd.map(str::to_owned),
            ..self
        }
    }

    /// The same identity with a fixed `sub`.
    pub fn with_sub(self, sub: &str) -> Self {
        Self {
            sub: Some(sub.to_owned()),
            ..self
        }
    }

    /// The same identity with a display name.
    pub fn with_name(self, name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            ..self
        }
    }

    /// The same identity with `email_verified: false`.
    pub fn unverified(self) -> Self {
        Self {
            email_verified: false,
            ..self
        }
    }

    fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.email
                .split_once('@')
                .map_or(self.email.as_str(), |(local, _)| local)
                .to_owned()
        })
    }
}

/// The user fixtures of spec §8, by id; `alice2` (alice's address in a
/// re-created Workspace: "domain resurrection") has `alice2_sub`, the others
/// have no `sub` yet.
fn fixtures(alice2_sub: &str) -> Vec<(&'static str, Identity)> {
    vec![
        (
            "alice",
            Identity::workspace("alice@example.com").with_name("Alice Example"),
        ),
        // A consumer Google account on the company's address: no `hd`.
        ("mallory", Identity::consumer("mallory@example.com")),
        ("bob", Identity::consumer("bob@gmail.com")),
        ("eve", Identity::workspace("eve@evil.test")),
        (
            "carol",
            Identity::workspace("carol@example.com").unverified(),
        ),
        // An address in a secondary domain of the example.com Workspace.
        (
            "dave",
            Identity::workspace("dave@sub.example.com").with_hd(Some("example.com")),
        ),
        (
            "alice2",
            Identity::workspace("alice@example.com")
                .with_name("Alice Example")
                .with_sub(alice2_sub),
        ),
    ]
}

/// A fake OIDC provider. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct FakeOidc {
    inner: Arc<Provider>,
}

/// What never changes after start, plus the mutable state behind one lock.
#[derive(Debug)]
struct Provider {
    kind: Kind,
    origin: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    form_default_email: Option<String>,
    form_default_hd: Option<String>,
    discovery_overrides: Map<String, Value>,
    /// The user fixtures (Google flavour only), by id.
    fixtures: Vec<(&'static str, Identity)>,
    clock: Clock,
    journal: Journal,
    state: Mutex<State>,
}

/// Everything that changes while the provider runs.
#[derive(Debug)]
struct State {
    redirect_uris: Vec<String>,
    /// The client's secrets besides the one it was made with (Google
    /// allows two at once), and whether that first one is disabled.
    extra_client_secrets: Vec<String>,
    first_secret_disabled: bool,
    queue: VecDeque<Identity>,
    auto_approve: Option<Identity>,
    deny_next: bool,
    keys: keys::KeyRing,
    next_override: Option<TokenOverride>,
    jwks_max_age: u64,
    jwks_fetches: u64,
    fail_jwks: u32,
    hang_jwks: u32,
    fail_token: u32,
    fail_token_status: u16,
    /// Answers armed by [`FakeOidc::oversize_next`], by endpoint: how many,
    /// and how large.
    oversized: HashMap<Endpoint, (u32, u64)>,
    issuer_form: IssuerForm,
    alternate_bare: bool,
    require_pkce_s256: bool,
    code_ttl: Duration,
    subs: HashMap<String, String>,
    codes: HashMap<String, token::Grant>,
    codes_issued: u64,
    access_tokens: HashMap<String, token::AccessGrant>,
    refresh_tokens: HashMap<String, token::RefreshGrant>,
    /// Subjects that already gave this client offline access: Google sends
    /// a refresh token only on that first consent (or with
    /// `prompt=consent`).
    offline_consents: HashSet<String>,
    rotate_refresh_tokens: bool,
    github_ids: HashMap<String, String>,
}

/// An endpoint of the provider, for [`FakeOidc::oversize_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/.well-known/openid-configuration`.
    Discovery,
    /// The key set.
    Jwks,
    /// `POST /token`.
    Token,
}

impl Provider {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `secret` is one of the client's live secrets.
    pub(crate) fn client_secret_is_live(&self, secret: &str) -> bool {
        let state = self.lock();
        (secret == self.client_secret && !state.first_secret_disabled)
            || state.extra_client_secrets.iter().any(|s| s == secret)
    }

    /// An oversized answer for `endpoint`, if one is armed.
    fn take_oversized(&self, endpoint: Endpoint) -> Option<axum::response::Response> {
        let mut state = self.lock();
        let (count, bytes) = state.oversized.get_mut(&endpoint)?;
        if *count == 0 {
            return None;
        }
        *count -= 1;
        Some(crate::padding::oversized(*bytes))
    }

    /// The `iss` claim for the next token, per the issuer-form knob.
    fn token_issuer(&self, state: &mut State) -> String {
        let bare = match state.issuer_form {
            IssuerForm::Https => false,
            IssuerForm::Bare => true,
            IssuerForm::Alternate => {
                let bare = state.alternate_bare;
                state.alternate_bare = !bare;
                bare
            }
        };
        if bare {
            bare_issuer(&self.issuer)
        } else {
            self.issuer.clone()
        }
    }

    /// The fixture a `login_hint` names: by id, else by email (the first
    /// fixture with it, so `alice@example.com` is `alice`), else by `sub`
    /// (Google takes an email or a `sub` as the hint). Case-insensitive.
    fn fixture_for_hint(&self, hint: &str) -> Option<Identity> {
        let by = |matches: &dyn Fn(&str, &Identity) -> bool| {
            self.fixtures
                .iter()
                .find(|(id, identity)| matches(id, identity))
                .map(|(_, identity)| identity.clone())
        };
        by(&|id, _| id.eq_ignore_ascii_case(hint))
            .or_else(|| by(&|_, identity| identity.email.eq_ignore_ascii_case(hint)))
            .or_else(|| by(&|_, identity| identity.sub.as_deref() == Some(hint)))
    }

    /// The stable 21-digit `sub` of an email (case-insensitive).
    fn sub_for(state: &mut State, email: &str) -> String {
        state
            .subs
            .entry(email.to_lowercase())
            .or_insert_with(|| format!("1{}", random_digits(20)))
            .clone()
    }

    /// Signs `claims`, applying (and consuming) a pending token override.
    fn issue_token(state: &mut State, claims: Map<String, Value>) -> String {
        let forged = state.next_override.take().unwrap_or_default();
        jwt::encode(&mut state.keys, claims, forged)
    }
}

fn bare_issuer(issuer: &str) -> String {
    issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .unwrap_or(issuer)
        .to_owned()
}

impl FakeOidc {
    /// Builds the provider; `origin` is where it is served, e.g.
    /// `http://127.0.0.1:PORT`. Takes a signing key from the process-wide
    /// pool (generating one only when the pool is empty).
    pub fn new(config: Config, clock: Clock, origin: Url) -> Self {
        let origin = origin.as_str().trim_end_matches('/').to_owned();
        let issuer = config
            .issuer
            .as_deref()
            .map_or_else(|| origin.clone(), |i| i.trim_end_matches('/').to_owned());
        let mut state = State {
            redirect_uris: config.redirect_uris,
            extra_client_secrets: Vec::new(),
            first_secret_disabled: false,
            queue: VecDeque::new(),
            auto_approve: None,
            deny_next: false,
            keys: keys::KeyRing::new(),
            next_override: None,
            jwks_max_age: config.jwks_max_age.as_secs(),
            jwks_fetches: 0,
            fail_jwks: 0,
            hang_jwks: 0,
            oversized: HashMap::new(),
            fail_token: 0,
            fail_token_status: 500,
            issuer_form: config.issuer_form,
            alternate_bare: false,
            require_pkce_s256: config.require_pkce_s256,
            code_ttl: config.code_ttl,
            subs: HashMap::new(),
            codes: HashMap::new(),
            codes_issued: 0,
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            offline_consents: HashSet::new(),
            rotate_refresh_tokens: false,
            github_ids: HashMap::new(),
        };
        let fixtures = match config.kind {
            Kind::Google => {
                let alice_sub = Provider::sub_for(&mut state, "alice@example.com");
                let alice2_sub = loop {
                    let sub = format!("1{}", random_digits(20));
                    if sub != alice_sub {
                        break sub;
                    }
                };
                let mut fixtures = fixtures(&alice2_sub);
                for (_, identity) in &mut fixtures {
                    if identity.sub.is_none() {
                        identity.sub = Some(Provider::sub_for(&mut state, &identity.email));
                    }
                }
                fixtures
            }
            Kind::GithubActions => Vec::new(),
        };
        Self {
            inner: Arc::new(Provider {
                kind: config.kind,
                origin,
                issuer,
                client_id: config.client_id,
                client_secret: config.client_secret,
                form_default_email: config.form_default_email,
                form_default_hd: config.form_default_hd,
                discovery_overrides: config.discovery_overrides,
                fixtures,
                clock,
                journal: Journal::new(),
                state: Mutex::new(state),
            }),
        }
    }

    /// All routes: the provider's own (recorded in [`Self::journal`]) and
    /// the unrecorded JSON control routes under `/_sandbox/oidc/`:
    ///
    /// | Route | Body | Effect |
    /// |---|---|---|
    /// | `POST queue-identity` | [`Identity`] | [`Self::queue_identity`] |
    /// | `POST auto-approve` | [`Identity`] or `null` | [`Self::set_auto_approve`] |
    /// | `POST allow-redirect-uri` | `{"redirect_uri"}` | [`Self::allow_redirect_uri`] |
    /// | `POST rotate-keys` | `{"keep_old", "overlap_seconds"}` | [`Self::rotate_keys`] or [`Self::rotate_keys_with_overlap`], answers `{"kid"}` |
    /// | `POST publish-next-key` | none | [`Self::publish_next_key`], answers `{"kid"}` |
    /// | `POST override-next-token` | [`TokenOverride`] | [`Self::override_next_token`] |
    /// | `POST deny-next` | none | [`Self::deny_next`] |
    /// | `POST jwks-max-age` | `{"seconds"}` | [`Self::set_jwks_max_age`] |
    /// | `POST fail-next-jwks` | `{"count"}` | [`Self::fail_next_jwks`] |
    /// | `POST hang-next-jwks` | `{"count"}` | [`Self::hang_next_jwks`] |
    /// | `POST code-ttl` | `{"seconds"}` | [`Self::set_code_ttl`] |
    /// | `POST rotate-refresh-tokens` | `{"enabled"}` | [`Self::set_rotate_refresh_tokens`] |
    /// | `POST fail-next-token` | `{"count","status"}` | [`Self::fail_next_token`] |
    /// | `POST oversize-next` | `{"endpoint","count","bytes"}` | [`Self::oversize_next`] |
    /// | `POST issuer-form` | `{"form"}` | [`Self::set_issuer_form`] |
    /// | `POST require-pkce-s256` | `{"enabled"}` | [`Self::set_require_pkce_s256`] |
    /// | `POST mint-id-token` | claims object | [`Self::mint_id_token`], answers `{"id_token"}` |
    /// | `POST github-token` | [`GithubClaims`] | [`Self::mint_github_token`], answers `{"value"}` |
    /// | `GET actions-token?repository=&ref=&audience=` | bearer request token | the runner's token request (`ACTIONS_ID_TOKEN_REQUEST_URL`), answers `{"value"}` |
    /// | `GET fixtures` | none | the user fixtures, by id |
    /// | `GET stats` | none | fetch and code counters, kids, journal counters |
    /// | `GET journal` | none | every recorded request |
    ///
    /// The shared virtual clock is also served here, at `GET`/`POST
    /// /_sandbox/clock` (see [`crate::clock::router`]).
    pub fn router(&self) -> Router {
        let provider = match self.inner.kind {
            Kind::Google => Router::new()
                .route(discovery::JWKS_PATH, get(discovery::jwks))
                .route(
                    authorize::PATH,
                    get(authorize::show).post(authorize::submit),
                )
                .route("/token", post(token::exchange))
                .route("/v1/userinfo", get(token::userinfo))
                .route("/revoke", post(token::revoke)),
            Kind::GithubActions => Router::new()
                .route(discovery::GITHUB_JWKS_PATH, get(discovery::jwks))
                .route(
                    authorize::PATH,
                    get(authorize::workloads_only).post(authorize::workloads_only),
                ),
        }
        .route(discovery::PATH, get(discovery::configuration))
        .route_layer(axum::middleware::from_fn_with_state(
            self.inner.journal.clone(),
            journal::record,
        ));
        provider
            .merge(control::router())
            .merge(crate::clock::router(self.inner.clock.clone()))
            .with_state(self.clone())
    }

    /// The issuer, as the discovery document states it: the configured one,
    /// or the origin without a trailing slash.
    pub fn issuer(&self) -> String {
        self.inner.issuer.clone()
    }

    /// The origin the provider is served at, without a trailing slash.
    pub fn origin(&self) -> String {
        self.inner.origin.clone()
    }

    /// The registered OAuth client id.
    pub fn client_id(&self) -> String {
        self.inner.client_id.clone()
    }

    /// The registered OAuth client's secret.
    pub fn client_secret(&self) -> String {
        self.inner.client_secret.clone()
    }

    /// Adds a second secret to the client, as Google's console does to
    /// rotate one: both work until one is disabled. `None` when the client
    /// has two already (Google's limit).
    pub fn add_client_secret(&self) -> Option<String> {
        let mut state = self.inner.lock();
        let live = usize::from(!state.first_secret_disabled) + state.extra_client_secrets.len();
        if live >= 2 {
            return None;
        }
        let secret = format!("GOCSPX-{}", random_string(28, URL_SAFE));
        state.extra_client_secrets.push(secret.clone());
        Some(secret)
    }

    /// Disables (and deletes) one of the client's secrets: the token
    /// endpoint refuses it from now on.
    pub fn disable_client_secret(&self, secret: &str) {
        let mut state = self.inner.lock();
        if secret == self.inner.client_secret {
            state.first_secret_disabled = true;
        }
        state.extra_client_secrets.retain(|s| s != secret);
    }

    /// The next authorization request signs this identity in without a form
    /// (queued identities go first, in order), unless its `login_hint`
    /// names a fixture.
    pub fn queue_identity(&self, identity: Identity) {
        self.inner.lock().queue.push_back(identity);
    }

    /// With `Some`, every authorization request that finds the queue empty
    /// (and names no fixture in `login_hint`) signs this identity in; with
    /// `None`, the sign-in form is shown.
    pub fn set_auto_approve(&self, identity: Option<Identity>) {
        self.inner.lock().auto_approve = identity;
    }

    /// Registers one more redirect URI (exact match, like Google's console).
    pub fn allow_redirect_uri(&self, uri: &str) {
        let mut state = self.inner.lock();
        if !state.redirect_uris.iter().any(|known| known == uri) {
            state.redirect_uris.push(uri.to_owned());
        }
    }

    /// Starts signing with a new key (new kid), published at once. With
    /// `keep_old` the previous keys stay in the JWKS; without, only the new
    /// key (and a key published by [`Self::publish_next_key`] since) is.
    /// The new key is the one [`Self::publish_next_key`] published, if any.
    /// Returns the new kid.
    pub fn rotate_keys(&self, keep_old: bool) -> String {
        self.inner.lock().keys.rotate(keep_old)
    }

    /// Like [`Self::rotate_keys`] with `keep_old`, but the previous key
    /// leaves the JWKS once `overlap` has passed on the virtual clock, as
    /// Google's old keys linger for a while and then go.
    pub fn rotate_keys_with_overlap(&self, overlap: Duration) -> String {
        let now_ms = self.inner.clock.unix_ms();
        let until = now_ms.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
        self.inner.lock().keys.rotate_until(until)
    }

    /// Publishes the key the next rotation will sign with, without signing
    /// with it yet (Google publishes new keys before using them). Returns
    /// its kid; calling it again returns the same kid.
    pub fn publish_next_key(&self) -> String {
        self.inner.lock().keys.publish_next()
    }

    /// The kid that signs tokens now.
    pub fn current_kid(&self) -> String {
        self.inner.lock().keys.current_kid().to_owned()
    }

    /// The kids the JWKS publishes, current first (then a key published by
    /// [`Self::publish_next_key`], then older ones).
    pub fn published_kids(&self) -> Vec<String> {
        let now_ms = self.inner.clock.unix_ms();
        let mut state = self.inner.lock();
        state.keys.expire(now_ms);
        state.keys.published_kids()
    }

    /// The next token this provider issues (token endpoint or
    /// [`Self::mint_github_token`]) is built to order; single shot.
    pub fn override_next_token(&self, forged: TokenOverride) {
        self.inner.lock().next_override = Some(forged);
    }

    /// The next authorization decision (a GET that would sign someone in or
    /// show the form, or a form POST) redirects with `error=access_denied`.
    pub fn deny_next(&self) {
        self.inner.lock().deny_next = true;
    }

    /// `max-age` of the JWKS response from now on.
    pub fn set_jwks_max_age(&self, secs: u64) {
        self.inner.lock().jwks_max_age = secs;
    }

    /// The next `n` JWKS requests never get an answer (the client has to
    /// time out).
    pub fn hang_next_jwks(&self, n: u32) {
        self.inner.lock().hang_jwks = n;
    }

    /// How many JWKS requests arrived, failed ones included.
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.lock().jwks_fetches
    }

    /// The next `n` JWKS requests answer 500.
    pub fn fail_next_jwks(&self, n: u32) {
        self.inner.lock().fail_jwks = n;
    }

    /// The next `n` token requests answer `status` (500 if it is not a
    /// valid status code) before looking at the request.
    pub fn fail_next_token(&self, n: u32, status: u16) {
        let mut state = self.inner.lock();
        state.fail_token = n;
        state.fail_token_status = status;
    }

    /// The next `n` requests to `endpoint` answer 200 with `bytes` bytes of
    /// whitespace, streamed without a `Content-Length`: far larger than any
    /// real answer.
    pub fn oversize_next(&self, endpoint: Endpoint, n: u32, bytes: u64) {
        self.inner.lock().oversized.insert(endpoint, (n, bytes));
    }

    /// How tokens spell `iss` from now on.
    pub fn set_issuer_form(&self, form: IssuerForm) {
        let mut state = self.inner.lock();
        state.issuer_form = form;
        state.alternate_bare = false;
    }

    /// Whether authorization requests need an `S256` PKCE challenge.
    pub fn set_require_pkce_s256(&self, enabled: bool) {
        self.inner.lock().require_pkce_s256 = enabled;
    }

    /// Whether a refresh-token grant also answers with a new refresh token
    /// (revoking the one presented). Off by default, as Google does.
    pub fn set_rotate_refresh_tokens(&self, enabled: bool) {
        self.inner.lock().rotate_refresh_tokens = enabled;
    }

    /// The user fixtures of the spec, by id: `alice` (Workspace,
    /// example.com), `mallory` (consumer account on mallory@example.com, no
    /// `hd`), `bob` (bob@gmail.com), `eve` (Workspace, evil.test), `carol`
    /// (example.com, email not verified), `dave` (dave@sub.example.com, `hd`
    /// example.com) and `alice2` (alice@example.com again, with another
    /// `sub`). An authorization request with `login_hint` set to a fixture
    /// id or email signs that fixture in without the form. Empty for the
    /// GitHub flavour.
    pub fn fixtures(&self) -> Vec<(String, Identity)> {
        self.inner
            .fixtures
            .iter()
            .map(|(id, identity)| ((*id).to_owned(), identity.clone()))
            .collect()
    }

    /// One user fixture by id (see [`Self::fixtures`]).
    pub fn fixture(&self, id: &str) -> Option<Identity> {
        self.inner
            .fixtures
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, identity)| identity.clone())
    }

    /// Lifetime of codes issued from now on.
    pub fn set_code_ttl(&self, ttl: Duration) {
        self.inner.lock().code_ttl = ttl;
    }

    /// Requests answered by the provider's own routes (control routes are
    /// not recorded), with counters by method and route.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// How many authorization codes were issued.
    pub fn issued_codes_count(&self) -> u64 {
        self.inner.lock().codes_issued
    }

    /// The `sub` this provider gives `email` when the identity sets none.
    pub fn sub_for(&self, email: &str) -> String {
        Provider::sub_for(&mut self.inner.lock(), email)
    }

    /// Signs arbitrary claims with the current key (normal RS256 header);
    /// does not consume a pending [`TokenOverride`].
    pub fn mint_id_token(&self, claims: Map<String, Value>) -> String {
        let mut state = self.inner.lock();
        jwt::encode(&mut state.keys, claims, TokenOverride::default())
    }

    /// Mints a GitHub-Actions-style workload token (see [`GithubClaims`]);
    /// consumes a pending [`TokenOverride`].
    pub fn mint_github_token(&self, claims: GithubClaims) -> String {
        let mut state = self.inner.lock();
        let iss = self.inner.token_issuer(&mut state);
        let now = self.inner.clock.unix();
        let claims = github::claims(&mut state, &iss, now, claims);
        Provider::issue_token(&mut state, claims)
    }
}

/// Characters of base64url, used for random tokens.
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `len` random characters from `alphabet`.
fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// `len` random decimal digits.
fn random_digits(len: usize) -> String {
    random_string(len, b"0123456789")
}
