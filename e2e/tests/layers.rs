//! The shape the code keeps (docs/design.md): `zenvoy-core` depends on nothing
//! that does I/O, inside the controller no module imports one above it, and in no crate do
//! two modules import each other, directly or around a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use zenvoy_test_support::workspace_root;

/// `cargo tree -e normal` of one package: its normal (not dev, not build) dependencies,
/// one crate name per line.
fn normal_dependencies(package: &str) -> anyhow::Result<BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

#[test]
fn the_core_pulls_in_no_runtime_rpc_http_or_kubernetes_client() -> anyhow::Result<()> {
    let deps = normal_dependencies("zenvoy-core")?;
    assert!(
        deps.contains("zenvoy-core") && deps.contains("serde"),
        "cargo tree listed nothing useful: {deps:?}"
    );
    let forbidden = [
        "tokio",
        "tonic",
        "hyper",
        "reqwest",
        "kube",
        "kube-client",
        "axum",
        "h2",
        "mio",
        "envoy-types",
        "k8s-openapi",
    ];
    let found: Vec<&str> = forbidden
        .into_iter()
        .filter(|f| deps.contains(*f))
        .collect();
    assert!(found.is_empty(), "zenvoy-core depends on {found:?}");
    Ok(())
}

#[test]
fn the_contract_depends_on_nothing() -> anyhow::Result<()> {
    let deps = normal_dependencies("zenvoy-contract")?;
    assert_eq!(deps, BTreeSet::from(["zenvoy-contract".to_string()]));
    Ok(())
}

/// The controller's top-level modules, highest layer first. A module may import its own
/// parts and anything in a lower layer; `lib` stands for items of `lib.rs` itself (`Controller`,
/// `RunError`, re-exports).
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["lib"],
    &["admin"],
    &["runtime", "reload"],
    &["ingest", "xds"],
    &["backend", "admission"],
    &["tracked", "gate", "telemetry", "identity"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| LAYERS.iter().position(|l| l.contains(&"lib")).unwrap_or(0))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Every `crate::name` (or `zenvoy_controller::name` in `main.rs`) in code, not comments.
fn imports(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}`: each name in the braces.
            if name.is_empty() && after.starts_with('{') {
                let inner = after[1..].split('}').next().unwrap_or_default();
                out.extend(
                    inner
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or_default().to_string())
                        .filter(|n| !n.is_empty()),
                );
            } else if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_controller_module_imports_one_above_it() -> anyhow::Result<()> {
    let src = workspace_root().join("controller/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src)?;
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        let module = first.trim_end_matches(".rs");
        let text = std::fs::read_to_string(f)?;
        let prefix = if module == "main" {
            "zenvoy_controller::"
        } else {
            "crate::"
        };
        for target in imports(&text, prefix) {
            if target == module || target == "self" {
                continue;
            }
            if layer(&target) <= layer(module) {
                wrong.push(format!("{}: {module} -> {target}", rel.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up or across a layer:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

#[test]
fn the_core_never_names_the_controller() -> anyhow::Result<()> {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("core/src"), &mut files)?;
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        assert!(
            !text.contains("zenvoy_controller"),
            "{} names the controller",
            f.display()
        );
    }
    Ok(())
}

/// Modules and, for each, the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules of the library in `crate_dir/src` and, for each, the others it
/// imports (`crate::x`), tests included: a module's files are `x.rs` and `x/`.
fn module_imports(crate_dir: &str) -> anyhow::Result<Graph> {
    let src = workspace_root().join(crate_dir).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut graph: Graph = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src)?;
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(f)?;
        let edges = graph.entry(module.clone()).or_default();
        for target in imports(&text, "crate::") {
            if target != module && target != "self" {
                edges.insert(target);
            }
        }
    }
    Ok(graph)
}

/// A circle in `graph`, as the modules along it, if there is one.
fn circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut found = path[i..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(graph, start, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() -> anyhow::Result<()> {
    for krate in ["contract", "base", "core", "controller", "holder", "cli"] {
        let graph = module_imports(krate)?;
        assert!(
            graph.len() > 1 || krate == "contract",
            "{krate}: no modules read"
        );
        if let Some(c) = circle(&graph) {
            panic!("{krate}: modules import each other: {}", c.join(" -> "));
        }
    }
    Ok(())
}

/// For every folder module of the library in `crate_dir/src` (`xds/`, `backend/process/`,
/// ...), its child modules and the siblings each imports (`super::x`, `crate::path::x`),
/// read from the child's own file (`x.rs`; its folder's files see it as `super`).
fn sibling_imports(crate_dir: &str) -> anyhow::Result<Vec<(String, Graph)>> {
    let src = workspace_root().join(crate_dir).join("src");
    let mut dirs = vec![src.clone()];
    let mut out = Vec::new();
    while let Some(dir) = dirs.pop() {
        let path: Vec<String> = dir
            .strip_prefix(&src)?
            .components()
            .filter_map(|c| c.as_os_str().to_str().map(str::to_string))
            .collect();
        let mut children = BTreeMap::new();
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(m) = name.strip_suffix(".rs") {
                    children.insert(m.to_string(), std::fs::read_to_string(&p)?);
                }
            }
        }
        if path.is_empty() {
            continue; // the crate's top level: see `module_imports`
        }
        let absolute = format!("crate::{}::", path.join("::"));
        let mut graph: Graph = BTreeMap::new();
        for (m, text) in &children {
            let edges = graph.entry(m.clone()).or_default();
            for t in imports(text, "super::")
                .into_iter()
                .chain(imports(text, &absolute))
            {
                if &t != m && children.contains_key(&t) {
                    edges.insert(t);
                }
            }
        }
        out.push((path.join("/"), graph));
    }
    Ok(out)
}

#[test]
fn no_folder_module_has_an_import_circle_between_its_files() -> anyhow::Result<()> {
    let mut folders = 0;
    for krate in ["core", "controller", "holder", "cli"] {
        for (folder, graph) in sibling_imports(krate)? {
            folders += 1;
            if let Some(c) = circle(&graph) {
                panic!(
                    "{krate}/src/{folder}: files import each other: {}",
                    c.join(" -> ")
                );
            }
        }
    }
    assert!(folders > 5, "only {folders} folder modules read");
    Ok(())
}

#[test]
fn a_circle_is_found() {
    let graph: Graph = [
        ("hold", &["probe"][..]),
        ("probe", &["queue", "hold"][..]),
        ("queue", &[][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    assert_eq!(
        circle(&graph),
        Some(vec!["hold".into(), "probe".into(), "hold".into()])
    );
}
