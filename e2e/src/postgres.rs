//! Debian's Postgres for the harness (e2e/tests/real_servers.rs, `wake-bench --real
//! postgres`): the newest /usr/lib/postgresql/<version>/bin, its server programs run as the
//! `postgres` user when this is root (Postgres refuses to run as root; util-linux
//! `setpriv`), a new cluster with trust auth in a directory of the caller's, and `psql` and
//! `pg_isready` against an address.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use zenvoy_test_support::process::output_of;

pub const PG_LIB: &str = "/usr/lib/postgresql";
pub const PG_PROGRAMS: [&str; 4] = ["initdb", "postgres", "pg_isready", "psql"];
/// One `initdb` from start to exit.
const INITDB_BOUND: Duration = Duration::from_secs(30);
/// One `pg_isready`.
const PROBE_BOUND: Duration = Duration::from_secs(5);
/// One `psql` from start to exit: held through a wake, then served or refused.
pub const CLIENT_BOUND: Duration = Duration::from_secs(25);

/// Debian's Postgres: the newest /usr/lib/postgresql/<version>/bin, and how its server
/// programs are run.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub version: u32,
    pub bin: PathBuf,
    /// Put before `initdb` and `postgres`: `setpriv` to the `postgres` user when this is
    /// root (Postgres refuses to run as root), nothing otherwise.
    pub as_owner: Vec<String>,
}

/// The effective uid, from /proc/self/status (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Run `cmd` to completion within `bound`; an error names `what` and carries its output.
async fn run_to_end(what: &str, mut cmd: Command, bound: Duration) -> anyhow::Result<()> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(bound, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {bound:?}"))?
        .with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Postgres {
    /// The newest Postgres installed, checked by running `postgres --version` as the user
    /// it will run as; otherwise why not (a reason to print when skipping).
    pub fn find() -> Result<Postgres, String> {
        let missing = |why: String| {
            format!("{why}; `make setup` installs Debian's postgresql when run as root")
        };
        let entries =
            std::fs::read_dir(PG_LIB).map_err(|e| missing(format!("no {PG_LIB} ({e})")))?;
        let (version, bin) = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| PG_PROGRAMS.iter().all(|p| bin.join(p).is_file()))
            .max_by_key(|(version, _)| *version)
            .ok_or_else(|| {
                missing(format!(
                    "no {PG_LIB}/<version>/bin with {}",
                    PG_PROGRAMS.join(", ")
                ))
            })?;
        let as_owner: Vec<String> = if effective_uid() == Some(0) {
            [
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
            ]
            .map(String::from)
            .to_vec()
        } else {
            Vec::new()
        };
        // The server as it will run: the user, setpriv and the binary at once.
        let pg = Postgres {
            version,
            bin,
            as_owner,
        };
        output_of(&pg.server_argv("postgres", &["--version"])).map_err(|e| {
            format!("Postgres {version} does not run as the user it would run as here: {e}")
        })?;
        Ok(pg)
    }

    pub fn program(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    /// The command line of server program `name` (`initdb`, `postgres`), run as the data
    /// directory's owner.
    pub fn server_argv(&self, name: &str, args: &[&str]) -> Vec<String> {
        let mut argv = self.as_owner.clone();
        argv.push(self.program(name));
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// The server on `data`, listening on 127.0.0.1:`port` only (no Unix socket: the
    /// default directory, /var/run/postgresql, is the package's), in the foreground.
    pub fn postgres_argv(&self, data: &Path, port: u16) -> Vec<String> {
        self.server_argv(
            "postgres",
            &[
                "-D",
                &data.display().to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-k",
                "",
            ],
        )
    }

    pub fn server_command(&self, name: &str, args: &[&str], cwd: &Path) -> Command {
        let mut argv = self.server_argv(name, args).into_iter();
        let mut cmd = Command::new(argv.next().unwrap_or_default());
        cmd.args(argv).current_dir(cwd);
        cmd
    }

    /// A new cluster in `<dir>/pg/data`: superuser `postgres`, trust auth (any local
    /// client in, no password), no locale, UTF8, not synced to disk while it is made. When
    /// the server runs as the `postgres` user, `<dir>/pg` is given to that user and `dir`
    /// opened for it to pass through (0711). Returns the home (`<dir>/pg`, the server's
    /// working directory) and the data directory.
    pub async fn init_cluster(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let home = dir.join("pg");
        std::fs::create_dir(&home).context("creating the Postgres home")?;
        if !self.as_owner.is_empty() {
            // Its own directory for the postgres user, and a way through the caller's.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .context("opening the directory to the postgres user")?;
            let home = home.display().to_string();
            output_of(&["chown".to_string(), "postgres:postgres".to_string(), home])
                .map_err(anyhow::Error::msg)?;
        }
        let data = home.join("data");
        let data_arg = data.display().to_string();
        run_to_end(
            "initdb",
            self.server_command(
                "initdb",
                &[
                    "-D",
                    &data_arg,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-locale",
                    "-E",
                    "UTF8",
                    "-N",
                ],
                &home,
            ),
            INITDB_BOUND,
        )
        .await?;
        Ok((home, data))
    }

    /// Whether the server on `port` accepts sessions (`pg_isready` exits 0; it exits 1
    /// while the server is starting up or recovering).
    pub async fn is_ready(&self, port: u16) -> bool {
        let mut cmd = Command::new(self.program("pg_isready"));
        cmd.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        matches!(
            tokio::time::timeout(PROBE_BOUND, cmd.status()).await,
            Ok(Ok(status)) if status.success()
        )
    }

    /// `psql -c sql` against `addr` as `postgres`: the rows (unaligned, tuples only), or
    /// how it failed. Within `CLIENT_BOUND`; it gives up connecting after 20 s.
    pub async fn psql(&self, addr: SocketAddr, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.program("psql"));
        cmd.args(["-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(addr.ip().to_string())
            .arg("-p")
            .arg(addr.port().to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "20")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLIENT_BOUND, cmd.output())
            .await
            .map_err(|_| format!("psql did not exit within {CLIENT_BOUND:?}"))?
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}
