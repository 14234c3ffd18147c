//! Starting a service's command: in its own process group (so that a stop reaches the
//! whole tree), with its `env` and `cwd`, its output appended to its log.

use tokio::process::{Child, Command};
use tracing::{info, warn};
use zenvoy_core::config::ProcessOptions;

use crate::backend::BackendError;

pub(super) fn spawn(
    service: &str,
    command: &[String],
    o: &ProcessOptions,
) -> Result<Child, BackendError> {
    let err = |source| BackendError::Spawn {
        service: service.to_string(),
        command: command.join(" "),
        source,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| err(std::io::Error::other("empty command")))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&o.env)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    // A log that cannot be written (a read-only directory, a full disk) must not cost
    // the wake: the output then goes where the controller's own goes.
    match open_log(&o.log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, errs)) => {
            cmd.stdout(out).stderr(errs);
        }
        Err(e) => {
            warn!(service, log = %o.log.display(), error = %e, "cannot open the service's log; its output goes to the controller's");
        }
    }
    if let Some(cwd) = &o.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd.spawn().map_err(|e| match &o.cwd {
        // The OS says ENOENT for a missing cwd as for a missing program: say which.
        Some(cwd) if !cwd.is_dir() => err(std::io::Error::new(
            e.kind(),
            format!("cwd {} is not a directory", cwd.display()),
        )),
        _ => err(e),
    })?;
    info!(service, pid = child.id(), command = %command.join(" "), log = %o.log.display(), "started");
    Ok(child)
}

/// The service's log, appended to (its directory made if missing), with a line saying
/// that a wake starts here.
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "--- zenvoy: starting (unix time {}) ---", unix_seconds())?;
    Ok(f)
}

/// The wall clock in whole seconds since the epoch (0 for a clock set before it).
pub(super) fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
