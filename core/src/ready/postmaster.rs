//! The `postgres` check with `dataDir`: Postgres' own word on whether it takes sessions,
//! the status line of `<dataDir>/postmaster.pid`. The postmaster rewrites that line as
//! its state changes: `starting` while it starts or replays its WAL, `ready` the moment
//! it accepts sessions (a hot standby's read-only ones included), `stopping` on its way
//! out. `standby` means up but taking no sessions (recovery with `hot_standby` off, a
//! crash's redo included since Postgres 15): `pg_ctl start --wait` stops waiting there,
//! since it waits for the start and not for sessions; this check does not.
//!
//! Asking the file costs Postgres nothing, where the connecting check costs it a forked
//! backend per try, and the held client's own connection then pays that again: on a
//! small machine each is some milliseconds of the wake.
//!
//! A file left by a crash still says `ready`. The controller reads the file only once the
//! upstream port accepts (the postmaster writes its own file before it listens), and,
//! when the wake started the server, [`ready`] wants the file's start time no earlier
//! than that start (less [`START_SLACK_SECS`]), as `pg_ctl` does: a crashed server's
//! file, or another server's, is older. Wall-clock seconds, not the pid, so a server in
//! another pid namespace (a container) is read the same.
//!
//! No crate reads this file; its layout is Postgres' `pidfile.h` (the lines numbered
//! there), stable since Postgres 10 (an older server writes no status line, and is
//! never ready by this check).

/// Longest file read: the real one is eight short lines.
pub const MAX_LEN: usize = 16 * 1024;

/// How much earlier than the wake's start of the server the file's start time may be
/// (`pg_ctl`'s allowance: whole seconds, and clocks read at different moments).
pub const START_SLACK_SECS: i64 = 2;

/// The lines the check uses, as the file holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// Line 1: the postmaster's pid (in its own pid namespace).
    pub pid: i32,
    /// Line 3: when it started, in seconds since the epoch (absent while it is still
    /// writing the file).
    pub started: Option<i64>,
    /// Line 8: its state (absent until it has one).
    pub status: Option<Status>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    Stopping,
    Ready,
    Standby,
    /// A word this reader does not know (a later Postgres), kept for the error.
    Other(String),
}

/// Read a `postmaster.pid` (all of it, or as much as the postmaster wrote so far).
pub fn parse(text: &str) -> Result<PidFile, String> {
    let lines: Vec<&str> = text.lines().collect();
    let pid_line = lines.first().map_or("", |l| l.trim());
    let pid = match pid_line.parse::<i32>() {
        Ok(p) if p > 0 => p,
        // A standalone backend (`postgres --single`) writes its pid negated.
        Ok(p) if p < 0 => {
            return Err(format!(
                "its pid is {p}: a single-user Postgres (`postgres --single`) holds the directory"
            ))
        }
        _ => return Err(format!("its first line is {pid_line:?}, not a pid")),
    };
    let started = match lines.get(2).map(|l| l.trim()) {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("its third line is {t:?}, not a start time"))?,
        ),
    };
    let status = match lines.get(7).map(|l| l.trim()) {
        None | Some("") => None,
        Some("starting") => Some(Status::Starting),
        Some("stopping") => Some(Status::Stopping),
        Some("ready") => Some(Status::Ready),
        Some("standby") => Some(Status::Standby),
        Some(other) => Some(Status::Other(other.chars().take(32).collect())),
    };
    Ok(PidFile {
        pid,
        started,
        status,
    })
}

/// Whether the server the file describes takes sessions. `spawned`: when this wake
/// started the server (seconds since the epoch), None when it was already running. Err
/// says why not, for the wake's error.
pub fn ready(file: &PidFile, spawned: Option<i64>) -> Result<(), String> {
    if let Some(spawned) = spawned {
        match file.started {
            None => return Err("it has no start time yet (the server is starting)".to_string()),
            Some(t) if t < spawned.saturating_sub(START_SLACK_SECS) => {
                return Err(format!(
                    "it was written by a server that started at {t}, before this wake started one at {spawned} (seconds since the epoch): left by a server that crashed, or dataDir is another server's"
                ))
            }
            Some(_) => {}
        }
    }
    match &file.status {
        Some(Status::Ready) => Ok(()),
        None => Err("it has no status yet (the server is starting)".to_string()),
        Some(Status::Starting) => Err("it says \"starting\"".to_string()),
        Some(Status::Stopping) => Err("it says \"stopping\"".to_string()),
        Some(Status::Standby) => Err(
            "it says \"standby\": up, but taking no sessions (in recovery with hot_standby off)"
                .to_string(),
        ),
        Some(Status::Other(s)) => Err(format!("it says {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: i64 = 1_764_140_000;

    /// A Postgres 15 file as the postmaster leaves it while it serves.
    fn file(status: &str) -> String {
        format!(
            "4242\n/var/lib/postgresql/15/main\n{STARTED}\n5432\n\n127.0.0.1\n  1234567    98304\n{status}\n"
        )
    }

    #[test]
    fn each_status_line_is_read_and_only_ready_takes_sessions() {
        for (line, status, verdict) in [
            ("starting", Status::Starting, false),
            ("stopping", Status::Stopping, false),
            ("ready   ", Status::Ready, true),
            ("standby ", Status::Standby, false),
            ("sleeping", Status::Other("sleeping".into()), false),
        ] {
            let f = parse(&file(line)).expect("a whole file");
            assert_eq!(
                f,
                PidFile {
                    pid: 4242,
                    started: Some(STARTED),
                    status: Some(status)
                }
            );
            assert_eq!(ready(&f, Some(STARTED)).is_ok(), verdict, "{line:?}");
            assert_eq!(
                ready(&f, None).is_ok(),
                verdict,
                "{line:?}, already running"
            );
        }
        let standby = ready(&parse(&file("standby ")).expect("a file"), None);
        assert!(standby.expect_err("standby").contains("hot_standby off"));
    }

    #[test]
    fn a_file_still_being_written_is_not_ready() {
        let whole = file("ready   ");
        let mut cuts = 0;
        for cut in 0..whole.len() {
            // Every prefix either fails to parse (no whole pid yet) or is not ready,
            // unless it holds the whole status word.
            if let Ok(f) = parse(&whole[..cut]) {
                if ready(&f, Some(STARTED)).is_ok() {
                    assert!(whole[..cut].contains("ready"), "ready at {cut}");
                    cuts += 1;
                }
            }
        }
        assert!(cuts > 0, "the whole file is ready");
        let early = parse("4242\n/data\n").expect("two lines");
        assert_eq!(
            early,
            PidFile {
                pid: 4242,
                started: None,
                status: None
            }
        );
        let said = ready(&early, Some(STARTED)).expect_err("no start time");
        assert!(said.contains("no start time yet"), "{said}");
    }

    #[test]
    fn a_file_older_than_the_wakes_start_is_not_ready() {
        let f = parse(&file("ready")).expect("a whole file");
        // Written in the same second as the spawn, or within pg_ctl's slack before it.
        assert!(ready(&f, Some(STARTED)).is_ok());
        assert!(ready(&f, Some(STARTED + START_SLACK_SECS)).is_ok());
        // A crash's leftover (or another server's file), started well before.
        let stale = ready(&f, Some(STARTED + START_SLACK_SECS + 1)).expect_err("stale");
        assert!(stale.contains("left by a server that crashed"), "{stale}");
        // Not started by this wake: the running server's file is taken as it is.
        assert!(ready(&f, None).is_ok());
    }

    #[test]
    fn garbage_is_named() {
        for (text, says) in [
            ("", "\"\", not a pid"),
            ("pid\n", "\"pid\", not a pid"),
            ("0\n", "\"0\", not a pid"),
            ("-4242\n", "single-user Postgres"),
            ("1\n/d\nsoon\n", "\"soon\", not a start time"),
        ] {
            let e = parse(text).expect_err("garbage");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
