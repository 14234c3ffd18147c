//! Child processes that are stopped when dropped: SIGTERM, a grace period, then SIGKILL.
//! And what the harness reads of other processes: CPU, RSS, a program's output, whether a
//! process group is gone, a log's tail.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: Option<PathBuf>,
}

impl Proc {
    /// Start `cmd`, its stdout and stderr going to `log` (or inherited when None).
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> anyhow::Result<Proc> {
        if let Some(log) = log {
            let f = File::create(log)?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        cmd.stdin(Stdio::null());
        // An error a binary exits with is the last thing in its log, and the harness prints
        // log tails: no anyhow backtrace burying it (panics still print theirs).
        cmd.env("RUST_LIB_BACKTRACE", "0");
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({cmd:?}): {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has it exited already? Returns its status text if so.
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns true if it stopped in grace.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "--- {} ({}) last {} lines ---\n{}\n",
            self.name,
            log.display(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// CPU seconds `pid` has used, from `/proc/<pid>/stat`: utime + stime, plus cutime +
/// cstime (its reaped children, e.g. socat's forked relays) when `with_children`. Clock
/// ticks from sysconf.
pub fn cpu_seconds(pid: u32, with_children: bool) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let last = if with_children { 14 } else { 12 };
    let ticks: f64 = (11..=last)
        .map(|i| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .map_or(100.0, |h| h as f64);
    Ok(ticks / hz)
}

/// VmRSS of `pid` in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/status: {e}"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// Run a program that answers at once (`--version`, `chown`); its stdout, or why not.
pub fn output_of(argv: &[String]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("an empty command")?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", argv.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`{}`: {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line for `sh -c`, each word single-quoted (no word here holds a quote).
pub fn sh_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of a file, for failure messages.
pub fn file_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last {n} lines) ---\n{}\n",
        path.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

/// Whether a process of group `pgid` is still alive (a zombie has exited).
pub fn group_alive(pgid: i32) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir("/proc").map_err(|e| anyhow::anyhow!("reading /proc: {e}"))? {
        let entry = entry.map_err(|e| anyhow::anyhow!("reading /proc: {e}"))?;
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        // `pid (comm) state ppid pgrp ...`; gone already if it exited since read_dir.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let mut fields = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace();
        let (state, pgrp) = (fields.next(), fields.nth(1));
        if state != Some("Z") && pgrp.and_then(|p| p.parse::<i32>().ok()) == Some(pgid) {
            return Ok(true);
        }
    }
    Ok(false)
}
