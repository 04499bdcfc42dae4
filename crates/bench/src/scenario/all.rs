//! `all`: every scenario at the sizes of the benchmark issue's targets,
//! one after the other, then every JSON line again and the binary size.

use std::path::Path;
use std::time::Instant;

use super::{cli, connections, dashboard, expiry, idle, issue, policy, sweep, usage};
use crate::report::Report;
use crate::server::binary_mb;

/// Runs everything, printing each report as it comes.
pub(crate) async fn run(binary: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut keep = |report: Report| {
        report.print();
        reports.push(report);
    };

    for concurrency in [64, 256] {
        let args = issue::Args {
            concurrency,
            ..issue::Args::default()
        };
        keep(issue::run(binary, &args).await?);
    }
    // One at a time: the latency the server adds when nothing queues.
    let alone = issue::Args {
        flows: 500,
        concurrency: 1,
        ..issue::Args::default()
    };
    keep(issue::run(binary, &alone).await?);
    // The issue also asks for the flow "at a chosen latency".
    let slow = issue::Args {
        latency_ms: 50,
        ..issue::Args::default()
    };
    keep(issue::run(binary, &slow).await?);

    let sweeps = [
        (2_000, 20, None),
        (10_000, 100, None),
        (10_000, 100, Some(50.0)),
    ];
    for (accounts, latency_ms, rate_limit) in sweeps {
        let args = sweep::Args {
            accounts,
            latency_ms,
            rate_limit,
            ..sweep::Args::default()
        };
        keep(sweep::run(binary, &args).await?);
    }
    keep(expiry::run(binary, &expiry::Args::default()).await?);
    keep(idle::run(binary, &idle::Args::default()).await?);
    // Keys that expire during the run (a few thousand live at a time): the
    // per-key state stops growing, so any growth left would be a leak.
    let steady = idle::Args {
        expiration_s: 2,
        ..idle::Args::default()
    };
    keep(idle::run(binary, &steady).await?);
    // 1,000 idle connections under the server's own cap, then under a cap
    // of 500, where the idlest make room.
    keep(connections::run(binary, &connections::Args::default()).await?);
    let capped = connections::Args {
        max_connections: Some(500),
        ..connections::Args::default()
    };
    keep(connections::run(binary, &capped).await?);
    // Page views at 1, 10 and 100 per second against 1,000 live keys.
    keep(dashboard::run(binary, &dashboard::Args::default()).await?);
    keep(cli::run(binary, &cli::Args::default()).await?);
    keep(policy::run(binary, &policy::Args::default()).await?);
    keep(usage::run(binary, &usage::Args::default()).await?);

    let mut build = Report::new("binary");
    build
        .set("path", binary.display().to_string())
        .set_f("binary_mb", binary_mb(binary));
    keep(build);

    println!(
        "\n== every JSON line ({:.0} s) ==",
        started.elapsed().as_secs_f64()
    );
    for report in &reports {
        println!("{}", report.json_line());
    }
    Ok(())
}
