//! The `command` check: a program (`pg_isready`, `redis-cli ping`) exits 0.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use zenvoy_core::config::ProcessOptions;

use super::CheckError;

/// One `command` check, run with the service's `env` and `cwd`, in a process group of
/// its own that goes with it however the check ends.
pub(super) async fn check(argv: &[String], o: &ProcessOptions) -> Result<(), CheckError> {
    let shown = argv.join(" ");
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "empty ready command".to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&o.env)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(cwd) = &o.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    // Whatever ends this (its exit, or the caller's timeout dropping it), the
    // check's whole process group goes with it: a shell pipeline leaves nothing.
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let _reap = KillGroup(group);
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` {status}").into())
    }
}

/// SIGKILL to a process group when dropped (a ready check's; see [`check`]). Its
/// processes are reaped by tokio (the leader) or by init (the rest).
struct KillGroup(Option<Pid>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}
