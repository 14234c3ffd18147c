use super::*;

const EXAMPLE: &str = include_str!("../../../examples/zenvoy.yaml");

/// One valid service; tests append keys to it or put sections before it.
const SERVICE: &str = "
services:
  - name: echo
    listen: 127.0.0.1:10000
    upstream: 127.0.0.1:18080
    command: [echo-server]
";

#[track_caller]
fn ok(yaml: &str) -> Config {
    match Config::from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got: {e}\n{yaml}"),
    }
}

/// Asserts `yaml` is rejected by the validation layer and returns (field, value, message).
#[track_caller]
fn invalid(yaml: &str) -> (String, String, String) {
    match Config::from_yaml(yaml) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let msg = e.to_string();
            let ConfigError::Invalid { field, value, .. } = e else {
                unreachable!()
            };
            (field, value, msg)
        }
        other => panic!("expected ConfigError::Invalid, got {other:?}\n{yaml}"),
    }
}

#[track_caller]
fn syntax(yaml: &str) -> String {
    match Config::from_yaml(yaml) {
        Err(ConfigError::Syntax(msg)) => msg,
        other => panic!("expected ConfigError::Syntax, got {other:?}\n{yaml}"),
    }
}

/// SERVICE with `extra` (indented service keys) appended to the service.
fn service_with(extra: &str) -> String {
    format!("{SERVICE}    {extra}\n")
}

#[test]
fn example_file_parses() {
    let c = ok(EXAMPLE);
    assert_eq!(c.controller.listen, DEFAULT_CONTROLLER_LISTEN);
    assert_eq!(c.controller.admin, DEFAULT_CONTROLLER_ADMIN);
    assert_eq!(c.holder.address, DEFAULT_HOLDER_ADDRESS);
    let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["echo", "files"]);
    let echo = &c.services[0];
    assert_eq!(
        echo.listen.map(|l| l.to_string()).as_deref(),
        Some("127.0.0.1:10000")
    );
    assert_eq!(echo.upstream.port(), 18080);
    assert_eq!(echo.command[..3], ["python3", "-m", "http.server"]);
    // The example's `defaults` section spells out the built-in defaults.
    assert_eq!(echo.policy, Policy::default());
    let files = &c.services[1].policy;
    assert_eq!(files.idle_timeout, Duration::from_secs(15));
    assert_eq!(files.min_warm, Duration::from_secs(60));
    assert_eq!(files.max_pending, 100);
    assert_eq!(files.hold_timeout, DEFAULT_HOLD_TIMEOUT);
}

#[test]
fn built_in_defaults() {
    let c = ok(SERVICE);
    assert_eq!(c.controller.listen.to_string(), "127.0.0.1:18000");
    assert_eq!(c.controller.admin.to_string(), "127.0.0.1:18001");
    assert_eq!(c.holder.address.to_string(), "127.0.0.1:15001");
    let p = Policy::default();
    assert_eq!(c.services[0].policy, p);
    assert_eq!(
        (
            p.idle_timeout,
            p.hold_timeout,
            p.min_warm,
            p.wake_timeout,
            p.park_ack_timeout,
            p.max_pending
        ),
        (
            Duration::from_secs(300),
            Duration::from_secs(75),
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::from_secs(5),
            1000
        )
    );
}

#[test]
fn empty_sections_mean_defaults() {
    let c = ok(&format!("controller:\nholder: {{}}\ndefaults:\n{SERVICE}"));
    assert_eq!(c, ok(SERVICE));
}

#[test]
fn service_overrides_beat_defaults_section_which_beats_built_ins() {
    let c = ok("
controller: {listen: '[::1]:9000', admin: 0.0.0.0:9001}
holder: {address: 10.0.0.1:7000}
defaults:
  idleTimeout: 10m
  maxPending: 5
services:
  - name: a
    listen: 127.0.0.1:1
    upstream: 127.0.0.1:2
    command: [a]
    idleTimeout: 1h 30m
    holdTimeout: 250ms
    minWarm: 2s
    wakeTimeout: 2m
    parkAckTimeout: 1s
    maxPending: 7
  - name: b
    listen: 127.0.0.1:3
    upstream: 127.0.0.1:4
    command: [b, --flag, '']
");
    assert_eq!(c.controller.listen.to_string(), "[::1]:9000");
    assert_eq!(c.controller.admin.to_string(), "0.0.0.0:9001");
    assert_eq!(c.holder.address.to_string(), "10.0.0.1:7000");
    assert_eq!(
        c.services[0].policy,
        Policy {
            idle_timeout: Duration::from_secs(90 * 60),
            hold_timeout: Duration::from_millis(250),
            min_warm: Duration::from_secs(2),
            wake_timeout: Duration::from_secs(120),
            park_ack_timeout: Duration::from_secs(1),
            max_pending: 7,
            ..Policy::default()
        }
    );
    assert_eq!(
        c.services[1].policy,
        Policy {
            idle_timeout: Duration::from_secs(600),
            max_pending: 5,
            ..Policy::default()
        }
    );
    assert_eq!(c.services[1].command, ["b", "--flag", ""]);
}

#[test]
fn unparsable_duration_names_field_and_value() {
    let (field, value, msg) = invalid(&service_with("idleTimeout: 5 minutes please"));
    assert_eq!(field, "services[0].idleTimeout");
    assert_eq!(value, "5 minutes please");
    assert!(
        msg.starts_with("services[0].idleTimeout: not a duration"),
        "{msg}"
    );
    assert!(msg.ends_with("(got \"5 minutes please\")"), "{msg}");

    // A bare number has no unit; YAML reads it as a string all the same.
    let (field, value, _) = invalid(&format!("defaults:\n  holdTimeout: 30\n{SERVICE}"));
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("defaults.holdTimeout", "30")
    );
}

#[test]
fn zero_durations_rejected_except_min_warm() {
    for key in [
        "idleTimeout",
        "holdTimeout",
        "wakeTimeout",
        "parkAckTimeout",
    ] {
        let (field, value, msg) = invalid(&service_with(&format!("{key}: 0s")));
        assert_eq!(field, format!("services[0].{key}"));
        assert_eq!(value, "0s");
        assert!(msg.contains("must be greater than zero"), "{msg}");

        let (field, _, _) = invalid(&format!("defaults:\n  {key}: 0ms\n{SERVICE}"));
        assert_eq!(field, format!("defaults.{key}"));
    }
    let c = ok(&service_with("minWarm: 0s"));
    assert_eq!(c.services[0].policy.min_warm, Duration::ZERO);
}

#[test]
fn max_pending_at_least_one() {
    let (field, value, _) = invalid(&format!("defaults:\n  maxPending: 0\n{SERVICE}"));
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("defaults.maxPending", "0")
    );
    let (field, _, _) = invalid(&service_with("maxPending: 0"));
    assert_eq!(field, "services[0].maxPending");
    assert_eq!(
        ok(&service_with("maxPending: 1")).services[0]
            .policy
            .max_pending,
        1
    );
    // Negative or non-numeric is a type error from serde, with the path.
    let msg = syntax(&service_with("maxPending: -1"));
    assert!(
        msg.contains("services[0].maxPending") && msg.contains("line 7"),
        "{msg}"
    );
}

#[test]
fn service_names() {
    let named = |name: &str| SERVICE.replace("name: echo", &format!("name: '{name}'"));
    for good in ["a", "0", "echo-1", "a.b-c.d9", &"a".repeat(MAX_NAME_LEN)] {
        assert_eq!(ok(&named(good)).services[0].name, good);
    }
    let long = "a".repeat(MAX_NAME_LEN + 1);
    for bad in [
        "",
        "Echo",
        "-a",
        "a-",
        ".a",
        "a.",
        "a_b",
        "a b",
        "é",
        long.as_str(),
    ] {
        let (field, value, msg) = invalid(&named(bad));
        assert_eq!(field, "services[0].name");
        assert_eq!(value, bad);
        assert!(msg.contains("must be"), "{msg}");
    }
}

#[test]
fn duplicate_names() {
    let yaml = format!(
        "{SERVICE}  - name: echo\n    listen: 127.0.0.1:10001\n    upstream: 127.0.0.1:18081\n    command: [x]\n"
    );
    let (field, value, msg) = invalid(&yaml);
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[1].name", "echo")
    );
    assert!(msg.contains("duplicate of services[0].name"), "{msg}");
}

#[test]
fn addresses_must_parse() {
    for (yaml, path) in [
        (
            SERVICE.replace("listen: 127.0.0.1:10000", "listen: localhost:10000"),
            "services[0].listen",
        ),
        (
            SERVICE.replace("upstream: 127.0.0.1:18080", "upstream: 127.0.0.1"),
            "services[0].upstream",
        ),
        (
            format!("controller:\n  listen: 18000\n{SERVICE}"),
            "controller.listen",
        ),
        (
            format!("controller:\n  admin: ::1:80\n{SERVICE}"),
            "controller.admin",
        ),
        (
            format!("holder:\n  address: 127.0.0.1:99999\n{SERVICE}"),
            "holder.address",
        ),
    ] {
        let (field, value, msg) = invalid(&yaml);
        assert_eq!(field, path);
        assert!(!value.is_empty());
        assert!(msg.contains("not an ip:port address"), "{msg}");
    }
}

#[test]
fn upstream_port_zero_rejected_listen_port_zero_allowed() {
    let (field, value, _) = invalid(&SERVICE.replace("127.0.0.1:18080", "127.0.0.1:0"));
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[0].upstream", "127.0.0.1:0")
    );

    // Two services on port 0 get different ports from the OS, so they do not collide.
    let yaml = SERVICE.replace("127.0.0.1:10000", "127.0.0.1:0")
        + "  - name: two\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n    command: [x]\n";
    assert_eq!(ok(&yaml).services[1].listen.map(|l| l.port()), Some(0));
}

#[test]
fn bound_addresses_unique() {
    let two = |listen: &str| {
        format!("{SERVICE}  - name: two\n    listen: {listen}\n    upstream: 127.0.0.1:1\n    command: [x]\n")
    };
    let cases = [
        (
            two("127.0.0.1:10000"),
            "services[1].listen",
            "services[0].listen",
        ),
        (
            two("127.0.0.1:18000"),
            "services[1].listen",
            "controller.listen",
        ),
        (
            two("127.0.0.1:18001"),
            "services[1].listen",
            "controller.admin",
        ),
        (
            two("127.0.0.1:15001"),
            "services[1].listen",
            "holder.address",
        ),
        (
            format!("controller:\n  admin: 127.0.0.1:18000\n{SERVICE}"),
            "controller.admin",
            "controller.listen",
        ),
    ];
    for (yaml, path, first) in cases {
        let (field, _, msg) = invalid(&yaml);
        assert_eq!(field, path);
        assert!(msg.contains(&format!("same address as {first}")), "{msg}");
    }
    // The upstream is the service's own port, not one zenvoy binds.
    ok(&SERVICE.replace("127.0.0.1:18080", "127.0.0.1:15001"));
}

#[test]
fn command_needs_a_program() {
    let (field, value, _) = invalid(&SERVICE.replace("[echo-server]", "[]"));
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[0].command", "[]")
    );
    let (field, _, _) = invalid(&SERVICE.replace("[echo-server]", "['', x]"));
    assert_eq!(field, "services[0].command[0]");
}

#[test]
fn services_required() {
    for yaml in [
        "",
        "# nothing\n",
        "services: []\n",
        "defaults:\n  idleTimeout: 1m\n",
    ] {
        let (field, _, msg) = invalid(yaml);
        assert_eq!(field, "services", "{yaml:?}");
        assert!(msg.contains("at least one service"), "{msg}");
    }
}

#[test]
fn missing_required_service_field() {
    let fields = [
        ("name", "echo"),
        ("listen", "127.0.0.1:10000"),
        ("upstream", "127.0.0.1:18080"),
        ("command", "[x]"),
    ];
    // `listen` is optional for HTTP services, and `upstream` and `command` in Kubernetes
    // mode, so their absence is a validation error, not a schema one.
    for (missing, _) in fields.iter().filter(|(k, _)| *k == "name") {
        let rest: Vec<_> = fields
            .iter()
            .filter(|(k, _)| k != missing)
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let msg = syntax(&format!("services:\n  - {}\n", rest.join("\n    ")));
        assert!(
            msg.contains(&format!("services[0]: missing field `{missing}`")),
            "{msg}"
        );
        assert!(msg.contains(" at line 2 column 5"), "{msg}");
    }
}

#[test]
fn upstream_and_command_are_required_with_the_process_backend() {
    for (missing, text) in [
        (
            "upstream",
            "services:\n- {name: a, listen: \"127.0.0.1:1\", command: [x]}\n",
        ),
        (
            "command",
            "services:\n- {name: a, listen: \"127.0.0.1:1\", upstream: \"127.0.0.1:2\"}\n",
        ),
    ] {
        let e = Config::from_yaml(text).expect_err(missing).to_string();
        assert!(e.starts_with(&format!("services[0].{missing}: ")), "{e}");
    }
}

#[test]
fn kubernetes_mode_services_only_override_policy() {
    use crate::config::Mode::Kubernetes;
    let c = Config::from_yaml_for(
        "defaults: {idleTimeout: 1m, maxPending: 5}\nservices:\n- {name: pg.db, holdTimeout: 9s}\n",
        Kubernetes,
    )
    .expect("valid");
    assert!(c.services.is_empty());
    assert_eq!(c.defaults.idle_timeout, Duration::from_secs(60));
    let (name, p) = &c.overrides[0];
    assert_eq!(name, "pg.db");
    assert_eq!(p.hold_timeout, Duration::from_secs(9));
    assert_eq!(p.max_pending, 5, "defaults under the override");
    assert!(
        Config::from_yaml_for("{}", Kubernetes).is_ok(),
        "no services is fine"
    );
    for (key, text) in [
        (
            "upstream",
            "services:\n- {name: a.b, upstream: \"1.2.3.4:5\"}\n",
        ),
        ("command", "services:\n- {name: a.b, command: [x]}\n"),
        (
            "listen",
            "services:\n- {name: a.b, listen: \"1.2.3.4:5\"}\n",
        ),
        (
            "idleTimeout",
            "services:\n- {name: a.b, idleTimeout: soon}\n",
        ),
        ("name", "services:\n- {name: a.b}\n- {name: a.b}\n"),
    ] {
        let e = Config::from_yaml_for(text, Kubernetes)
            .expect_err(key)
            .to_string();
        assert!(e.contains(&format!("].{key}: ")), "{key}: {e}");
    }
    let e = Config::from_yaml("{}")
        .expect_err("process mode needs a service")
        .to_string();
    assert!(e.starts_with("services: "), "{e}");
}

#[test]
fn unknown_keys_are_named_with_their_position() {
    let msg = syntax(&service_with("idleTimout: 5m"));
    assert!(
        msg.contains("services[0]: unknown field `idleTimout`"),
        "{msg}"
    );
    assert!(msg.contains("at line 7 column 5"), "{msg}");

    let msg = syntax(&format!("defaults:\n  maxpending: 3\n{SERVICE}"));
    assert!(
        msg.contains("defaults: unknown field `maxpending`"),
        "{msg}"
    );

    // serde_norway omits line 1 column 1; we add it back.
    let msg = syntax(&format!("service:\n  - name: x\n{SERVICE}"));
    assert!(msg.contains("unknown field `service`"), "{msg}");
    assert!(msg.contains("at line 1 column 1"), "{msg}");
    let err = Config::from_yaml(&format!("holder: {{}}\nkube: true\n{SERVICE}"));
    assert!(err.is_err_and(|e| e.to_string().contains("unknown field `kube`")));
}

#[test]
fn wrong_types_are_named_with_their_position() {
    let msg = syntax(&SERVICE.replace("[echo-server]", "python3 -m http.server"));
    assert!(
        msg.contains("services[0].command: invalid type: string"),
        "{msg}"
    );
    assert!(msg.contains("line 6"), "{msg}");
    let msg = syntax(&format!("controller: [1]\n{SERVICE}"));
    assert!(msg.contains("controller: invalid type: sequence"), "{msg}");
    let msg = syntax("services: {name: echo}\n");
    assert!(
        msg.contains("services: invalid type: map, expected a sequence"),
        "{msg}"
    );
    let msg = syntax("services: [\n");
    assert!(msg.contains("line 2"), "{msg}");
    let err = Config::from_yaml("~").map_err(|e| e.to_string());
    assert!(err.is_err_and(|e| e.starts_with("config is not valid YAML for the schema: ")));
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("zenvoy-config-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("zenvoy.yaml");
    assert!(std::fs::write(&path, EXAMPLE).is_ok());
    let loaded = Config::load(&path);
    let _ = std::fs::remove_dir_all(&dir);
    let mut want = ok(EXAMPLE);
    want.resolve_paths(&dir);
    assert_eq!(loaded.ok(), Some(want));

    let missing = dir.join("missing.yaml");
    match Config::load(&missing) {
        Err(e @ ConfigError::Io { .. }) => {
            assert!(
                e.to_string().contains(&missing.display().to_string()),
                "{e}"
            )
        }
        other => panic!("expected ConfigError::Io, got {other:?}"),
    }
}

#[test]
fn reference_example_parses() {
    let doc = include_str!("../../../docs/config.md");
    let yaml = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next());
    let c = ok(yaml.unwrap_or_default());
    assert_eq!(c.services[0].policy.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.services[1].policy.idle_timeout, Duration::from_secs(30));
}

#[test]
fn http_services_get_domain_forms_and_need_the_http_listener() {
    let yaml = "
http:
  listen: 127.0.0.1:10080
services:
  - name: web
    protocol: http
    namespace: shop
    domains: [web.example.com, web]
    upstream: 127.0.0.1:18080
    command: [web-server]
";
    let c = ok(yaml);
    assert_eq!(c.http.as_ref().map(|h| h.listen.port()), Some(10080));
    let web = &c.services[0];
    assert_eq!(web.protocol, Protocol::Http);
    assert_eq!(
        web.listen, None,
        "an HTTP service needs no listener of its own"
    );
    assert_eq!(
        web.domains,
        [
            "web",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
            "web.example.com"
        ]
    );

    let without_http = yaml.replace("http:\n  listen: 127.0.0.1:10080\n", "");
    let (field, value, _) = invalid(&without_http);
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[0].protocol", "http")
    );
}

#[test]
fn protocol_listen_and_domains_rules() {
    let (field, value, msg) = invalid(&service_with("protocol: udp"));
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[0].protocol", "udp")
    );
    assert!(msg.contains("\"grpc\" or \"http2\""), "{msg}");

    let (field, _, _) = invalid(&service_with("domains: [a.example]"));
    assert_eq!(field, "services[0].domains", "a TCP service has no domains");

    let no_listen = SERVICE.replace("    listen: 127.0.0.1:10000\n", "");
    let (field, _, msg) = invalid(&no_listen);
    assert_eq!(field, "services[0].listen");
    assert!(msg.contains("required for a TCP service"), "{msg}");

    let two = "
http:
  listen: 127.0.0.1:10080
services:
  - name: a
    protocol: http
    domains: [shared.example]
    upstream: 127.0.0.1:18080
    command: [a]
  - name: b
    protocol: http
    domains: [shared.example]
    upstream: 127.0.0.1:18081
    command: [b]
";
    let (field, value, _) = invalid(two);
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[1].domains", "shared.example")
    );

    let clash = format!("http:\n  listen: 127.0.0.1:10000\n{SERVICE}");
    let (field, _, _) = invalid(&clash);
    assert_eq!(
        field, "services[0].listen",
        "http.listen and a service listen clash"
    );
}

#[test]
fn scrape_targets() {
    let yaml = format!(
        "scrape:\n  interval: 2s\n  targets:\n    - name: envoy-1\n      url: http://127.0.0.1:9901/stats/prometheus\n{SERVICE}"
    );
    let c = ok(&yaml);
    let s = c.scrape.expect("scrape section");
    assert_eq!(s.interval, Duration::from_secs(2));
    assert_eq!(s.targets[0].url, "http://127.0.0.1:9901/stats/prometheus");
    assert_eq!(ok(SERVICE).scrape, None, "no scrape section, no scraping");

    let bad_url = yaml.replace("http://127.0.0.1:9901", "https://127.0.0.1:9901");
    let (field, value, _) = invalid(&bad_url);
    assert_eq!(field, "scrape.targets[0].url");
    assert!(value.starts_with("https://"));

    let dup = format!(
        "scrape:\n  targets:\n    - {{name: a, url: 'http://h:1/m'}}\n    - {{name: a, url: 'http://h:2/m'}}\n{SERVICE}"
    );
    let (field, _, _) = invalid(&dup);
    assert_eq!(field, "scrape.targets[1].name");

    let (field, _, _) = invalid(&format!("scrape:\n  targets: []\n{SERVICE}"));
    assert_eq!(field, "scrape.targets");
    let (field, _, _) = invalid(&format!(
        "scrape:\n  interval: 0s\n  targets:\n    - {{name: a, url: 'http://h:1/m'}}\n{SERVICE}"
    ));
    assert_eq!(field, "scrape.interval");
}

#[test]
fn a_reload_changes_policies_and_nothing_else() {
    let old = ok(&format!("defaults:\n  idleTimeout: 5m\n{SERVICE}"));
    // Same document: nothing to do.
    assert_eq!(policy_changes(&old, &old), Ok(Vec::new()));
    // A new default reaches the service; a per-service override too.
    let new = ok(&format!(
        "defaults:\n  idleTimeout: 1s\n{SERVICE}    maxPending: 7\n"
    ));
    let changes = policy_changes(&old, &new).expect("reloadable");
    assert_eq!(changes.len(), 1);
    let (name, policy) = &changes[0];
    assert_eq!(name, "echo");
    assert_eq!(policy.idle_timeout, Duration::from_secs(1));
    assert_eq!(policy.max_pending, 7);
    // Wiring changes are named and refused.
    let moved = ok(&SERVICE.replace("127.0.0.1:18080", "127.0.0.1:18081"));
    let e = policy_changes(&old, &moved).expect_err("upstream moved");
    assert_eq!(e.field, "services[0].upstream");
    assert_eq!(
        e.to_string(),
        "services[0].upstream: changing it needs a restart (only the timeouts and limits of existing services reload)"
    );
    let more = ok(&format!(
        "{SERVICE}  - name: two\n    listen: 127.0.0.1:10001\n    upstream: 127.0.0.1:18082\n    command: [x]\n"
    ));
    assert_eq!(
        policy_changes(&old, &more)
            .expect_err("a new service")
            .field,
        "services"
    );
}

#[test]
fn ready_checks_and_their_errors() {
    let c = ok(SERVICE);
    let p = &c.services[0].process;
    assert_eq!(p.ready.check, ReadyCheck::Tcp, "tcp by default");
    assert_eq!(p.ready.interval, DEFAULT_READY_INTERVAL);
    assert_eq!(p.stop_signal, StopSignal::Term);
    assert_eq!(p.stop_grace, DEFAULT_STOP_GRACE);
    assert_eq!(p.log, PathBuf::from("zenvoy-run/logs/echo.log"));

    let c = ok(&service_with(
        "ready: {http: {path: /healthz, status: 204}, interval: 50ms}",
    ));
    assert_eq!(
        c.services[0].process.ready,
        Ready {
            check: ReadyCheck::Http {
                path: "/healthz".into(),
                status: Some(204)
            },
            interval: Duration::from_millis(50),
        }
    );
    let c = ok(&service_with(
        "ready: {command: [pg_isready, -h, 127.0.0.1]}",
    ));
    assert_eq!(
        c.services[0].process.ready.check,
        ReadyCheck::Command(vec!["pg_isready".into(), "-h".into(), "127.0.0.1".into()])
    );
    assert_eq!(
        ok(&service_with("ready: {http: {}}")).services[0]
            .process
            .ready
            .check,
        ReadyCheck::Http {
            path: "/".into(),
            status: None
        }
    );
    assert_eq!(
        ok(&service_with("ready: {postgres: {}}")).services[0]
            .process
            .ready
            .check,
        ReadyCheck::Postgres {
            user: "postgres".into(),
            database: "postgres".into()
        }
    );
    assert_eq!(
        ok(&service_with("ready: {postgres: {user: app}}")).services[0]
            .process
            .ready
            .check,
        ReadyCheck::Postgres {
            user: "app".into(),
            database: "app".into()
        },
        "the database defaults to the user, as in libpq"
    );
    let mut c = ok(&service_with("ready: {postgres: {dataDir: pg/data}}"));
    c.resolve_paths(Path::new("/etc/zenvoy"));
    assert_eq!(
        c.services[0].process.ready.check,
        ReadyCheck::PostgresDataDir(PathBuf::from("/etc/zenvoy/pg/data")),
        "relative to the file, as log and cwd"
    );

    for (extra, want_field) in [
        (
            "ready: {postgres: {user: ''}}",
            "services[0].ready.postgres.user",
        ),
        (
            "ready: {postgres: {dataDir: ''}}",
            "services[0].ready.postgres.dataDir",
        ),
        (
            "ready: {postgres: {dataDir: /data, user: app}}",
            "services[0].ready.postgres.user",
        ),
        (
            "ready: {postgres: {}, command: [pg_isready]}",
            "services[0].ready",
        ),
        ("ready: {tcp: {}, http: {}}", "services[0].ready"),
        (
            "ready: {http: {path: healthz}}",
            "services[0].ready.http.path",
        ),
        (
            "ready: {http: {status: 700}}",
            "services[0].ready.http.status",
        ),
        ("ready: {command: []}", "services[0].ready.command"),
        ("ready: {command: ['']}", "services[0].ready.command[0]"),
        ("ready: {interval: 0s}", "services[0].ready.interval"),
        ("stopSignal: SIGSTOP", "services[0].stopSignal"),
        ("stopGrace: soon", "services[0].stopGrace"),
        ("env: {'1X': a}", "services[0].env.1X"),
        ("env: {'A=B': a}", "services[0].env.A=B"),
        ("log: ''", "services[0].log"),
        ("cwd: ' '", "services[0].cwd"),
    ] {
        let (field, _, msg) = invalid(&service_with(extra));
        assert_eq!(field, want_field, "{extra}: {msg}");
    }
    // A typo in a check's name is the schema's error, with its line.
    let typo = Config::from_yaml(&service_with("ready: {htpp: {}}")).map_err(|e| e.to_string());
    assert!(typo.is_err_and(|e| e.contains("htpp") && e.contains("line")));
}

#[test]
fn process_options_env_cwd_stop_and_paths_relative_to_the_file() {
    let c = ok(&format!(
        "runDir: /var/lib/zenvoy\n{}",
        service_with(
            "env: {PGDATA: /data, LANG: C}\n    cwd: srv\n    stopSignal: INT\n    stopGrace: 30s"
        )
    ));
    let p = &c.services[0].process;
    assert_eq!(c.run_dir, PathBuf::from("/var/lib/zenvoy"));
    assert_eq!(p.log, PathBuf::from("/var/lib/zenvoy/logs/echo.log"));
    assert_eq!(p.env.get("PGDATA").map(String::as_str), Some("/data"));
    assert_eq!(p.stop_signal, StopSignal::Int);
    assert_eq!(p.stop_signal.name(), "SIGINT");
    assert_eq!(p.stop_grace, Duration::from_secs(30));
    assert_eq!(c.state_file(), PathBuf::from("/var/lib/zenvoy/state.json"));

    let mut c = ok(&service_with("cwd: srv\n    log: logs/echo.out"));
    c.resolve_paths(Path::new("/etc/zenvoy"));
    assert_eq!(c.run_dir, PathBuf::from("/etc/zenvoy/zenvoy-run"));
    let p = &c.services[0].process;
    assert_eq!(p.cwd, Some(PathBuf::from("/etc/zenvoy/srv")));
    assert_eq!(p.log, PathBuf::from("/etc/zenvoy/logs/echo.out"));

    // The admin addresses of the holder and Envoy `zenvoy run` starts are bound too.
    let (field, value, _) = invalid(&format!("holder: {{admin: 127.0.0.1:10000}}\n{SERVICE}"));
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("services[0].listen", "127.0.0.1:10000")
    );
    let (field, _, _) = invalid(&format!("envoy: {{admin: nowhere}}\n{SERVICE}"));
    assert_eq!(field, "envoy.admin");
    // Unwritten, their defaults bind nothing a controller run on its own would clash with.
    ok(&SERVICE.replace("127.0.0.1:10000", "127.0.0.1:9901"));

    // Kubernetes mode: how a process runs is not a services entry's business.
    let k = Config::from_yaml_for(
        "services:\n  - name: pg.db\n    ready: {tcp: {}}\n",
        Mode::Kubernetes,
    );
    assert!(
        matches!(&k, Err(ConfigError::Invalid { field, .. }) if field == "services[0].ready"),
        "{k:?}"
    );
}

#[test]
fn a_flow_style_document_is_its_block_style_twin() {
    let block = "
controller:
  listen: 127.0.0.1:28000
  admin: 127.0.0.1:28001
holder:
  address: 127.0.0.1:25001
  admin: 127.0.0.1:25002
envoy:
  admin: 127.0.0.1:29901
http:
  listen: 127.0.0.1:28080
services:
  - name: web
    protocol: grpc
    upstream: 127.0.0.1:28081
    command: [server, --port, '28081']
    ready:
      command: [probe, web]
      interval: 20ms
    env:
      MODE: test
    idleTimeout: 2s
";
    let flow = "{controller: {listen: 127.0.0.1:28000, admin: 127.0.0.1:28001}, \
        holder: {address: 127.0.0.1:25001, admin: 127.0.0.1:25002}, \
        envoy: {admin: 127.0.0.1:29901}, http: {listen: 127.0.0.1:28080}, \
        services: [{name: web, protocol: grpc, upstream: 127.0.0.1:28081, \
        command: [server, --port, '28081'], ready: {command: [probe, web], interval: 20ms}, \
        env: {MODE: test}, idleTimeout: 2s}]}";
    let (b, f) = (ok(block), ok(flow));
    assert_eq!(b, f);
    assert_eq!(b.controller.listen.port(), 28000);
    assert_eq!(b.holder.admin.port(), 25002);
    assert_eq!(b.envoy.admin.port(), 29901);
    assert_eq!(b.services[0].protocol, Protocol::Http2);
}
