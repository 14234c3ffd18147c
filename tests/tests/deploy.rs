//! The Kubernetes manifests in deploy/: rendered with kustomize and validated against the
//! Kubernetes API schemas offline (both from the venv `make setup` fills), and the two
//! configs they carry accepted by what reads them: the zenvoy document by the
//! controller's Kubernetes-mode parser, the Envoy bootstrap by `envoy --mode validate`.

use std::process::Command;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use zenvoy_core::config::{Config, Mode};
use zenvoy_tests::workspace_root;

fn documents(file: &str) -> anyhow::Result<Vec<Value>> {
    let path = workspace_root().join("deploy").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).with_context(|| format!("parsing {file}")))
        .collect()
}

fn configmap_key(file: &str, name: &str, key: &str) -> anyhow::Result<String> {
    documents(file)?
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .and_then(|d| d["data"][key].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("{file}: no ConfigMap {name} with data.{key}"))
}

fn venv_tool(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = workspace_root().join(".venv/bin").join(name);
    anyhow::ensure!(p.exists(), "{} is missing: run `make setup`", p.display());
    Ok(p)
}

#[test]
fn manifests_render_and_validate() -> anyhow::Result<()> {
    let out = Command::new(venv_tool("kubectl")?)
        .args(["kustomize"])
        .arg(workspace_root().join("deploy"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(rendered.path(), &out.stdout)?;
    let v = Command::new(venv_tool("kubernetes-validate")?)
        .args(["--strict", "--quiet"])
        .arg(rendered.path())
        .output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        v.status.success() && !report.contains("ERROR"),
        "kubernetes-validate:\n{report}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "ClusterRole",
        "Role",
        "Deployment",
        "ConfigMap",
        "Service",
        "ServiceAccount",
    ] {
        assert!(
            text.contains(&format!("kind: {kind}\n")),
            "rendered manifests have a {kind}"
        );
    }
    Ok(())
}

#[test]
fn the_configmap_is_a_valid_kubernetes_mode_config() -> anyhow::Result<()> {
    let doc = configmap_key("config.yaml", "zenvoy", "zenvoy.yaml")?;
    let c = Config::from_yaml_for(&doc, Mode::Kubernetes)?;
    assert!(c.services.is_empty());
    assert_eq!(c.overrides[0].0, "postgres.databases");
    Ok(())
}

#[test]
fn the_envoy_bootstrap_is_valid_for_envoy() -> anyhow::Result<()> {
    let boot = configmap_key("proxy.yaml", "zenvoy-envoy", "envoy.yaml")?;
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), boot)?;
    let out = Command::new(zenvoy_tests::envoy::binary()?)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(file.path())
        .output()?;
    assert!(
        out.status.success(),
        "envoy --mode validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
