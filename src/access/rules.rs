//! The policy file (`POLICY_FILE`, TOML): issuers and rules, read and
//! checked at start. Every problem is reported at once, each naming the
//! file, the rule (or issuer) and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{AllowList, ENV_ISSUER, ProjectChoice, Rule};
use crate::identity::{Domain, EmailAddress};

/// What the settings give a rule that does not say.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// `EXPIRATION`.
    pub lifetime: Duration,
    /// `MAX_KEYS_PER_USER`.
    pub cap: usize,
    /// `RATE_LIMIT_PER_USER`.
    pub per_hour: u32,
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
}

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
    audience: Option<String>,
    #[serde(default)]
    max_token_age: Option<String>,
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
    for issuer in parsed.issuer {
        let at = format!("{file}: issuer {:?}", issuer.name);
        if !names.insert(issuer.name.clone()) {
            problems.push(format!("{at}: name: another issuer has this name"));
        }
        if issuer.name != ENV_ISSUER {
            problems.push(format!(
                "{at}: only the environment's issuer ({ENV_ISSUER:?}) is supported by this version; issuers of their own (workload tokens, other providers) are not yet"
            ));
        }
        if issuer.audience.is_some() || issuer.max_token_age.is_some() {
            problems.push(format!(
                "{at}: audience, max_token_age: workload issuers are not supported by this version yet"
            ));
        }
        if url::Url::parse(&issuer.url).is_err() {
            problems.push(format!("{at}: url: {:?} is not a URL", issuer.url));
        }
        issuers.push(IssuerSpec {
            name: issuer.name,
            url: issuer.url,
            groups_claim: issuer.groups_claim.filter(|c| !c.is_empty()),
        });
    }
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
        if !raw.claims.is_empty() {
            problems.push(format!(
                "{at}: claims: matching on token claims (workload tokens) is not supported by this version yet"
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
            (Some(_), None) | (None, Some(_)) => {
                problems.push(format!(
                    "{at}: project, project_name: a project per rule is not supported by this version yet; keys go to the server's project (OPENAI_PROJECT_ID / DEFAULT_PROJECT_NAME)"
                ));
                ProjectChoice::Default
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
        rules.push(Rule {
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
