//! `zenvoy check FILE...`: each file through the controller's own reader and validator
//! (`zenvoy_core::config`), so what passes here is what the controller accepts. One line
//! per file, then one per warning; an error names the field and the value (the
//! validator's message), a syntax error the path and line.

use std::io::Write;
use std::path::Path;

use zenvoy_core::config::{Config, Mode};

/// What `check` found over all files.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    pub errors: usize,
    pub warnings: usize,
}

/// Check every file in `mode`: "ok" lines to `out`, errors and warnings to `err`.
///
/// # Errors
/// Only when writing to `out` or `err` fails; invalid files are counted, not returned.
pub fn check(
    files: &[impl AsRef<Path>],
    mode: Mode,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    for file in files {
        let file = file.as_ref();
        summary.files += 1;
        let shown = file.display();
        match Config::load_for(file, mode) {
            Ok(config) => {
                let what = match mode {
                    Mode::Process => count(config.services.len(), "service"),
                    Mode::Kubernetes => count(config.overrides.len(), "service override"),
                };
                writeln!(out, "{shown}: ok ({what})")?;
                for w in config.warnings() {
                    summary.warnings += 1;
                    writeln!(err, "{shown}: warning: {w}")?;
                }
            }
            Err(e) => {
                summary.errors += 1;
                writeln!(err, "{shown}: error: {e}")?;
            }
        }
    }
    Ok(summary)
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, mode: Mode) -> (Summary, String, String) {
        let dir = std::env::temp_dir().join(format!("zenvoy-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!("{n}.yaml"));
        std::fs::write(&file, text).expect("write");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = check(&[&file], mode, &mut out, &mut err).expect("check");
        let _ = std::fs::remove_file(&file);
        (
            s,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn an_invalid_value_is_reported_with_its_field() {
        let (s, _, err) = run(
            "services:\n  - name: a\n    listen: 127.0.0.1:10000\n    upstream: 127.0.0.1:18080\n    command: [x]\n    holdTimeout: 0s\n",
            Mode::Process,
        );
        assert_eq!(s.errors, 1);
        assert!(err.contains("services[0].holdTimeout"), "{err}");
    }

    #[test]
    fn a_valid_file_is_ok_and_its_warnings_are_printed() {
        let (s, out, err) = run(
            "services:\n  - name: a\n    listen: 127.0.0.1:10000\n    upstream: 127.0.0.1:18080\n    command: [x]\n    holdTimeout: 5s\n    wakeTimeout: 10s\n",
            Mode::Process,
        );
        assert_eq!((s.errors, s.warnings), (0, 1), "{out}{err}");
        assert!(out.contains("ok (1 service)"), "{out}");
        assert!(err.contains("services[0].holdTimeout"), "{err}");
    }

    #[test]
    fn kubernetes_mode_takes_policy_only_entries() {
        let text = "services:\n  - name: pg.db\n    idleTimeout: 1m\n";
        assert_eq!(run(text, Mode::Kubernetes).0.errors, 0);
        assert_eq!(run(text, Mode::Process).0.errors, 1);
    }
}
