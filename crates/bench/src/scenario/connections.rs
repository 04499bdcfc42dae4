//! `connections`: the server's memory, open files and `/healthz` latency
//! while a flood of idle connections is held. Probes first on a quiet
//! server, then with `--idle` connections open that send nothing (or, with
//! `--mix`, half an HTTP/2 preface or half a request), then once the server
//! has closed them. The server closes a connection that sends no complete
//! request head within 10 s, so everything measured while they are held
//! ends well within that; and at its connection cap (`MAX_CONNECTIONS`) it
//! closes the one idle the longest to make room, which `--max-connections`
//! below `--idle` shows at work.

use std::io::{ErrorKind, Read as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::procfs;
use crate::report::Report;
use crate::server;
use crate::stats::Samples;

/// What a probe sends: one request on a connection of its own, as a load
/// balancer's health check does.
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// How long one probe may take before it counts as an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's header-read deadline: a held connection is closed this long
/// after it opened. Measurements while they are held must end before it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How often held sockets are looked at while waiting for the server to
/// close them.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Knobs of the `connections` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Connections to open and hold, sending nothing (or, with `--mix`, an
    /// unfinished beginning).
    #[arg(long, default_value_t = 1000)]
    pub(crate) idle: usize,
    /// `/healthz` requests per measurement, one after the other, each on a
    /// new connection.
    #[arg(long, default_value_t = 200)]
    pub(crate) probes: usize,
    /// Hold a mix instead of silent connections: a third send nothing, a
    /// third half an HTTP/2 preface (`PRI * HTTP/2.0`), a third a request
    /// line and one header but not the blank line that ends them.
    #[arg(long)]
    pub(crate) mix: bool,
    /// `MAX_CONNECTIONS` of the server. Default: the server's own, half of
    /// its open-file limit left after 256, at most 4,096.
    #[arg(long)]
    pub(crate) max_connections: Option<usize>,
    /// Seconds to let the server settle after ready before the first
    /// readings.
    #[arg(long, default_value_t = 1)]
    pub(crate) settle_s: u64,
    /// Milliseconds given to the server to accept the held connections
    /// before the readings with them open.
    #[arg(long, default_value_t = 200)]
    pub(crate) accept_ms: u64,
    /// Seconds to wait, once the server has closed the flood, before the
    /// last reading: the server gives the heap back once connections and
    /// requests have stopped for a second (health probes do not count).
    #[arg(long, default_value_t = 3)]
    pub(crate) quiet_s: u64,
    /// Seconds to wait, from the first held connection, for the server to
    /// have closed them all.
    #[arg(long, default_value_t = 20)]
    pub(crate) drain_s: u64,
}

impl Default for Args {
    /// The command line's defaults: `all` runs what the scenario runs with
    /// no flags.
    fn default() -> Self {
        super::defaults()
    }
}

/// What a held connection sent after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing at all.
    Silent,
    /// The first line of the HTTP/2 connection preface.
    HalfH2Preface,
    /// A request line and a header, without the blank line ending the head.
    PartialRequest,
}

impl Kind {
    /// Every kind, in the order `--mix` deals them out.
    const ALL: [Self; 3] = [Self::Silent, Self::HalfH2Preface, Self::PartialRequest];

    /// The bytes sent.
    fn bytes(self) -> &'static [u8] {
        match self {
            Self::Silent => b"",
            Self::HalfH2Preface => b"PRI * HTTP/2.0\r\n",
            Self::PartialRequest => b"GET / HTTP/1.1\r\nHost: x\r\n",
        }
    }

    /// Its name in the figures.
    fn name(self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::HalfH2Preface => "half_h2_preface",
            Self::PartialRequest => "partial_request",
        }
    }
}

/// One held connection.
#[derive(Debug)]
struct Held {
    kind: Kind,
    /// Non-blocking, off the runtime: read only to see whether the server
    /// has closed it.
    stream: std::net::TcpStream,
    /// When its connect completed.
    opened: Instant,
    /// The first look that found it closed by the server.
    closed: Option<Instant>,
    /// The start of what the server sent on it (an error answer, say).
    answer: Vec<u8>,
}

impl Held {
    /// Reads what the server sent without waiting, and notes when the
    /// connection is found closed (end of stream or reset).
    fn look(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break self.closed = Some(Instant::now()),
                Ok(n) => {
                    let room = 256usize.saturating_sub(self.answer.len());
                    self.answer.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => break self.closed = Some(Instant::now()),
            }
        }
    }

    /// Whether it was still open at the last look.
    fn open(&self) -> bool {
        self.closed.is_none()
    }
}

/// Looks at every held connection and returns how many are still open.
fn look_all(held: &mut [Held]) -> usize {
    held.iter_mut().for_each(Held::look);
    held.iter().filter(|h| h.open()).count()
}

/// One series of probes.
#[derive(Debug, Default)]
struct Probes {
    /// Each successful probe's time, connect to end of stream, in ms.
    ms: Vec<f64>,
    /// Probes that failed or did not answer 200.
    errors: usize,
    /// The first failures, as text.
    first_errors: Vec<String>,
}

/// Sends `request` on a new connection and reads the answer to the end of
/// the stream (the server closes it after the answer).
async fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.write_all(request).await.context("sending")?;
        let mut answer = Vec::with_capacity(512);
        stream
            .read_to_end(&mut answer)
            .await
            .context("reading the answer")?;
        anyhow::Ok(answer)
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer within {PROBE_TIMEOUT:?}"))?
}

/// `GET /healthz` on a new connection, as a probe does: its time from
/// connecting to the end of the stream, if it answered 200.
async fn healthz(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let answer = exchange(addr, HEALTHZ).await?;
    anyhow::ensure!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "answered {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(60)])
    );
    Ok(started.elapsed())
}

/// `count` probes, one after the other.
async fn probe(addr: SocketAddr, count: usize) -> Probes {
    let mut probes = Probes::default();
    for _ in 0..count {
        match healthz(addr).await {
            Ok(took) => probes.ms.push(took.as_secs_f64() * 1000.0),
            Err(error) => {
                probes.errors += 1;
                if probes.first_errors.len() < 3 {
                    probes.first_errors.push(format!("{error:#}"));
                }
            }
        }
    }
    probes
}

/// Opens `count` connections, each sending what its kind sends. Stops at
/// the first failure (out of file descriptors, say), returning what was
/// opened and the error.
async fn open_flood(
    addr: SocketAddr,
    count: usize,
    mix: bool,
) -> (Vec<Held>, Option<anyhow::Error>) {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let kind = if mix {
            Kind::ALL[i % Kind::ALL.len()]
        } else {
            Kind::Silent
        };
        let open = async {
            let mut stream = TcpStream::connect(addr).await.context("connecting")?;
            let opened = Instant::now();
            if !kind.bytes().is_empty() {
                stream.write_all(kind.bytes()).await.context("sending")?;
            }
            let stream = stream.into_std().context("leaving the runtime")?;
            anyhow::Ok(Held {
                kind,
                stream,
                opened,
                closed: None,
                answer: Vec::new(),
            })
        };
        match open.await {
            Ok(one) => held.push(one),
            Err(error) => {
                let error = error.context(format!(
                    "opening held connection {} of {count} ({})",
                    i + 1,
                    kind.name()
                ));
                return (held, Some(error));
            }
        }
    }
    (held, None)
}

/// The server's default connection cap for an open-file limit, as it
/// derives it (`src/config/connections.rs`): half of what is left after
/// 256, within 16..=4,096.
fn default_cap(fd_limit: Option<u64>) -> u64 {
    fd_limit.map_or(4_096, |fds| (fds.saturating_sub(256) / 2).clamp(16, 4_096))
}

/// The p50, p99 and max of a probe series, their names ending in `suffix`.
fn set_latency(report: &mut Report, probes: &Probes, suffix: &str) {
    let samples = Samples::new(probes.ms.clone());
    report
        .set_f(&format!("healthz_ms_p50{suffix}"), samples.median())
        .set_f(&format!("healthz_ms_p99{suffix}"), samples.percentile(99.0))
        .set_f(&format!("healthz_ms_max{suffix}"), samples.max());
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let sandbox = super::sandbox(sandbox::openai::Config::default()).await?;
    let mut env = vec![
        ("EXPIRATION", "86400".to_owned()),
        ("CLEANUP_INTERVAL", "3600".to_owned()),
    ];
    if let Some(max) = args.max_connections {
        env.push(("MAX_CONNECTIONS", max.to_string()));
    }
    let super::Ready {
        mut server,
        client,
        startup,
    } = super::start(binary, &sandbox, env).await?;
    // Its kept-alive connection from `/readyz` would count as one held.
    drop(client);
    let addr: SocketAddr = server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .context("the server's address")?;
    let pid = server.pid;
    // `--server-env` is applied after `--max-connections`.
    let configured: Option<u64> = match server::overridden("MAX_CONNECTIONS") {
        Some(value) => value.parse().ok(),
        None => args.max_connections.map(|max| max as u64),
    };
    let fd_limit = procfs::open_file_limit(pid)?;
    let cap = configured.unwrap_or_else(|| default_cap(fd_limit));
    let bench_fd_limit = procfs::open_file_limit(std::process::id())?;

    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let idle = server.memory()?;
    let fds_idle = procfs::open_fds(pid)?;
    let quiet = probe(addr, args.probes).await;

    // The flood, and everything measured while it is held.
    let cpu_before = server.cpu()?;
    let flood_started = Instant::now();
    let (mut held, open_error) = open_flood(addr, args.idle, args.mix).await;
    let open_took = flood_started.elapsed();
    tokio::time::sleep(Duration::from_millis(args.accept_ms)).await;
    let open_after_accept = look_all(&mut held);
    let with_flood = server.memory()?;
    let fds_with_flood = procfs::open_fds(pid)?;
    let flooded = probe(addr, args.probes).await;
    let after_probes = server.memory()?;
    let open_at_end = look_all(&mut held);
    let measured_within = flood_started.elapsed();

    // Until the server has closed every one of them.
    let deadline = flood_started + Duration::from_secs(args.drain_s);
    let mut still_open = open_at_end;
    while still_open > 0 && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
        still_open = look_all(&mut held);
    }
    let drained = flood_started.elapsed();
    // Per kind: how many, how many the server answered, and the first
    // answer's status line.
    let answers_by_kind: Vec<(Kind, usize, usize, Option<String>)> = Kind::ALL
        .iter()
        .map(|&kind| {
            let of_kind = held.iter().filter(|h| h.kind == kind);
            let total = of_kind.clone().count();
            let mut answers = of_kind.filter(|h| !h.answer.is_empty());
            let first = answers.next().map(|h| {
                let text = String::from_utf8_lossy(&h.answer);
                text.lines().next().unwrap_or_default().to_owned()
            });
            let answered = answers.count() + usize::from(first.is_some());
            (kind, total, answered, first)
        })
        .collect();
    let by_kind = by_kind_json(&held, measured_within, flood_started);
    // Closed by the deadline: from each connection's opening to its end.
    let deadline_closes = Samples::new(
        held.iter()
            .filter_map(|h| {
                let closed = h.closed?;
                (closed > flood_started + measured_within)
                    .then(|| closed.duration_since(h.opened).as_secs_f64())
            })
            .collect(),
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let after = server.memory()?;
    let fds_after = procfs::open_fds(pid)?;
    let cpu = server.cpu()?.since(cpu_before);
    // Does the server give the flood's memory back on its own?
    tokio::time::sleep(Duration::from_secs(args.quiet_s)).await;
    let trimmed = server.memory()?;
    server.ensure_running()?;

    let opened = answers_by_kind
        .iter()
        .map(|(_, total, _, _)| total)
        .sum::<usize>();
    let mut report = Report::new("connections");
    report
        .set_ms("startup_ms", startup)
        .set("idle_connections", args.idle)
        .set("mix", args.mix)
        .set("max_connections", configured)
        .set("max_connections_in_use", cap)
        .set("server_fd_limit", fd_limit)
        .set("bench_fd_limit", bench_fd_limit)
        .set("probes", args.probes)
        .set_f("rss_mb_idle", Some(idle.rss_mib()))
        .set("server_fds_idle", fds_idle);
    set_latency(&mut report, &quiet, "");
    report
        .set("opened", opened)
        .set_ms("open_ms", open_took)
        .set("held_open_after_accept", open_after_accept)
        .set("closed_at_open", opened - open_after_accept)
        .set_f("rss_mb_with_flood", Some(with_flood.rss_mib()))
        .set("server_fds_with_flood", fds_with_flood)
        .set_f(
            "rss_kb_per_idle_connection",
            (open_after_accept > 0).then(|| {
                (with_flood.rss_kib as f64 - idle.rss_kib as f64) / open_after_accept as f64
            }),
        );
    set_latency(&mut report, &flooded, "_with_flood");
    report
        .set_f(
            "rss_mb_with_flood_after_probes",
            Some(after_probes.rss_mib()),
        )
        .set("closed_during_probes", open_after_accept - open_at_end)
        .set("held_open_at_end", open_at_end)
        .set_f("measured_within_s", Some(measured_within.as_secs_f64()))
        .set_f("closed_by_server_after_s_min", deadline_closes.min())
        .set_f("closed_by_server_after_s_max", deadline_closes.max())
        .set("not_closed_by_server", still_open)
        .set_f("rss_mb_after_flood", Some(after.rss_mib()))
        .set("server_fds_after", fds_after)
        .set_f("rss_mb_after_flood_quiet", Some(trimmed.rss_mib()))
        .set("quiet_s", args.quiet_s)
        .set_f("server_cpu_ms", Some(cpu.total().as_secs_f64() * 1000.0))
        .set("healthz_errors", quiet.errors + flooded.errors);
    if args.mix {
        report.set("by_kind", by_kind);
    }
    let log_lines = server.log_lines();
    report.set("server_log_lines", log_lines);

    if let Some(error) = open_error {
        report.note(format!(
            "only {opened} of {} connections opened: {error:#} (this process's open-file \
             limit: {}; raise it with `ulimit -n`)",
            args.idle,
            bench_fd_limit.map_or("unlimited".to_owned(), |n| n.to_string())
        ));
    }
    if log_lines > 0 {
        for line in server.log_tail().lines().rev().take(3) {
            report.note(format!("server log: {line}"));
        }
    }
    for error in quiet.first_errors.iter().chain(&flooded.first_errors) {
        report.note(format!("healthz error: {error}"));
    }
    if measured_within + Duration::from_secs(1) > HEADER_READ_TIMEOUT {
        report.note(format!(
            "the readings with the flood ended {:.1} s after it began, close to the server's \
             {HEADER_READ_TIMEOUT:?} header deadline: connections may have been closed during them",
            measured_within.as_secs_f64()
        ));
    }
    if still_open > 0 {
        report.note(format!(
            "{still_open} held connections were still open {:.1} s after the flood began",
            drained.as_secs_f64()
        ));
    }
    for (kind, total, answered, first) in answers_by_kind {
        if let Some(first) = first {
            report.note(format!(
                "the server answered {answered} of {total} {} connections (first: {first:?})",
                kind.name()
            ));
        }
    }
    report.note(
        "healthz_ms: connect to end of stream, one new connection per request; rss in MiB \
         (VmRSS); server_fds: entries of /proc/<pid>/fd; rss_kb_per_idle_connection: growth \
         over the connections open after accept_ms; closed_by_server_after_s: from opening to \
         the server's close, for those still open when the readings ended; \
         rss_mb_after_flood: settle_s after the server closed the flood; \
         rss_mb_after_flood_quiet: quiet_s later, with no request in between (the server trims \
         its heap once connections and requests have stopped for a second)",
    );
    Ok(report)
}

/// Per kind of held connection: how many, how many the server had closed by
/// the end of the readings, and when it closed the rest.
fn by_kind_json(held: &[Held], measured_within: Duration, since: Instant) -> Value {
    let end = since + measured_within;
    let mut out = Map::new();
    for kind in Kind::ALL {
        let of_kind: Vec<&Held> = held.iter().filter(|h| h.kind == kind).collect();
        let open_at_end = of_kind
            .iter()
            .filter(|h| h.closed.is_none_or(|closed| closed > end))
            .count();
        let closes = Samples::new(
            of_kind
                .iter()
                .filter_map(|h| Some(h.closed?.duration_since(h.opened).as_secs_f64()))
                .collect(),
        );
        let round = |v: Option<f64>| v.map(crate::stats::round3);
        out.insert(
            kind.name().to_owned(),
            json!({
                "opened": of_kind.len(),
                "open_at_end": open_at_end,
                "closed_after_s_min": round(closes.min()),
                "closed_after_s_max": round(closes.max()),
            }),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_servers_rule() {
        assert_eq!(default_cap(Some(20_000)), 4_096);
        assert_eq!(default_cap(Some(4_096)), 1_920);
        assert_eq!(default_cap(Some(1024)), 384);
        assert_eq!(default_cap(Some(100)), 16);
        assert_eq!(default_cap(None), 4_096);
    }

    #[test]
    fn every_kind_but_the_silent_one_sends_an_unfinished_head() {
        assert!(Kind::Silent.bytes().is_empty());
        for kind in [Kind::HalfH2Preface, Kind::PartialRequest] {
            assert!(kind.bytes().ends_with(b"\r\n"), "{kind:?}");
            assert!(!kind.bytes().ends_with(b"\r\n\r\n"), "{kind:?}");
        }
    }
}
