//! The `postgres` check with `dataDir`: Postgres' own word on whether it takes sessions,
//! the status line of `<dataDir>/postmaster.pid`, read as `pg_ctl start --wait` reads
//! it. The postmaster rewrites that line as its state changes: `starting` while it
//! starts or replays its WAL, `ready` the moment it accepts sessions (`standby` for a hot
//! standby that takes read-only ones), `stopping` on its way out.
//!
//! Asking the file costs Postgres nothing, where the connecting check costs it a forked
//! backend per try, and the held client's own connection then pays that again: on a
//! small machine each is some milliseconds of the wake.
//!
//! A file left by a crash still says `ready`, and names a dead pid. The controller reads
//! the file only once the upstream port accepts (the postmaster writes its own file before
//! it listens), and [`ready`] also wants the pid alive and the port the upstream's.
//!
//! No crate reads this file; its layout is Postgres' `pidfile.h` (the lines numbered
//! there), stable since Postgres 10.

/// Longest file read: the real one is eight short lines.
pub const MAX_LEN: usize = 16 * 1024;

/// The lines the check uses, as the file holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// Line 1: the postmaster's pid.
    pub pid: i32,
    /// Line 4: the TCP port it listens on (absent while it is still writing the file).
    pub port: Option<u16>,
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
    let pid = pid_line
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("its first line is {pid_line:?}, not a pid"))?;
    let port = match lines.get(3).map(|l| l.trim()) {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("its fourth line is {p:?}, not a port"))?,
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
    Ok(PidFile { pid, port, status })
}

/// Whether the server the file describes takes sessions on `upstream_port`; `alive` says
/// whether the file's pid is a running process. Err says why not, for the wake's error.
pub fn ready(file: &PidFile, upstream_port: u16, alive: bool) -> Result<(), String> {
    if !alive {
        return Err(format!(
            "it names pid {}, which is not running (left by a server that crashed)",
            file.pid
        ));
    }
    match file.port {
        Some(p) if p != upstream_port => {
            return Err(format!(
                "it says port {p}, not the upstream's {upstream_port}: dataDir is another server's"
            ))
        }
        _ => {}
    }
    match &file.status {
        Some(Status::Ready | Status::Standby) => Ok(()),
        None => Err("it has no status yet (the server is starting)".to_string()),
        Some(Status::Starting) => Err("it says \"starting\"".to_string()),
        Some(Status::Stopping) => Err("it says \"stopping\"".to_string()),
        Some(Status::Other(s)) => Err(format!("it says {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postgres 15 file as the postmaster leaves it while it serves.
    fn file(status: &str) -> String {
        format!(
            "4242\n/var/lib/postgresql/15/main\n1764140000\n5432\n\n127.0.0.1\n  1234567    98304\n{status}\n"
        )
    }

    #[test]
    fn each_status_line_is_read_and_only_ready_or_standby_takes_sessions() {
        for (line, status, verdict) in [
            ("starting", Status::Starting, false),
            ("stopping", Status::Stopping, false),
            ("ready   ", Status::Ready, true),
            ("standby ", Status::Standby, true),
            ("sleeping", Status::Other("sleeping".into()), false),
        ] {
            let f = parse(&file(line)).expect("a whole file");
            assert_eq!(
                f,
                PidFile {
                    pid: 4242,
                    port: Some(5432),
                    status: Some(status)
                }
            );
            assert_eq!(ready(&f, 5432, true).is_ok(), verdict, "{line:?}");
        }
    }

    #[test]
    fn a_file_still_being_written_is_not_ready() {
        let whole = file("ready   ");
        let mut cuts = 0;
        for cut in 0..whole.len() {
            // Every prefix either fails to parse (no whole pid yet) or is not ready,
            // unless it holds the whole status word.
            if let Ok(f) = parse(&whole[..cut]) {
                if ready(&f, 5432, true).is_ok() {
                    assert!(whole[..cut].contains("ready"), "ready at {cut}");
                    cuts += 1;
                }
            }
        }
        assert!(cuts > 0, "the whole file is ready");
        let early = parse("4242\n/data\n1764140000\n").expect("three lines");
        assert_eq!(
            early,
            PidFile {
                pid: 4242,
                port: None,
                status: None
            }
        );
        assert!(ready(&early, 5432, true)
            .expect_err("no status line")
            .contains("no status yet"));
    }

    #[test]
    fn a_crashed_servers_file_or_another_servers_is_not_ready() {
        let f = parse(&file("ready")).expect("a whole file");
        let dead = ready(&f, 5432, false).expect_err("a dead pid");
        assert!(dead.contains("pid 4242, which is not running"), "{dead}");
        let other = ready(&f, 6543, true).expect_err("another port");
        assert!(
            other.contains("port 5432, not the upstream's 6543"),
            "{other}"
        );
    }

    #[test]
    fn garbage_is_named() {
        for (text, says) in [
            ("", "\"\", not a pid"),
            ("-1\n", "\"-1\", not a pid"),
            ("pid\n", "\"pid\", not a pid"),
            ("1\n/d\n0\nport\n", "\"port\", not a port"),
            ("1\n/d\n0\n70000\n", "\"70000\", not a port"),
        ] {
            let e = parse(text).expect_err("garbage");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
