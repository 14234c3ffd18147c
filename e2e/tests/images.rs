//! The container images, built as `make images` builds them but from this run's debug
//! binaries: `scripts/images.sh` (buildah, `FROM scratch`) into a buildah store of the
//! test's own; then each image's root filesystem is unpacked (`buildah from` + `buildah
//! mount`, a plain directory with the vfs driver) and its entrypoint run from there with
//! chroot, as the user the image names:
//!
//! - `--version` prints the workspace version: the loader, every shared library and the
//!   binary are in the image, where the binary looks, readable by that user;
//! - a host name resolves: the binary connects to a listener of the test's by the name
//!   `localhost`, which only the image's own nsswitch.conf and /etc/hosts can answer (the
//!   chroot has no resolv.conf, and nothing answers DNS on 127.0.0.1).
//!
//! ```text
//!  target/debug/zenvoy-* --scripts/images.sh--> localhost/zenvoy-*:<version> (test's store)
//!        --buildah from + mount--> ROOT --chroot --userspec=UID:GID ROOT entrypoint
//! ```
//!
//! Needs root (buildah's store, chroot to another user) and buildah: skipped with the
//! reason otherwise, and a failure instead under `ZENVOY_REQUIRE_PRIVILEGED=1`.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;
use zenvoy_test_support::netns::REQUIRE_ENV;
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, bin_dir, workspace_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What `scripts/images.sh` names its images without `--prefix`: the names deploy/ uses.
const PREFIX: &str = "localhost";
const IMAGES: [&str; 2] = ["zenvoy-controller", "zenvoy-holder"];
/// Both binaries connect at start (the controller's first scrape, the holder's ADS and
/// metrics streams); far more than that takes, even for debug binaries under load.
const CONNECT: Duration = Duration::from_secs(15);

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

/// Why images cannot be built and run here, if they cannot.
fn unavailable() -> Option<String> {
    if effective_uid() != Some(0) {
        return Some("needs root (buildah's storage, chroot as the image's user)".into());
    }
    match Command::new("buildah").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "buildah --version failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "buildah is missing ({e}); `make setup` installs it when run as root"
        )),
    }
}

/// True when the test can run. Otherwise it prints why and returns false (the test returns
/// early: skipped), or, with `ZENVOY_REQUIRE_PRIVILEGED=1`, panics with the reason.
fn available(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason} ({REQUIRE_ENV}=1, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {reason} (set {REQUIRE_ENV}=1 to make this a failure)");
    false
}

fn ensure_ok(what: &str, out: &Output) -> anyhow::Result<()> {
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A buildah store of the test's own (vfs, in a temporary directory): the machine's store
/// is not touched, and runs side by side cannot meet. Deleted with the directory.
struct Store {
    conf: PathBuf,
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> anyhow::Result<Store> {
        let dir = tempfile::Builder::new()
            .prefix("zenvoy-images-")
            .tempdir()?;
        let conf = dir.path().join("storage.conf");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.path().join("root").display(),
                dir.path().join("run").display()
            ),
        )?;
        Ok(Store { conf, dir })
    }

    /// `program` (buildah, or the script that runs it) working on this store.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("CONTAINERS_STORAGE_CONF", &self.conf)
            .env("STORAGE_DRIVER", "vfs");
        cmd
    }

    /// Run buildah to completion; its trimmed stdout.
    fn buildah(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command("buildah")
            .args(args)
            .output()
            .with_context(|| format!("running buildah {}", args.join(" ")))?;
        ensure_ok(&format!("buildah {}", args.join(" ")), &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// What an image's config says it runs, and as whom.
struct ImageConfig {
    uid: u32,
    gid: u32,
    entrypoint: String,
}

fn image_config(store: &Store, reference: &str) -> anyhow::Result<ImageConfig> {
    let text = store.buildah(&["inspect", "--type", "image", reference])?;
    let inspected: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("buildah inspect {reference}: not JSON"))?;
    let oci = &inspected["OCIv1"]["config"];
    let user = oci["User"].as_str().unwrap_or_default();
    // Numeric, so that Kubernetes' runAsNonRoot can check it without the image's files.
    let (uid, gid) = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("{reference}: user {user:?} is not numeric uid:gid"))?;
    let entrypoint = match oci["Entrypoint"].as_array().map(Vec::as_slice) {
        Some([binary]) => binary.as_str().unwrap_or_default().to_string(),
        other => anyhow::bail!("{reference}: entrypoint {other:?} is not one binary"),
    };
    Ok(ImageConfig {
        uid,
        gid,
        entrypoint,
    })
}

/// A working container of an image, its root filesystem mounted; removed when dropped.
struct Unpacked<'a> {
    store: &'a Store,
    id: String,
    root: PathBuf,
}

impl<'a> Unpacked<'a> {
    fn new(store: &'a Store, reference: &str) -> anyhow::Result<Unpacked<'a>> {
        let id = store.buildah(&["from", "--quiet", "--pull=never", reference])?;
        // Made before the mount, so that a failed mount still removes the container.
        let mut unpacked = Unpacked {
            store,
            id,
            root: PathBuf::new(),
        };
        unpacked.root = PathBuf::from(store.buildah(&["mount", &unpacked.id])?);
        Ok(unpacked)
    }
}

impl Drop for Unpacked<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.buildah(&["rm", &self.id]) {
            eprintln!("leaving working container {} behind: {e:#}", self.id);
        }
    }
}

/// The name the image's /etc/`file` (passwd or group) gives `id`, if any.
fn name_of(root: &Path, file: &str, id: u32) -> Option<String> {
    let id = id.to_string();
    std::fs::read_to_string(root.join("etc").join(file))
        .ok()?
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == id)
        .map(|f| f[0].to_string())
}

/// The image's entrypoint run from `root` as the image's user, with no environment but
/// the PATH that finds chroot itself.
fn in_image(root: &Path, config: &ImageConfig) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("--userspec={}:{}", config.uid, config.gid))
        .arg(root)
        .arg(&config.entrypoint);
    cmd
}

/// Start `cmd` and wait until it connects to `listener`; the error carries its log.
fn connects(name: &str, cmd: Command, listener: &TcpListener, log: &Path) -> anyhow::Result<()> {
    let mut child = Proc::spawn(name, cmd, Some(log))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + CONNECT;
    loop {
        match listener.accept() {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = child.exited() {
            anyhow::bail!(
                "{name} exited ({status}) before connecting\n{}",
                child.log_tail(20)
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} did not connect to {} as localhost within {CONNECT:?}\n{}",
            listener.local_addr()?,
            child.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How each binary dials a name at start: the controller scrapes a target (a config file
/// written into the unpacked root), the holder opens its streams to the controller.
fn dial_localhost(name: &str, root: &Path, cmd: &mut Command, port: u16) -> anyhow::Result<()> {
    match name {
        "zenvoy-controller" => {
            let config = root.join("zenvoy-probe.yaml");
            std::fs::write(
                &config,
                format!(
                    "controller: {{ listen: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }}
scrape: {{ interval: 1s, targets: [{{ name: probe, url: \"http://localhost:{port}/metrics\" }}] }}
services:
  - name: probe
    listen: \"127.0.0.1:0\"
    upstream: \"127.0.0.1:1\"
    command: [\"/nonexistent\"]
"
                ),
            )?;
            // Written as root; read as the image's user.
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
            cmd.args(["--config", "/zenvoy-probe.yaml"]);
        }
        "zenvoy-holder" => {
            cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
                .arg(format!("--controller=http://localhost:{port}"));
        }
        _ => anyhow::bail!("no way to make {name} dial a name"),
    }
    Ok(())
}

fn check_image(store: &Store, name: &str) -> anyhow::Result<()> {
    let reference = format!("{PREFIX}/{name}:{VERSION}");
    let config = image_config(store, &reference)?;
    anyhow::ensure!(
        config.uid != 0 && config.gid != 0,
        "{reference} runs as {}:{}, not as a non-root user",
        config.uid,
        config.gid
    );
    anyhow::ensure!(
        config.entrypoint == format!("/usr/local/bin/{name}"),
        "{reference}: entrypoint {}",
        config.entrypoint
    );
    let image = Unpacked::new(store, &reference)?;
    // The user and group have names inside the image, for whatever looks them up.
    for (file, id) in [("passwd", config.uid), ("group", config.gid)] {
        anyhow::ensure!(
            name_of(&image.root, file, id).is_some(),
            "{reference}: /etc/{file} has no entry for {id}"
        );
    }

    let out = in_image(&image.root, &config)
        .arg("--version")
        .output()
        .context("running chroot")?;
    ensure_ok(
        &format!(
            "{} --version from {reference}'s root as {}:{}",
            config.entrypoint, config.uid, config.gid
        ),
        &out,
    )?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{name} {VERSION}\n"),
        "{reference}: --version"
    );

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut cmd = in_image(&image.root, &config);
    dial_localhost(name, &image.root, &mut cmd, listener.local_addr()?.port())?;
    let log = store.dir.path().join(format!("{name}.log"));
    connects(name, cmd, &listener, &log)
        .with_context(|| format!("{reference}: resolving localhost from inside the image"))?;
    Ok(())
}

#[test]
fn each_image_runs_its_binary_from_its_unpacked_root_as_its_user() -> anyhow::Result<()> {
    if !available("each_image_runs_its_binary_from_its_unpacked_root_as_its_user") {
        return Ok(());
    }
    for name in IMAGES {
        bin(name)?;
    }
    let store = Store::new()?;
    let out = store
        .command(workspace_root().join("scripts/images.sh"))
        .arg(bin_dir())
        .arg(VERSION)
        .current_dir(workspace_root())
        .output()
        .context("running scripts/images.sh")?;
    ensure_ok("scripts/images.sh", &out)?;
    for name in IMAGES {
        check_image(&store, name).with_context(|| format!("image {name}"))?;
    }
    Ok(())
}
