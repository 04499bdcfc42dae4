//! The policy file (`POLICY_FILE`, TOML): issuers and rules, read and
//! checked at start. Every problem is reported at once, each naming the
//! file, the rule (or issuer) and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{AllowList, ClaimPattern, ENV_ISSUER, ProjectChoice, Rule};
use crate::identity::{Domain, EmailAddress, Owner};

/// What the settings give a rule that does not say.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// `EXPIRATION`.
    pub lifetime: Duration,
    /// `MAX_KEYS_PER_USER`.
    pub cap: usize,
    /// `RATE_LIMIT_PER_USER`.
    pub per_hour: u32,
    /// `TOKENS_PER_DAY` and `ON_OVER_BUDGET`.
    pub budget: super::Budget,
}

/// An issuer of the policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerSpec {
    /// What rules call it.
    pub name: String,
    /// Its URL (discovery).
    pub url: String,
    /// The ID token claim that lists groups.
    pub groups_claim: Option<String>,
    /// The ID token claim that names the organisation's domain of an
    /// account, for domain rules (Google's signed `hd` when none).
    pub domain_claim: Option<String>,
    /// For an issuer of CI jobs' tokens: what they must say.
    pub workload: Option<WorkloadSpec>,
    /// For an issuer people sign in through, other than the environment's:
    /// its client.
    pub browser: Option<BrowserSpec>,
    /// Whether every account of this issuer belongs to the organisation
    /// (`managed`): then a listed address needs no `hd`, and a domain rule
    /// matches the verified address's domain.
    pub managed: bool,
}

/// The client of an issuer people sign in through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserSpec {
    /// Its OAuth client id.
    pub client_id: String,
    /// The file that holds its client secret.
    pub client_secret_file: std::path::PathBuf,
    /// Its registered redirect URI, when it is not `REDIRECT_URI` (the
    /// same callback under another spelling).
    pub redirect_uri: Option<String>,
}

/// What a CI job's token must say, beyond its issuer's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The only accepted `aud`.
    pub audience: String,
    /// The oldest a token may be (from its `iat`), whatever its `exp`.
    pub max_token_age: Duration,
    /// The claim that names the job's owner (`owner_claim`); `None`: the
    /// first of `repository_id` (GitHub), `project_id` (GitLab), `sub`.
    pub owner_claim: Option<String>,
}

/// Claims tried in order for the owner when the issuer names none:
/// GitHub's repository id (rename-proof), GitLab's project id, the subject.
const OWNER_CLAIMS: [&str; 3] = ["repository_id", "project_id", "sub"];

impl IssuerSpec {
    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        match &self.workload {
            None => format!(
                "{}: {}, people sign in through {}{}{}",
                self.name,
                self.url,
                self.browser.as_ref().map_or_else(
                    || "the environment's client".to_owned(),
                    |b| format!("client {}", b.client_id)
                ),
                self.groups_claim
                    .as_ref()
                    .map_or_else(String::new, |c| format!(", groups in claim {c}")),
                if self.managed && self.browser.is_some() {
                    ", every account the organisation's (managed)"
                } else {
                    ""
                }
            ),
            Some(spec) => format!(
                "{}: {}, CI jobs' tokens for audience {}, at most {} old, owner {}:<{}>",
                self.name,
                self.url,
                spec.audience,
                crate::clock::humanize(spec.max_token_age),
                self.name,
                spec.owner_claim
                    .clone()
                    .unwrap_or_else(|| OWNER_CLAIMS.join(" or "))
            ),
        }
    }
}

impl WorkloadSpec {
    /// The owner a job's `claims` name under issuer `issuer`:
    /// `<issuer>:<id>`, the id from `owner_claim` or the first of
    /// `repository_id`, `project_id`, `sub`; or why none can be had.
    pub fn owner_of(
        &self,
        issuer: &str,
        claims: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Owner, String> {
        let claim = match &self.owner_claim {
            Some(name) => name.as_str(),
            None => OWNER_CLAIMS
                .iter()
                .copied()
                .find(|name| claims.contains_key(*name))
                .unwrap_or("sub"),
        };
        let id = claims
            .get(claim)
            .and_then(super::claim_text)
            .ok_or_else(|| format!("the token has no {claim} claim to name its owner"))?;
        Owner::workload(issuer, &id).map_err(|error| {
            format!("the token's {claim} claim cannot name an owner ({error}); set owner_claim on issuer {issuer:?}")
        })
    }
}

/// Claims that say whose a job is: a job rule must match one of them
/// exactly, or it would admit jobs of anyone.
const IDENTIFYING_CLAIMS: [&str; 8] = [
    "repository_id",
    "repository_owner_id",
    "repository",
    "repository_owner",
    "project_id",
    "namespace_id",
    "project_path",
    "namespace_path",
];

/// Default of `max_token_age`: GitHub's tokens live five minutes.
pub(super) const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(600);

/// A policy file, checked.
#[derive(Clone, Debug)]
pub struct PolicyFile {
    /// Its issuers.
    pub issuers: Vec<IssuerSpec>,
    /// Its rules, in order: the first that matches decides.
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    issuer: Vec<IssuerToml>,
    #[serde(default)]
    rule: Vec<RuleToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerToml {
    name: String,
    url: String,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    domain_claim: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    max_token_age: Option<String>,
    #[serde(default)]
    owner_claim: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret_file: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    managed: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: String,
    issuer: String,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, toml::Value>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    project_name: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    max_ttl: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    max_live_keys: Option<usize>,
    #[serde(default)]
    max_keys_per_hour: Option<u32>,
    #[serde(default)]
    tokens_per_day: Option<u64>,
    #[serde(default)]
    usd_per_month: Option<f64>,
    #[serde(default)]
    on_over_budget: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// Longest key lifetime OpenAI accepts (`expires_in_seconds`).
const MAX_LIFETIME: Duration = Duration::from_secs(31_536_000);

/// Reads and checks the policy file at `path`; every problem, each one line.
pub fn load(path: &Path, defaults: Defaults) -> Result<PolicyFile, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| vec![format!("{}: cannot be read: {error}", path.display())])?;
    parse(&text, &path.display().to_string(), defaults)
}

/// Checks the policy file `text` (named `file` in messages).
pub fn parse(text: &str, file: &str, defaults: Defaults) -> Result<PolicyFile, Vec<String>> {
    let parsed: FileToml = toml::from_str(text).map_err(|error| {
        // toml's message names the line, the column and the field.
        vec![format!(
            "{file}: {}",
            error.to_string().trim().replace('\n', " ")
        )]
    })?;
    let mut problems = Vec::new();
    let mut issuers = Vec::new();
    let mut names = BTreeSet::new();
    let mut urls = BTreeSet::new();
    for issuer in parsed.issuer {
        let at = format!("{file}: issuer {:?}", issuer.name);
        if !names.insert(issuer.name.clone()) {
            problems.push(format!("{at}: name: another issuer has this name"));
        }
        if Owner::workload(&issuer.name, "x").is_err() {
            problems.push(format!(
                "{at}: name: only a-z, 0-9, '-' and '_' (1 to 32): it is written into the name of every account of its jobs"
            ));
        }
        let has_client = issuer.client_id.is_some()
            || issuer.client_secret_file.is_some()
            || issuer.redirect_uri.is_some();
        let browser = if issuer.name == ENV_ISSUER {
            if has_client {
                problems.push(format!(
                    "{at}: client_id, client_secret_file, redirect_uri: {ENV_ISSUER:?} is the environment's issuer, whose client is CLIENT_ID, CLIENT_SECRET and REDIRECT_URI; give another issuer a name of its own"
                ));
            }
            None
        } else if has_client && issuer.audience.is_some() {
            problems.push(format!(
                "{at}: audience, client_id: an issuer is either for CI jobs (audience) or for people (client_id, client_secret_file), not both"
            ));
            None
        } else if has_client {
            match (&issuer.client_id, &issuer.client_secret_file) {
                (Some(id), Some(file)) if !id.trim().is_empty() && !file.trim().is_empty() => {
                    // Read at start by the configuration; checked here too,
                    // so that it is named with the file's other problems.
                    match std::fs::read_to_string(file.trim()) {
                        Ok(text) if text.trim().is_empty() => problems.push(format!(
                            "{at}: client_secret_file: {} is empty",
                            file.trim()
                        )),
                        Ok(_) => {}
                        Err(error) => problems.push(format!(
                            "{at}: client_secret_file: cannot read {}: {error}",
                            file.trim()
                        )),
                    }
                    Some(BrowserSpec {
                        client_id: id.trim().to_owned(),
                        client_secret_file: file.trim().into(),
                        redirect_uri: issuer.redirect_uri.clone(),
                    })
                }
                _ => {
                    problems.push(format!(
                        "{at}: client_id, client_secret_file: people's sign-in needs both (the secret in a file, never in the policy)"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let workload = match (&issuer.audience, issuer.name == ENV_ISSUER) {
            (Some(_), true) => {
                problems.push(format!(
                    "{at}: audience: {ENV_ISSUER:?} is the environment's browser sign-in; give a workload issuer a name of its own"
                ));
                None
            }
            (None, false) => {
                if browser.is_none() && !has_client {
                    problems.push(format!(
                        "{at}: an issuer of the file's own needs either audience (for CI jobs' tokens: the audience they are requested for, e.g. this server's URL) or client_id and client_secret_file (for people's sign-in)"
                    ));
                }
                None
            }
            (None, true) => {
                for (field, given) in [
                    ("max_token_age", issuer.max_token_age.is_some()),
                    ("owner_claim", issuer.owner_claim.is_some()),
                ] {
                    if given {
                        problems.push(format!(
                            "{at}: {field}: only for workload issuers (with an audience)"
                        ));
                    }
                }
                None
            }
            (Some(audience), false) => {
                if audience.trim().is_empty() {
                    problems.push(format!("{at}: audience: must not be empty"));
                }
                if issuer.groups_claim.is_some() {
                    problems.push(format!(
                        "{at}: groups_claim: CI jobs' tokens list no groups; rules match their claims"
                    ));
                }
                let max_token_age = match issuer.max_token_age.as_deref() {
                    None => DEFAULT_MAX_TOKEN_AGE,
                    Some(text) => match humantime::parse_duration(text) {
                        Ok(age)
                            if age >= Duration::from_secs(1)
                                && age <= Duration::from_secs(86_400) =>
                        {
                            age
                        }
                        _ => {
                            problems.push(format!(
                                "{at}: max_token_age: {text:?} is not a duration from 1s to 24h, like \"10m\""
                            ));
                            DEFAULT_MAX_TOKEN_AGE
                        }
                    },
                };
                if issuer.owner_claim.as_deref().is_some_and(str::is_empty) {
                    problems.push(format!("{at}: owner_claim: must not be empty"));
                }
                Some(WorkloadSpec {
                    audience: audience.clone(),
                    max_token_age,
                    owner_claim: issuer.owner_claim.clone(),
                })
            }
        };
        match url::Url::parse(&issuer.url) {
            Err(_) => problems.push(format!("{at}: url: {:?} is not a URL", issuer.url)),
            Ok(url) => {
                // Every identity rests on the keys its discovery names: never
                // fetched in clear text across a network.
                let local_http = url.scheme() == "http" && crate::upstream::is_loopback(&url);
                if url.scheme() != "https" && !local_http {
                    problems.push(format!(
                        "{at}: url: must be https (http only for 127.0.0.1, ::1 and localhost): its discovery document and keys decide who someone is"
                    ));
                }
                if !url.username().is_empty()
                    || url.password().is_some()
                    || url.query().is_some()
                    || url.fragment().is_some()
                {
                    problems.push(format!(
                        "{at}: url: give the issuer URL only, with no user, password, query or fragment"
                    ));
                }
                let normalised = issuer.url.trim_end_matches('/').to_owned();
                if issuer.name != ENV_ISSUER && !urls.insert(normalised) {
                    problems.push(format!(
                        "{at}: url: another issuer has this URL; a token names its issuer by URL, so each may appear once"
                    ));
                }
            }
        }
        if issuer.name == ENV_ISSUER && issuer.managed.is_some() {
            problems.push(format!(
                "{at}: managed: for the environment's issuer, ALLOW_UNMANAGED_EMAILS says whether a listed address needs the provider to manage it"
            ));
        }
        if workload.is_some() && issuer.domain_claim.is_some() {
            problems.push(format!(
                "{at}: domain_claim: only for issuers people sign in through"
            ));
        }
        if workload.is_some() && issuer.managed.is_some() {
            problems.push(format!(
                "{at}: managed: only for issuers people sign in through"
            ));
        }
        issuers.push(IssuerSpec {
            name: issuer.name,
            url: issuer.url,
            groups_claim: issuer.groups_claim.filter(|c| !c.is_empty()),
            domain_claim: issuer.domain_claim.filter(|c| !c.is_empty()),
            workload,
            browser,
            // Opt-in: a provider anyone can join (a social login, a public
            // GitLab) must not vouch for an organisation's addresses.
            managed: issuer.managed.unwrap_or(false),
        });
    }
    let workload_issuers: BTreeSet<String> = issuers
        .iter()
        .filter(|i| i.workload.is_some())
        .map(|i| i.name.clone())
        .collect();
    let owner_claims: BTreeMap<String, String> = issuers
        .iter()
        .filter_map(|i| Some((i.name.clone(), i.workload.as_ref()?.owner_claim.clone()?)))
        .collect();
    let with_groups: BTreeSet<String> = issuers
        .iter()
        .filter(|i| i.groups_claim.is_some())
        .map(|i| i.name.clone())
        .collect();
    let mut rules = Vec::new();
    let mut rule_names = BTreeSet::new();
    if parsed.rule.is_empty() {
        problems.push(format!("{file}: no [[rule]]: with none, nobody gets a key"));
    }
    for raw in parsed.rule {
        let at = format!("{file}: rule {:?}", raw.name);
        if raw.name.trim().is_empty() {
            problems.push(format!("{at}: name: must not be empty"));
        }
        if !rule_names.insert(raw.name.clone()) {
            problems.push(format!("{at}: name: another rule has this name"));
        }
        if raw.issuer != ENV_ISSUER && !names.contains(&raw.issuer) {
            problems.push(format!(
                "{at}: issuer: {:?} is not an [[issuer]] of the file (nor {ENV_ISSUER:?}, the environment's)",
                raw.issuer
            ));
        }
        let mut allow = AllowList::default();
        for email in &raw.emails {
            match EmailAddress::parse(email) {
                Ok(email) => {
                    allow.users.insert(email);
                }
                Err(error) => problems.push(format!("{at}: emails: {email:?} {error}")),
            }
        }
        for domain in &raw.domains {
            match Domain::parse(domain) {
                Ok(domain) => {
                    allow.domains.insert(domain);
                }
                Err(error) => problems.push(format!("{at}: domains: {domain:?} {error}")),
            }
        }
        let groups: BTreeSet<String> = raw.groups.iter().cloned().collect();
        if groups.iter().any(String::is_empty) {
            problems.push(format!("{at}: groups: an empty group name"));
        }
        if allow.is_empty() && groups.is_empty() && raw.claims.is_empty() {
            problems.push(format!(
                "{at}: it names no emails, domains, groups or claims, so it would give every account of issuer {:?} a key; name whom it is for",
                raw.issuer
            ));
        }
        let for_jobs = workload_issuers.contains(&raw.issuer);
        let mut claims = BTreeMap::new();
        if for_jobs {
            if !allow.is_empty() || !groups.is_empty() {
                problems.push(format!(
                    "{at}: emails, domains, groups: issuer {:?} is for CI jobs, whose tokens carry no verified person; match their claims",
                    raw.issuer
                ));
            }
            if raw.claims.is_empty() {
                problems.push(format!(
                    "{at}: claims: a rule for CI jobs must name claims (e.g. repository_id and ref), or every job that can ask for a token of this audience would get keys"
                ));
            }
            if raw.admin {
                problems.push(format!("{at}: admin: a CI job is never an admin"));
            }
        } else if !raw.claims.is_empty() {
            problems.push(format!(
                "{at}: claims: only for rules of workload issuers (CI jobs); people are matched on emails, domains and groups"
            ));
        }
        for (name, value) in &raw.claims {
            let text = match value {
                toml::Value::String(text) => Some(text.clone()),
                toml::Value::Integer(number) => Some(number.to_string()),
                toml::Value::Boolean(flag) => Some(flag.to_string()),
                _ => None,
            };
            if ["aud", "exp", "iat", "nbf", "jti"].contains(&name.as_str()) {
                problems.push(format!(
                    "{at}: claims: {name}: checked for every token (or unique to each); a rule matches what the job is, like repository_id, ref or environment"
                ));
            } else if name == "sub" {
                problems.push(format!(
                    "{at}: claims: sub: GitHub's sub has two forms (repositories since 2026-07-15 carry ids in it), and a rule on one silently stops matching under the other; match repository_id, repository_owner_id, ref, environment or job_workflow_ref"
                ));
            } else if name.is_empty() {
                problems.push(format!("{at}: claims: an empty claim name"));
            }
            match text {
                Some(text) if !text.is_empty() => {
                    claims.insert(name.clone(), ClaimPattern::new(text));
                }
                _ => problems.push(format!(
                    "{at}: claims: {name}: give a non-empty string (exact, or a glob with * and ?), a number or a boolean"
                )),
            }
        }
        if for_jobs
            && !claims.is_empty()
            && !claims.iter().any(|(name, pattern)| {
                !pattern.is_glob()
                    && (IDENTIFYING_CLAIMS.contains(&name.as_str())
                        || owner_claims.get(&raw.issuer) == Some(name))
            })
        {
            problems.push(format!(
                "{at}: claims: name the job's owner exactly (repository_id or repository_owner_id for GitHub, project_id or namespace_id for GitLab; or repository, repository_owner, project_path, namespace_path): any job anywhere can ask its issuer for a token of this audience"
            ));
        }
        if !groups.is_empty() && !for_jobs && !with_groups.contains(&raw.issuer) {
            problems.push(format!(
                "{at}: groups: issuer {:?} has no groups_claim, so nobody would ever be in a group; give the issuer the ID token claim that lists groups (Okta, Entra ID and Keycloak have one; Google has none)",
                raw.issuer
            ));
        }
        let project = match (raw.project, raw.project_name) {
            (None, None) => ProjectChoice::Default,
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{at}: project, project_name: give one or the other"
                ));
                ProjectChoice::Default
            }
            (Some(id), None) => {
                if id.trim().is_empty() || id != id.trim() || id.contains('/') {
                    problems.push(format!(
                        "{at}: project: {id:?} is not a project id like \"proj_abc123\""
                    ));
                }
                ProjectChoice::Id(id)
            }
            (None, Some(name)) => {
                if name.trim().is_empty() {
                    problems.push(format!("{at}: project_name: must not be empty"));
                }
                ProjectChoice::Name(name)
            }
        };
        if raw
            .scopes
            .iter()
            .any(|s| s.trim().is_empty() || s.contains(char::is_whitespace))
        {
            problems.push(format!(
                "{at}: scopes: every scope is one word, like \"api.model.read\""
            ));
        }
        let duration = |field: &str, value: Option<&String>, problems: &mut Vec<String>| {
            let value = value?;
            match humantime::parse_duration(value) {
                Ok(d) if d >= Duration::from_secs(1) && d <= MAX_LIFETIME => Some(d),
                Ok(_) => {
                    problems.push(format!(
                        "{at}: {field}: {value:?} must be from 1s to 365d (OpenAI's range)"
                    ));
                    None
                }
                Err(_) => {
                    problems.push(format!(
                        "{at}: {field}: {value:?} is not a duration like \"30m\", \"8h\" or \"7d\""
                    ));
                    None
                }
            }
        };
        let ttl = duration("ttl", raw.ttl.as_ref(), &mut problems);
        let max_ttl = duration("max_ttl", raw.max_ttl.as_ref(), &mut problems);
        let lifetime = ttl.unwrap_or(defaults.lifetime);
        let max_lifetime = max_ttl.unwrap_or(lifetime);
        if max_lifetime < lifetime {
            problems.push(format!(
                "{at}: max_ttl: {} is shorter than ttl {}",
                humantime::format_duration(max_lifetime),
                humantime::format_duration(lifetime)
            ));
        }
        let revoke = match raw.on_over_budget.as_deref() {
            None => defaults.budget.revoke,
            Some("refuse") => false,
            Some("revoke") => true,
            Some(other) => {
                problems.push(format!(
                    "{at}: on_over_budget: {other:?} is neither \"refuse\" (new keys refused) nor \"revoke\" (live keys revoked too)"
                ));
                false
            }
        };
        let cents_per_month = match raw.usd_per_month {
            None => defaults.budget.cents_per_month,
            Some(usd) => crate::usage::cents(usd).unwrap_or_else(|| {
                problems.push(format!(
                    "{at}: usd_per_month: {usd} is not an amount of dollars like 50 or 12.5"
                ));
                0
            }),
        };
        let budget = super::Budget {
            tokens_per_day: raw.tokens_per_day.unwrap_or(defaults.budget.tokens_per_day),
            cents_per_month,
            revoke,
        };
        rules.push(Rule {
            budget,
            name: raw.name,
            issuer: raw.issuer,
            allow,
            groups,
            lifetime,
            max_lifetime,
            cap: raw.max_live_keys.unwrap_or(defaults.cap),
            per_hour: raw.max_keys_per_hour.unwrap_or(defaults.per_hour),
            admin: raw.admin,
            project,
            scopes: raw.scopes,
            claims,
        });
    }
    if problems.is_empty() {
        Ok(PolicyFile { issuers, rules })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        lifetime: Duration::from_secs(86_400),
        cap: 5,
        per_hour: 20,
        budget: crate::access::Budget {
            tokens_per_day: 0,
            cents_per_month: 0,
            revoke: false,
        },
    };

    #[test]
    fn a_file_of_people_rules_is_read_with_its_defaults() {
        let file = parse(
            r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"
groups_claim = "groups"

[[rule]]
name = "data-team"
issuer = "google"
groups = ["data@example.com"]
ttl = "8h"
max_ttl = "24h"

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
emails = ["contractor@gmail.com"]
ttl = "24h"
max_live_keys = 3
admin = true
"#,
            "policy.toml",
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(file.issuers[0].groups_claim.as_deref(), Some("groups"));
        let [data, staff] = &file.rules[..] else {
            panic!("two rules")
        };
        assert_eq!(data.lifetime, Duration::from_secs(8 * 3600));
        assert_eq!(data.max_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(data.cap, 5, "the default");
        assert_eq!(
            staff.max_lifetime, staff.lifetime,
            "max_ttl defaults to ttl"
        );
        assert_eq!(staff.cap, 3);
        assert!(staff.admin);
        assert_eq!(staff.per_hour, 20);
    }

    #[test]
    fn workload_issuers_and_their_rules_are_checked() {
        let file = parse(
            r#"
[[issuer]]
name = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://keys.example.com"

[[rule]]
name = "ci"
issuer = "github"
claims = { repository_id = 123456, ref = "refs/heads/main" }
ttl = "1h"
scopes = ["api.model.request", "api.model.read"]
"#,
            "policy.toml",
            DEFAULTS,
        )
        .unwrap();
        let spec = file.issuers[0].workload.as_ref().unwrap();
        assert_eq!(spec.audience, "https://keys.example.com");
        assert_eq!(spec.max_token_age, DEFAULT_MAX_TOKEN_AGE);
        assert_eq!(
            file.rules[0].claims["repository_id"],
            ClaimPattern::new("123456")
        );

        let problems = parse(
            r#"
[[issuer]]
name = "GitHub Actions"
url = "https://token.actions.githubusercontent.com"
audience = ""
max_token_age = "2d"
groups_claim = "groups"

[[issuer]]
name = "okta"
url = "https://example.okta.com"

[[issuer]]
name = "ci"
url = "https://gitlab.com"
audience = "https://keys.example.com"

[[rule]]
name = "no-claims"
issuer = "ci"
emails = ["a@example.com"]
admin = true

[[rule]]
name = "on-sub"
issuer = "ci"
claims = { sub = "repo:octo/x:ref:refs/heads/main", ref = [1] }

[[rule]]
name = "people-claims"
issuer = "google"
domains = ["example.com"]
claims = { ref = "main" }
"#,
            "p.toml",
            DEFAULTS,
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "issuer \"GitHub Actions\": name",
            "issuer \"GitHub Actions\": audience: must not be empty",
            "issuer \"GitHub Actions\": max_token_age",
            "issuer \"GitHub Actions\": groups_claim",
            "issuer \"okta\": an issuer of the file's own needs either audience",
            "rule \"no-claims\": emails, domains, groups",
            "rule \"no-claims\": claims: a rule for CI jobs must name claims",
            "rule \"no-claims\": admin",
            "rule \"on-sub\": claims: sub",
            "rule \"on-sub\": claims: ref",
            "rule \"people-claims\": claims: only for rules of workload issuers",
        ] {
            assert!(problems.contains(expected), "{expected} in:\n{problems}");
        }
    }

    #[test]
    fn rules_that_would_admit_strangers_or_never_match_are_refused() {
        let problems = parse(
            r#"
[[issuer]]
name = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://keys.example.com"

[[issuer]]
name = "gitlab"
url = "http://gitlab.internal"
audience = "https://keys.example.com"

[[issuer]]
name = "github2"
url = "https://token.actions.githubusercontent.com/"
audience = "https://other.example.com"

[[rule]]
name = "main-anywhere"
issuer = "github"
claims = { ref = "refs/heads/main" }

[[rule]]
name = "any-repo"
issuer = "github"
claims = { repository_id = "*", ref = "refs/heads/main" }

[[rule]]
name = "on-aud"
issuer = "github"
claims = { repository_id = "1", aud = "x" }

[[rule]]
name = "fine"
issuer = "github"
claims = { repository_owner_id = "42", ref = "refs/heads/*" }

[[rule]]
name = "groups-nobody-has"
issuer = "google"
groups = ["eng@example.com"]
"#,
            "p.toml",
            DEFAULTS,
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "rule \"main-anywhere\": claims: name the job's owner exactly",
            "rule \"any-repo\": claims: name the job's owner exactly",
            "rule \"on-aud\": claims: aud",
            "issuer \"gitlab\": url: must be https",
            "issuer \"github2\": url: another issuer has this URL",
            "rule \"groups-nobody-has\": groups: issuer \"google\" has no groups_claim",
        ] {
            assert!(problems.contains(expected), "{expected} in:\n{problems}");
        }
        assert!(!problems.contains("rule \"fine\""), "{problems}");
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_file_rule_and_field() {
        let problems = parse(
            r#"
[[rule]]
name = "a"
issuer = "okta"
emails = ["not an address"]
ttl = "forever"

[[rule]]
name = "b"
issuer = "google"
ttl = "2h"
max_ttl = "1h"
domains = ["example.com"]

[[rule]]
name = "c"
issuer = "google"
"#,
            "policy.toml",
            DEFAULTS,
        )
        .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "policy.toml: rule \"a\": issuer",
            "policy.toml: rule \"a\": emails",
            "policy.toml: rule \"a\": ttl",
            "policy.toml: rule \"b\": max_ttl",
            "policy.toml: rule \"c\": it names no emails",
        ] {
            assert!(all.contains(expected), "{expected} in:\n{all}");
        }
        let unknown = parse(
            "[[rule]]\nname = \"x\"\nissuer = \"google\"\nttl2 = \"1h\"\n",
            "p.toml",
            DEFAULTS,
        )
        .unwrap_err()
        .join("\n");
        assert!(
            unknown.contains("p.toml") && unknown.contains("ttl2"),
            "{unknown}"
        );
    }
}
