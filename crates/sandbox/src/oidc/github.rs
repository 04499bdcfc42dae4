//! GitHub-Actions-style workload tokens: the claims GitHub's token issuer
//! puts in a job's OIDC token.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{State, jwt, random_digits, random_string};

/// What a workflow run asks a token for; everything else is made up
/// plausibly (stable numeric ids per owner and repository, a random `sha`,
/// `run_id` and `jti`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GithubClaims {
    /// `OWNER/REPO`.
    pub repository: String,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`.
    #[serde(rename = "ref")]
    pub ref_: String,
    /// The `aud` claim; empty means GitHub's default,
    /// `https://github.com/OWNER`.
    #[serde(default)]
    pub audience: String,
    /// The deployment environment of the job, if any. With one, `sub` is
    /// `repo:OWNER/REPO:environment:ENV` as GitHub does it; without, it is
    /// `repo:OWNER/REPO:pull_request` for a pull-request ref
    /// (`refs/pull/N/merge`, event `pull_request`) and
    /// `repo:OWNER/REPO:ref:REF` otherwise (event `push`).
    #[serde(default)]
    pub environment: Option<String>,
    /// Merged over the generated claims; a `null` removes a claim.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

impl Default for GithubClaims {
    /// A push to `main` of `octo-org/octo-repo`, default audience.
    fn default() -> Self {
        Self::new("octo-org/octo-repo", "refs/heads/main")
    }
}

impl GithubClaims {
    /// A job of `repository` (`OWNER/REPO`) running on `ref_`, default
    /// audience, no environment.
    pub fn new(repository: &str, ref_: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            ref_: ref_.to_owned(),
            audience: String::new(),
            environment: None,
            extra: Map::new(),
        }
    }
}

/// A numeric id (as GitHub sends it: a JSON string) that stays the same for
/// `key` within one provider.
fn stable_id(state: &mut State, key: String, digits: usize) -> String {
    state
        .github_ids
        .entry(key)
        .or_insert_with(|| {
            format!(
                "{}{}",
                1 + rand::random_range(0..9),
                random_digits(digits - 1)
            )
        })
        .clone()
}

/// The claims of one workload token issued at `now` by `iss`.
pub(super) fn claims(
    state: &mut State,
    iss: &str,
    now: i64,
    request: GithubClaims,
) -> Map<String, Value> {
    let GithubClaims {
        repository,
        ref_,
        audience,
        environment,
        extra,
    } = request;
    let owner = repository
        .split_once('/')
        .map_or(repository.as_str(), |(owner, _)| owner)
        .to_owned();
    let audience = if audience.is_empty() {
        format!("https://github.com/{owner}")
    } else {
        audience
    };
    let pull_request = ref_.starts_with("refs/pull/");
    let sub = match &environment {
        Some(environment) => format!("repo:{repository}:environment:{environment}"),
        None if pull_request => format!("repo:{repository}:pull_request"),
        None => format!("repo:{repository}:ref:{ref_}"),
    };
    let event_name = if pull_request { "pull_request" } else { "push" };
    let repository_id = stable_id(state, format!("repo:{}", repository.to_lowercase()), 9);
    let owner_id = stable_id(state, format!("owner:{}", owner.to_lowercase()), 8);
    let actor_id = stable_id(state, format!("actor:{}", owner.to_lowercase()), 8);
    let sha = random_string(40, b"0123456789abcdef");
    let ref_type = if ref_.starts_with("refs/tags/") {
        "tag"
    } else {
        "branch"
    };
    let workflow_ref = format!("{repository}/.github/workflows/ci.yml@{ref_}");
    let jti = format!(
        "{}-{}-4{}-a{}-{}",
        random_string(8, b"0123456789abcdef"),
        random_string(4, b"0123456789abcdef"),
        random_string(3, b"0123456789abcdef"),
        random_string(3, b"0123456789abcdef"),
        random_string(12, b"0123456789abcdef"),
    );

    let Value::Object(mut claims) = json!({
        "jti": jti,
        "sub": sub,
        "aud": audience,
        "ref": ref_,
        "sha": sha,
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": owner_id,
        "run_id": random_digits(10),
        "run_number": "1",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": repository_id,
        "actor_id": actor_id,
        "actor": owner,
        "workflow": "CI",
        "head_ref": "",
        "base_ref": "",
        "event_name": event_name,
        "ref_protected": "false",
        "ref_type": ref_type,
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "runner_environment": "github-hosted",
        "iss": iss,
        // GitHub's documented example token has `nbf` ten minutes before
        // `iat`.
        "nbf": now - 600,
        "iat": now,
        "exp": now + 300,
    }) else {
        unreachable!("the claims are written as a JSON object");
    };
    if let Some(environment) = environment {
        claims.insert("environment".to_owned(), Value::String(environment));
    }
    jwt::merge(&mut claims, extra);
    claims
}
