//! `explain`: which rule of the policy an identity matches and what it
//! grants, or why no rule does, without signing anyone in.

use std::process::ExitCode;

use crate::access::{Miss, Policy};
use crate::identity::{EmailAddress, Identity};

/// Arguments of `explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The issuer's name in the policy (`google` is the environment's).
    #[arg(long, default_value = crate::access::ENV_ISSUER)]
    issuer: String,
    /// The address, as the issuer would vouch for it.
    #[arg(long)]
    email: String,
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
}

/// Prints each rule up to the first that matches; exit 0 when one does, 1
/// when the identity would be refused.
pub(super) fn run(args: Args) -> ExitCode {
    let config = match super::load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let email = match EmailAddress::parse(&args.email) {
        Ok(email) => email,
        Err(error) => {
            eprintln!("error: --email {:?} {error}", args.email);
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
        email_claim: Some(args.email.clone()),
        email: Some(email),
        email_verified: !args.unverified,
        hosted_domain: hd,
        issuer: args.issuer,
        groups: args.groups,
    };
    let policy = Policy {
        rules: config.rules(),
        trust_unmanaged: config.allow_unmanaged_emails,
        admins: config.admins.clone(),
    };
    let source = config.policy_path.as_deref().map_or_else(
        || "the allow-list variables".to_owned(),
        |p| format!("policy file {p}"),
    );
    println!("Rules of {source}, first match wins:");
    let mut granted = false;
    for (i, (rule, outcome)) in policy.explain(&identity).into_iter().enumerate() {
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
