//! `explain`: which rule of the policy an identity (a person, or a CI
//! job's token claims) matches and what it grants, or why no rule does,
//! without signing anyone in.

use std::process::ExitCode;

use crate::access::{Grant, Miss, Rule, Workload};
use crate::identity::{EmailAddress, Identity, Owner};

/// Arguments of `explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The issuer's name in the policy (`google` is the environment's).
    #[arg(long, default_value = crate::access::ENV_ISSUER)]
    issuer: String,
    /// The address, as the issuer would vouch for it (people).
    #[arg(long, required_unless_present = "claims")]
    email: Option<String>,
    /// Its Workspace domain (Google's `hd`). Default: the address's own
    /// domain, as for a Workspace account; see --no-hd.
    #[arg(long, conflicts_with = "no_hd")]
    hd: Option<String>,
    /// A personal account: no `hd` at all.
    #[arg(long)]
    no_hd: bool,
    /// A group the account is in (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The issuer does not vouch for the address (`email_verified` false).
    #[arg(long)]
    unverified: bool,
    /// A claim of a CI job's token, `name=value` (repeatable), for a
    /// workload issuer: e.g. `--claim repository_id=123456 --claim
    /// ref=refs/heads/main`.
    #[arg(long = "claim", value_name = "NAME=VALUE", conflicts_with_all = ["email", "groups"])]
    claims: Vec<String>,
}

/// Prints each rule up to the first that matches; exit 0 when one does, 1
/// when the identity would be refused.
pub(super) fn run(args: Args) -> ExitCode {
    let config = match super::load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let policy = config.policy();
    let source = config.policy_path.as_deref().map_or_else(
        || "the allow-list variables".to_owned(),
        |p| format!("policy file {p}"),
    );
    let workload_issuer = config
        .issuers()
        .iter()
        .find(|i| i.name == args.issuer)
        .and_then(|i| i.workload.clone());
    if !args.claims.is_empty() || workload_issuer.is_some() {
        let Some(spec) = workload_issuer else {
            eprintln!(
                "error: --claim is for CI jobs' tokens, and {source} has no workload issuer named {:?}",
                args.issuer
            );
            return ExitCode::from(super::EXIT_CONFIG);
        };
        if args.email.is_some() {
            eprintln!(
                "error: issuer {:?} is for CI jobs, whose tokens carry no person: give the token's claims with --claim NAME=VALUE instead of --email",
                args.issuer
            );
            return ExitCode::from(super::EXIT_CONFIG);
        }
        let mut claims = std::collections::BTreeMap::new();
        for claim in &args.claims {
            let Some((name, value)) = claim.split_once('=') else {
                eprintln!("error: --claim {claim:?} is not NAME=VALUE");
                return ExitCode::from(super::EXIT_CONFIG);
            };
            claims.insert(name.to_owned(), serde_json::Value::String(value.to_owned()));
        }
        // A job whose claims name no owner is refused before any rule;
        // here it is shown as `<issuer>:unknown` to explain the rules.
        let owner = spec.owner_of(&args.issuer, &claims).unwrap_or_else(|_| {
            Owner::workload(&args.issuer, "unknown").expect("issuer names are checked at start")
        });
        let workload = Workload {
            issuer: args.issuer,
            owner,
            claims,
        };
        println!("Rules of {source}, first match wins:");
        let granted = print(policy.explain_workload(&workload));
        if granted {
            return ExitCode::SUCCESS;
        }
        if let Err(reason) = policy.decide_workload(&workload) {
            println!("No rule matches: refused ({reason}).");
        }
        return ExitCode::FAILURE;
    }
    let raw_email = args.email.unwrap_or_default();
    let email = match EmailAddress::parse(&raw_email) {
        Ok(email) => email,
        Err(error) => {
            eprintln!("error: --email {raw_email:?} {error}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let hd = if args.no_hd {
        None
    } else {
        Some(args.hd.unwrap_or_else(|| email.domain().to_owned()))
    };
    let identity = Identity {
        subject: "explain".to_owned(),
        email_claim: Some(raw_email),
        email: Some(email),
        email_verified: !args.unverified,
        hosted_domain: hd,
        issuer: args.issuer,
        groups: args.groups,
    };
    println!("Rules of {source}, first match wins:");
    let granted = print(policy.explain(&identity));
    if granted {
        ExitCode::SUCCESS
    } else {
        match policy.decide(&identity) {
            Err(reason) => println!("No rule matches: refused ({reason})."),
            Ok(_) => unreachable!("explain and decide agree"),
        }
        ExitCode::FAILURE
    }
}

/// Prints each rule's outcome; true when one matched.
fn print(outcomes: Vec<(&Rule, Result<Grant, Miss>)>) -> bool {
    let mut granted = false;
    for (i, (rule, outcome)) in outcomes.into_iter().enumerate() {
        let n = i + 1;
        match outcome {
            Ok(grant) => {
                granted = true;
                println!(
                    "  {n}. {} MATCHES: {} gets {}{}",
                    rule.name,
                    grant.owner,
                    rule.grants(),
                    if grant.admin && !rule.admin {
                        " (admin through ADMIN_USERS)"
                    } else {
                        ""
                    }
                );
            }
            Err(Miss::OtherIssuer) => {
                println!(
                    "  {n}. {}: skipped, it is for issuer {}",
                    rule.name, rule.issuer
                );
            }
            Err(Miss::Refused(reason)) => println!("  {n}. {}: no, {reason}", rule.name),
        }
    }
    granted
}
