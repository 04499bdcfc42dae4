//! `policy`: the time of one policy decision with many rules, in process
//! (the first match at the last rule, and no match at all: both read every
//! rule), for people and for CI jobs; and the Admin API calls of one
//! issuance under a rule with scopes and under one without, counted by
//! the sandbox over real sign-ins to the release server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use openai_key_server::access::{self, Policy, Workload};
use openai_key_server::identity::{EmailAddress, Identity, Owner};

use crate::flow;
use crate::report::Report;
use crate::stats::{Samples, round3};

/// Knobs of the `policy` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Rules in the policy (people's and jobs' each).
    #[arg(long, default_value_t = 1000)]
    pub(crate) rules: usize,
    /// Decisions timed for each case.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) decisions: usize,
    /// Sign-ins (each issues one key) under each of the two rules.
    #[arg(long, default_value_t = 50)]
    pub(crate) issuances: usize,
}

impl Default for Args {
    fn default() -> Self {
        super::defaults()
    }
}

/// A policy file of `rules` people's rules and as many jobs' rules; the
/// last of each matches what [`person`] and [`job`] make.
fn policy_text(rules: usize) -> String {
    let mut text = String::from(
        "[[issuer]]\nname = \"google\"\nurl = \"https://accounts.google.com\"\ngroups_claim = \"groups\"\n\n\
         [[issuer]]\nname = \"github\"\nurl = \"https://token.actions.githubusercontent.com\"\naudience = \"https://keys.example.com\"\n\n",
    );
    for i in 0..rules {
        let _ = write!(
            text,
            "[[rule]]\nname = \"job-{i}\"\nissuer = \"github\"\nclaims = {{ repository_id = \"{i}\", ref = \"refs/heads/*\", environment = \"prod-*\" }}\nttl = \"1h\"\nscopes = [\"api.model.request\"]\n\n"
        );
    }
    for i in 0..rules.saturating_sub(1) {
        let _ = write!(
            text,
            "[[rule]]\nname = \"team-{i}\"\nissuer = \"google\"\nemails = [\"person{i}@corp{i}.test\", \"other{i}@example.org\"]\ngroups = [\"team-{i}@example.com\"]\nttl = \"8h\"\n\n"
        );
    }
    text.push_str("[[rule]]\nname = \"staff\"\nissuer = \"google\"\ndomains = [\"example.com\"]\nttl = \"24h\"\n");
    text
}

fn person(email: &str, hd: Option<&str>) -> Identity {
    Identity {
        subject: "1".to_owned(),
        email: EmailAddress::parse(email).ok(),
        email_claim: Some(email.to_owned()),
        email_verified: true,
        hosted_domain: hd.map(str::to_owned),
        issuer: access::ENV_ISSUER.to_owned(),
        groups: vec!["sales@example.com".to_owned(), "all@example.com".to_owned()],
    }
}

fn job(repository_id: usize) -> Workload {
    let claims: BTreeMap<String, serde_json::Value> = [
        ("repository_id", repository_id.to_string()),
        ("ref", "refs/heads/main".to_owned()),
        ("environment", "prod-eu".to_owned()),
        ("repository", "octo-org/evals".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
    .collect();
    Workload {
        issuer: "github".to_owned(),
        owner: Owner::workload("github", &repository_id.to_string()).expect("a valid owner"),
        claims,
    }
}

/// Each decision's time in µs.
fn time<T>(decisions: usize, mut decide: impl FnMut() -> T) -> Samples {
    let mut times = Vec::with_capacity(decisions);
    for _ in 0..decisions {
        let started = Instant::now();
        std::hint::black_box(decide());
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Samples::new(times)
}

/// Admin API calls per issuance over `issuances` sign-ins to a server
/// whose one rule has `scopes` (TOML, `[]` for none), by route.
async fn calls_per_issuance(
    binary: &Path,
    scopes: &str,
    issuances: usize,
) -> anyhow::Result<(f64, BTreeMap<String, u64>)> {
    let sandbox = super::sandbox(sandbox::openai::Config::default()).await?;
    let dir = std::env::temp_dir().join(format!("oks-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("policy-{}.toml", scopes.len()));
    std::fs::write(
        &file,
        format!(
            "[[rule]]\nname = \"bench\"\nissuer = \"google\"\ndomains = [\"example.com\"]\nttl = \"24h\"\nscopes = {scopes}\nmax_keys_per_hour = 0\n"
        ),
    )?;
    let ready = super::start(
        binary,
        &sandbox,
        vec![
            ("POLICY_FILE", file.display().to_string()),
            ("ALLOWED_DOMAINS", String::new()),
            ("CLEANUP_INTERVAL", "3600".to_owned()),
        ],
    )
    .await?;
    super::wait_for_startup_sweep(&sandbox).await?;
    let before = sandbox.openai.counters();
    let batch = flow::run_batch(
        &ready.client,
        &ready.server.base_url,
        &sandbox.oidc,
        issuances,
        1,
        None,
    )
    .await;
    anyhow::ensure!(
        batch.errors == 0,
        "sign-ins under scopes {scopes} failed: {:?}\n{}",
        batch.first_errors,
        ready.server.log_tail()
    );
    let calls = super::calls_between(&before, &sandbox.openai.counters());
    let total: u64 = calls.values().sum();
    let _ = std::fs::remove_file(&file);
    Ok((total as f64 / issuances.max(1) as f64, calls))
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let file = access::parse_policy(
        &policy_text(args.rules),
        "bench.toml",
        access::Defaults {
            lifetime: Duration::from_secs(86_400),
            cap: 5,
            per_hour: 20,
            budget: openai_key_server::access::Budget::default(),
        },
    )
    .map_err(|problems| anyhow::anyhow!(problems.join("\n")))
    .context("the generated policy")?;
    let policy = Policy::new(file.rules, false, Default::default());
    let matched = person("a@example.com", Some("example.com"));
    let refused = person("x@other.org", None);
    let the_job = job(args.rules - 1);
    let stranger = job(args.rules + 7);
    anyhow::ensure!(
        policy.decide(&matched).is_ok_and(|g| g.rule == "staff")
            && policy.decide(&refused).is_err()
            && policy
                .decide_workload(&the_job)
                .is_ok_and(|g| g.rule == format!("job-{}", args.rules - 1))
            && policy.decide_workload(&stranger).is_err(),
        "the generated policy does not decide as meant"
    );
    let cases = [
        (
            "person_last_rule",
            time(args.decisions, || policy.decide(&matched)),
        ),
        (
            "person_no_rule",
            time(args.decisions, || policy.decide(&refused)),
        ),
        (
            "job_last_rule",
            time(args.decisions, || policy.decide_workload(&the_job)),
        ),
        (
            "job_no_rule",
            time(args.decisions, || policy.decide_workload(&stranger)),
        ),
    ];

    let (scoped, scoped_calls) = calls_per_issuance(
        binary,
        "[\"api.model.request\", \"api.model.read\"]",
        args.issuances,
    )
    .await?;
    let (unscoped, unscoped_calls) = calls_per_issuance(binary, "[]", args.issuances).await?;

    let mut report = Report::new("policy");
    report
        .set("rules", args.rules)
        .set("decisions", args.decisions);
    for (name, samples) in &cases {
        report
            .set_f(&format!("{name}_p50_us"), samples.median().map(round3))
            .set_f(
                &format!("{name}_p99_us"),
                samples.percentile(99.0).map(round3),
            )
            .set_f(&format!("{name}_max_us"), samples.max().map(round3));
    }
    report
        .set("issuances", args.issuances)
        .set("admin_calls_per_scoped_issuance", round3(scoped))
        .set("admin_calls_per_unscoped_issuance", round3(unscoped))
        .set(
            "scoped_calls",
            super::calls_json(&scoped_calls, args.issuances.max(1) as f64),
        )
        .set(
            "unscoped_calls",
            super::calls_json(&unscoped_calls, args.issuances.max(1) as f64),
        );
    report.note(
        "a scoped key takes the bare account, its member role and its key (the spec's section 9); an account created without a role can do nothing with its keys",
    );
    Ok(report)
}
