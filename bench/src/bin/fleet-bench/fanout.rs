//! The fan-out part (issue 15): N ADS streams on one controller with N services, wake/park
//! cycles of svc-0, and when each stream received each change; the controller's own log
//! timestamps tell its decisions apart from the fan-out.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use zenvoy_test_support::process::rss_mib;
use zenvoy_test_support::{bin, free_port, monotonic_ns, wait};

use crate::ads::{no_stream_ended, open_and_sync, receipts};
use crate::controller::{config_with, ingested, start_controller_with, Controller, WOKEN};
use crate::push::{holder_pending, push_cycles, PushStream};
use crate::Args;

/// The first instant zenvoy-echo wrote to its ready file: CLOCK_MONOTONIC ns right after
/// listen(2) (the other lines are its first accepts).
pub(crate) fn listened_at(ready: &Path) -> Option<u128> {
    std::fs::read_to_string(ready)
        .ok()?
        .lines()
        .find(|l| !l.starts_with("accept"))
        .and_then(|l| l.trim().parse().ok())
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z" | "X") | None
        ),
        Err(_) => false,
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, ns (the tightest of a few readings): turns the
/// controller's log timestamps (wall clock) into the monotonic clock the bench uses.
pub(crate) fn clock_offset() -> i128 {
    let mut best: Option<(u128, i128)> = None;
    for _ in 0..5 {
        let m1 = monotonic_ns();
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let m2 = monotonic_ns();
        let width = m2.saturating_sub(m1);
        let offset = real as i128 - ((m1 + m2) / 2) as i128;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
    }
    best.map_or(0, |(_, o)| o)
}

/// When svc-0 went from phase `from` to phase `to`, by the controller's JSON log (its
/// planner logs `state` at info), wall clock ns.
pub(crate) fn transitions(log: &Path, from: &str, to: &str) -> Vec<i128> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            let ours = f["message"].as_str() == Some("state")
                && f["service"].as_str() == Some(WOKEN)
                && f["from"].as_str() == Some(from)
                && f["to"].as_str() == Some(to);
            if !ours {
                return None;
            }
            let t = humantime::parse_rfc3339_weak(v["timestamp"].as_str()?).ok()?;
            let ns = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
            i128::try_from(ns).ok()
        })
        .collect()
}

/// One wake or park seen by the bench: from `start` (the bench's push) to `last` (the
/// last stream's receipt), the first receipt, and the clock offset then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) start: u128,
    pub(crate) first: u128,
    pub(crate) last: u128,
    pub(crate) offset: i128,
}

impl Seen {
    pub(crate) fn of(start: u128, at: &[u128]) -> Seen {
        Seen {
            start,
            first: at.iter().copied().min().unwrap_or(start),
            last: at.iter().copied().max().unwrap_or(start),
            offset: clock_offset(),
        }
    }

    pub(crate) fn spread_ms(&self) -> f64 {
        self.last.saturating_sub(self.first) as f64 / 1e6
    }

    /// The controller's decision (a log instant, wall clock) inside this window -> the
    /// last receipt, ms.
    pub(crate) fn since_log_ms(&self, log: &[i128]) -> Option<f64> {
        let (start, last) = (self.start as i128, self.last as i128);
        log.iter()
            .map(|t| t - self.offset)
            .find(|m| (start..=last).contains(m))
            .map(|m| (last - m) as f64 / 1e6)
    }
}

/// What one fan-out run (one stream count) measured. Latencies in ms.
#[derive(Debug)]
pub(crate) struct FanoutRow {
    pub(crate) streams: usize,
    pub(crate) sync_secs: f64,
    pub(crate) rss_sync: f64,
    pub(crate) rss_cycles: f64,
    pub(crate) rss_push: f64,
    pub(crate) push_ms: f64,
    /// svc-0's upstream listen(2) -> the last stream received the upstream assignment.
    pub(crate) wake_ready: Vec<f64>,
    /// The controller marked svc-0 ready (log) -> the last stream received it.
    pub(crate) wake_ctl: Vec<f64>,
    /// First -> last stream's receipt of the upstream assignment.
    pub(crate) wake_spread: Vec<f64>,
    /// The controller decided to park (log) -> the last stream received the holder.
    pub(crate) park_ctl: Vec<f64>,
    /// First -> last stream's receipt of the holder assignment.
    pub(crate) park_spread: Vec<f64>,
}

/// p50, p99 and max of `v`, sorted in place.
pub(crate) fn pcts(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((p / 100.0) * (v.len() - 1) as f64).round() as usize];
    Some((pct(50.0), pct(99.0), v[v.len() - 1]))
}

pub(crate) fn cell(v: &[f64]) -> String {
    let mut v = v.to_vec();
    match pcts(&mut v) {
        Some((p50, p99, _)) => format!("{p50:.2} / {p99:.2}"),
        None => "n/a".to_string(),
    }
}

pub(crate) fn line(v: &[f64]) -> String {
    let mut v = v.to_vec();
    match pcts(&mut v) {
        Some((p50, p99, max)) => format!("p50={p50:.3} p99={p99:.3} max={max:.3} ms"),
        None => "n/a".to_string(),
    }
}

/// One fan-out run: a fresh controller with `args.services` services and `count` streams.
pub(crate) async fn fanout(args: &Args, count: usize) -> anyhow::Result<FanoutRow> {
    anyhow::ensure!(count >= 1, "--streams: at least 1 stream per run");
    let upstream = free_port()?;
    let holder = free_port()?;
    let echo = bin("zenvoy-echo")?.display().to_string();
    let dir = tempfile::tempdir()?;
    let ready = dir.path().join("echo.ready");
    let pid_file = dir.path().join("echo.pid");
    let command = format!(
        "[{echo:?}, \"--listen\", \"{upstream}\", \"--ready-file\", {:?}, \"--pid-file\", {:?}]",
        ready.display().to_string(),
        pid_file.display().to_string()
    );
    let extra = format!(
        "    idleTimeout: {}\n    parkAckTimeout: {}\n",
        humantime::format_duration(args.fanout_idle),
        humantime::format_duration(args.fanout_park_ack)
    );
    let yaml = config_with(args.services, holder, (upstream, &command, &extra), None);
    // The planner's `state` lines (JSON, with microsecond timestamps) say when the
    // controller marked svc-0 ready and when it decided to park it.
    let c = start_controller_with(&yaml, "warn,zenvoy_core::planner=info", &["--log-json"]).await?;
    let row = fanout_run(args, count, &c, &ready, &pid_file).await;
    row.with_context(|| {
        format!(
            "fan-out with {count} streams failed\n{}",
            c.proc.log_tail(30)
        )
    })
}

pub(crate) async fn fanout_run(
    args: &Args,
    count: usize,
    c: &Controller,
    ready: &Path,
    pid_file: &Path,
) -> anyhow::Result<FanoutRow> {
    let pid = c.proc.pid();
    let (sotw, delta) = (count.div_ceil(2), count / 2);
    println!(
        "[F] N={count}: controller with {} services; opening {count} ADS streams ({sotw} SotW, {delta} delta), one connection each",
        args.services
    );
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let t0 = std::time::Instant::now();
    let bound = args.sync_timeout + Duration::from_secs(count as u64);
    let streams = open_and_sync(c.grpc, count, bound, &reports_tx, &mut reports).await?;
    let sync_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await; // the last ACKs are read
    let rss_sync = rss_mib(pid)?;
    no_stream_ended(&mut reports)?;
    println!(
        "[F] N={count}: every stream ACKed its initial CDS, LDS and EDS in {sync_secs:.1} s; controller RSS {rss_sync:.1} MiB"
    );

    // Wake/park cycles of svc-0, driven as the holder drives them: its pending count.
    let holder = PushStream::open(c.grpc).await?;
    holder.tx.send(holder_pending(true, 0.0)).await?;
    let mut wakes: Vec<(Seen, u128)> = Vec::with_capacity(args.fanout_wakes);
    let mut parks: Vec<Seen> = Vec::with_capacity(args.fanout_wakes);
    for k in 0..args.fanout_wakes {
        for f in [ready, pid_file] {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", f.display()));
                }
                _ => {}
            }
        }
        let start = monotonic_ns();
        holder.tx.send(holder_pending(false, 1.0)).await?;
        let at = receipts(
            &mut reports,
            count,
            true,
            Duration::from_secs(30),
            &format!("every stream to receive svc-0's upstream assignment (wake {k})"),
        )
        .await?;
        let seen = Seen::of(start, &at);
        let r = ready.to_path_buf();
        let listened = wait::until(
            "zenvoy-echo's ready file (its listen instant)",
            Duration::from_secs(10),
            || {
                let r = r.clone();
                async move { Ok(listened_at(&r)) }
            },
        )
        .await?;
        let p = pid_file.to_path_buf();
        let echo_pid: u32 = wait::until("zenvoy-echo's pid file", Duration::from_secs(10), || {
            let p = p.clone();
            async move {
                Ok(std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()))
            }
        })
        .await?;
        wakes.push((seen, listened));

        let start = monotonic_ns();
        holder.tx.send(holder_pending(false, 0.0)).await?;
        let at = receipts(
            &mut reports,
            count,
            false,
            args.fanout_idle + args.fanout_park_ack + Duration::from_secs(30),
            &format!("every stream to receive svc-0's holder assignment (park {k})"),
        )
        .await?;
        parks.push(Seen::of(start, &at));
        wait::until(
            &format!("svc-0's zenvoy-echo (pid {echo_pid}) to exit after park {k}"),
            Duration::from_secs(30),
            || async move { Ok((!alive(echo_pid)).then_some(())) },
        )
        .await?;
        if (k + 1) % 10 == 0 {
            println!(
                "[F]   ... {} of {} wake/park cycles",
                k + 1,
                args.fanout_wakes
            );
        }
    }
    let rss_cycles = rss_mib(pid)?;
    holder.close().await;
    no_stream_ended(&mut reports)?;
    println!(
        "[F] N={count}: {} wake/park cycles done; controller RSS {rss_cycles:.1} MiB",
        args.fanout_wakes
    );

    // Pushes with N streams connected (svc-0 parked, nothing to fan out unless an ingest
    // changes a resource).
    let base = ingested(c.admin, "push").await?;
    let pushed = push_cycles(c, args.services, args.cycles, base).await?;
    let (push_ms, rss_push) = (pushed.per_push_ms, pushed.rss);
    pushed.stream.close().await;
    no_stream_ended(&mut reports)?;
    println!(
        "[F] N={count}: push ingest {push_ms:.1} ms controller CPU per cycle ({} cycles, {:.1} MiB each); RSS after {rss_push:.1} MiB",
        args.cycles,
        pushed.size as f64 / (1 << 20) as f64
    );
    drop(streams);

    let log = c.proc.log.clone().unwrap_or_default();
    let ready_log = transitions(&log, "Waking", "Awake");
    let park_log = transitions(&log, "Awake", "Parking");
    let row = FanoutRow {
        streams: count,
        sync_secs,
        rss_sync,
        rss_cycles,
        rss_push,
        push_ms,
        wake_ready: wakes
            .iter()
            .map(|(s, listened)| s.last.saturating_sub(*listened) as f64 / 1e6)
            .collect(),
        wake_ctl: wakes
            .iter()
            .filter_map(|(s, _)| s.since_log_ms(&ready_log))
            .collect(),
        wake_spread: wakes.iter().map(|(s, _)| s.spread_ms()).collect(),
        park_ctl: parks
            .iter()
            .filter_map(|s| s.since_log_ms(&park_log))
            .collect(),
        park_spread: parks.iter().map(Seen::spread_ms).collect(),
    };
    if row.wake_ctl.len() < wakes.len() || row.park_ctl.len() < parks.len() {
        println!(
            "[F] N={count}: the controller's log ({}) gave the instant of {} of {} readies and {} of {} park decisions; the others are left out",
            log.display(),
            row.wake_ctl.len(),
            wakes.len(),
            row.park_ctl.len(),
            parks.len()
        );
    }
    println!(
        "[F] N={count}: wake, svc-0's listen(2) -> last stream has the upstream: {}",
        line(&row.wake_ready)
    );
    println!(
        "[F] N={count}: wake, controller marked it ready -> last stream: {}",
        line(&row.wake_ctl)
    );
    println!(
        "[F] N={count}: wake, first -> last stream: {}",
        line(&row.wake_spread)
    );
    println!(
        "[F] N={count}: park, controller decided -> last stream has the holder: {}",
        line(&row.park_ctl)
    );
    println!(
        "[F] N={count}: park, first -> last stream: {}",
        line(&row.park_spread)
    );
    Ok(row)
}
