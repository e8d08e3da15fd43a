//! Deployment and live operations: `portcullis healthcheck`, systemd readiness notifications, the admin
//! `/config` summary and `check --against`, and the recipes in `deploy/` (container, Kubernetes, systemd, Grafana)
//! checked against the code they describe.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis::tls::DevCa;

use crate::harness::{refused_addr, write_certificate, TestGateway, DOMAIN};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The binary, with no configuration or log filter inherited from the test's environment.
fn portcullis() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut tokio::process::Command) -> (Output, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("portcullis finished within 30 s")
        .expect("run portcullis");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[tokio::test]
async fn healthcheck_exits_zero_on_ready_and_one_with_a_reason_otherwise() {
    let gw = TestGateway::new()
        .service(
            "app",
            "upstream = \"http://127.0.0.1:9\"\nbypass_auth = true",
        )
        .spawn()
        .await
        .unwrap();

    let (out, stdout, stderr) =
        output(portcullis().args(["healthcheck", "--url", &gw.admin_url("/readyz")])).await;
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    assert!(stdout.contains("200"), "{stdout}");

    // Without --url, the admin address comes from the config (a wildcard listener is probed on loopback).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    let admin_port = gw.addrs.admin.unwrap().port();
    std::fs::write(
        &config,
        format!("[server]\nhttps = \"0.0.0.0:8443\"\nadmin = \"${{ADMIN_IP}}:{admin_port}\"\n"),
    )
    .unwrap();
    let (out, stdout, stderr) = output(
        portcullis()
            .arg("healthcheck")
            .env("PORTCULLIS_CONFIG", &config)
            .env("ADMIN_IP", "0.0.0.0"),
    )
    .await;
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{admin_port}/readyz")),
        "{stdout}"
    );

    // A non-200 answer and no answer both exit 1 with one line saying why.
    let (out, _, stderr) =
        output(portcullis().args(["healthcheck", "--url", &gw.admin_url("/nope")])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");

    let refused = refused_addr().await.unwrap();
    let (out, _, stderr) =
        output(portcullis().args(["healthcheck", "--url", &format!("http://{refused}/readyz")]))
            .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to {refused}")),
        "{stderr}"
    );

    // A config without an admin listener is a clear error, not a probe of some default.
    std::fs::write(&config, "[server]\nhttps = \"127.0.0.1:8443\"\n").unwrap();
    let (out, _, stderr) =
        output(portcullis().args(["healthcheck", "--config"]).arg(&config)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("server.admin"), "{stderr}");
    gw.shutdown().await.unwrap();
}

/// Kills the gateway process if the test fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Reads datagrams until one contains every `needle`; returns everything received so far.
fn receive_until(socket: &UnixDatagram, needles: &[&str], seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 4096];
    loop {
        if seen
            .iter()
            .any(|m| needles.iter().all(|n| m.lines().any(|l| l.starts_with(n))))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no notification with {needles:?}; got {seen:?}"
        );
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn sd_notify_reports_ready_reloading_and_stopping() {
    crate::harness::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = DevCa::generate("notify test ca").unwrap();
    write_certificate(&ca, &certs, "wild", &[format!("*.{DOMAIN}")]).unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"{DOMAIN}\"\n\n[server]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nwatch = false\nshutdown_grace_secs = 2\n\n[tls]\ncerts_dir = {:?}\n\n[services.app]\nupstream = \"http://127.0.0.1:9\"\nbypass_auth = true\n",
            certs.display().to_string()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &socket_path)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let mut seen = Vec::new();

    receive_until(
        &socket,
        &["READY=1", "STATUS=serving 1 services"],
        &mut seen,
    );
    seen.clear();

    signal(pid, "HUP");
    receive_until(&socket, &["RELOADING=1", "MONOTONIC_USEC="], &mut seen);
    receive_until(&socket, &["READY=1"], &mut seen);
    let reloading = seen.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(reloading < ready, "READY=1 before RELOADING=1: {seen:?}");
    seen.clear();

    signal(pid, "TERM");
    receive_until(&socket, &["STOPPING=1"], &mut seen);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn admin_config_summarizes_the_running_snapshot_without_secrets() {
    let gw = TestGateway::new()
        .service("media", "upstream = \"http://127.0.0.1:16366\"\nbypassAuth = true")
        .service(
            "grafana",
            "upstream = \"http://127.0.0.1:3000\"\nhosts = [\"grafana.example.test\"]\nallow_groups = [\"admins\"]",
        )
        .spawn()
        .await
        .unwrap();
    // An issuer whose shared secret must never show up.
    let secret = "s3cret-hmac-key-that-is-at-least-32-bytes-long";
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    gw.write_config(&format!(
        "{text}\n[[auth.issuers]]\nname = \"local\"\nissuer = \"https://auth.example.test\"\naudiences = [\"portcullis\"]\nsecret = \"{secret}\"\n"
    ))
    .unwrap();
    gw.reload().await.unwrap();

    let resp = reqwest::get(gw.admin_url("/config")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body = resp.text().await.unwrap();
    assert!(!body.contains(secret), "{body}");
    let summary: portcullis::config::Summary = serde_json::from_str(&body).unwrap();
    let snapshot = gw.shared.snapshot.load_full();
    assert_eq!(summary.hash, snapshot.hash);
    assert_eq!(summary, portcullis::config::Summary::of(&snapshot));
    let names: Vec<&str> = summary.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["grafana", "media"]);
    let media = &summary.services[1];
    assert_eq!(media.hosts, ["media.example.test"]);
    assert_eq!(media.upstream, "http://127.0.0.1:16366");
    assert_eq!(media.policy, "bypass");
    assert!(
        summary.services[0].policy.contains("groups admins"),
        "{:?}",
        summary.services[0]
    );
    // Only on the admin listener.
    assert_eq!(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!(
                "http://127.0.0.1:{}/config",
                gw.addrs.http.unwrap().port()
            ))
            .send()
            .await
            .unwrap()
            .status(),
        308
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_against_prints_what_a_reload_would_change() {
    let gw = TestGateway::new()
        .service(
            "a",
            "upstream = \"http://127.0.0.1:1001\"\nbypass_auth = true",
        )
        .service(
            "b",
            "upstream = \"http://127.0.0.1:1002\"\nbypass_auth = true",
        )
        .service(
            "c",
            "upstream = \"http://127.0.0.1:1003\"\nbypass_auth = true",
        )
        .spawn()
        .await
        .unwrap();
    let admin = gw.admin_url("");

    // The running file itself: nothing would change.
    let (out, stdout, stderr) = output(
        portcullis()
            .args(["check", "--config"])
            .arg(&gw.config_path)
            .args(["--against", &admin]),
    )
    .await;
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    assert!(
        stdout.contains("no changes: the candidate is the running file"),
        "{stdout}"
    );

    let mut candidate = gw.config.clone();
    candidate
        .remove_service("a")
        .service("b", "upstream = \"http://127.0.0.1:2002\"\nbypass_auth = true")
        .service(
            "c",
            "upstream = \"http://127.0.0.1:1003\"\nhosts = [\"c.example.test\", \"see.example.test\"]",
        )
        .service("d", "upstream = \"http://127.0.0.1:1004\"\nbypassAuth = true");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("candidate.toml");
    std::fs::write(&path, candidate.render(&gw.certs_dir)).unwrap();
    let (out, stdout, stderr) = output(
        portcullis()
            .args(["check", "--config"])
            .arg(&path)
            .args(["--against", &admin]),
    )
    .await;
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    let changes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(['+', '-', '~', '!']))
        .collect();
    assert_eq!(
        changes,
        [
            "- service a: hosts a.example.test would no longer be served",
            "~ service b: upstream http://127.0.0.1:1002 -> http://127.0.0.1:2002",
            "~ service c: hosts c.example.test -> c.example.test, see.example.test",
            "~ service c: policy \"bypass\" -> \"auth: any user\"",
            "+ service d: hosts d.example.test; upstream http://127.0.0.1:1004; policy bypass",
        ],
        "{stdout}"
    );
    assert!(stdout.contains("5 changes"), "{stdout}");
    // Nothing was applied.
    assert_eq!(gw.shared.snapshot.load().routes.len(), 3);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_against_fails_on_an_invalid_file_or_an_unreachable_instance() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nhttps = \"127.0.0.1:0\"\nbypas = 1\n").unwrap();
    let refused = refused_addr().await.unwrap();
    let (out, _, stderr) = output(
        portcullis()
            .args(["check", "--config"])
            .arg(&bad)
            .args(["--against", &format!("http://{refused}")]),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("server.bypas"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "domain = \"example.test\"\n[server]\nhttps = \"127.0.0.1:0\"\n[tls]\ncerts_dir = \"certs\"\nself_signed = true\n[services.a]\nupstream = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let (out, stdout, stderr) = output(
        portcullis()
            .args(["check", "--config"])
            .arg(&good)
            .args(["--against", &format!("http://{refused}")]),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stderr.contains("cannot fetch the running configuration")
            && stderr.contains(&refused.to_string()),
        "{stderr}"
    );
}

/// Stages of a Dockerfile: (`FROM` line, instructions with continuation lines joined).
fn dockerfile_stages(text: &str) -> Vec<(String, Vec<String>)> {
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let instruction = std::mem::take(&mut current);
        if instruction.to_ascii_uppercase().starts_with("FROM ") {
            stages.push((instruction, Vec::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push(instruction);
        } else {
            // ARG before the first FROM is allowed.
            assert!(instruction.starts_with("ARG "), "{instruction}");
        }
    }
    stages
}

#[test]
fn dockerfile_is_multi_stage_static_non_root_with_a_healthcheck() {
    let text = read("deploy/container/Dockerfile");
    let stages = dockerfile_stages(&text);
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (build_from, build) = &stages[0];
    let (final_from, last) = stages.last().unwrap();
    let alias = build_from
        .split_whitespace()
        .last()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        build_from.to_ascii_uppercase().contains(" AS "),
        "{build_from}"
    );

    // The builder compiles a static musl binary.
    let build_text = build.join("\n");
    assert!(
        build_text.contains("unknown-linux-musl")
            && build_text.contains("cargo build --release --locked"),
        "{build_text}"
    );
    // The runtime is a static image (no libc, no shell) and never root.
    assert!(
        final_from.contains("distroless/static") || final_from.contains("scratch"),
        "{final_from}"
    );
    let user = last
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("final stage sets USER");
    assert!(!matches!(user.trim(), "root" | "0" | "0:0"), "USER {user}");
    // The binary the healthcheck runs is the one copied from the builder, and the builder produces it.
    let copy = last
        .iter()
        .find(|i| {
            i.starts_with(&format!("COPY --from={alias} "))
                && i.trim_end().ends_with(" /portcullis")
        })
        .expect("COPY --from=<builder> ... /portcullis");
    let source = copy.split_whitespace().rev().nth(1).unwrap();
    assert!(
        build_text.contains(source),
        "{source} is not made by the builder"
    );
    let healthcheck = last
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    assert!(
        healthcheck
            .replace(' ', "")
            .contains(r#"CMD["/portcullis","healthcheck"]"#),
        "{healthcheck}"
    );
    let has = |prefix: &str| last.iter().any(|i| i.starts_with(prefix));
    assert!(has("EXPOSE "), "EXPOSE");
    assert!(
        has("ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml"),
        "config path"
    );
    assert!(has(r#"ENTRYPOINT ["/portcullis"]"#), "ENTRYPOINT");
    // The default configuration copied into the image exists and is valid.
    let config_copy = last
        .iter()
        .find(|i| i.ends_with(" /etc/portcullis/portcullis.toml"))
        .expect("a default config");
    let config_source = config_copy.split_whitespace().rev().nth(1).unwrap();
    assert!(repo(config_source).is_file(), "{config_source}");
}

/// Runs `check` on `text` with the given environment and asserts it is valid.
fn assert_check_passes(text: &str, env: &[(&str, &Path)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .arg("check")
        .arg("--config")
        .arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n--\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of a `key: |` block scalar in a YAML file (our manifests' layout: block indented by four spaces).
fn yaml_block(text: &str, key: &str) -> String {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let mut out = String::new();
    for line in lines {
        if !line.trim().is_empty() && !line.starts_with("    ") {
            break;
        }
        out.push_str(line.strip_prefix("    ").unwrap_or(""));
        out.push('\n');
    }
    out
}

#[test]
fn kubernetes_configmap_config_passes_check() {
    let manifest = read("deploy/k8s/configmap.yaml");
    let toml = yaml_block(&manifest, "portcullis.toml");
    // Lay out what the pod mounts (the TLS secret and the secrets volume, see deployment.yaml) in a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    let ca = DevCa::generate("k8s test ca").unwrap();
    let (chain, key) = ca
        .issue(
            &["example.com".to_owned(), "*.example.com".to_owned()],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(tls.join("example.com.crt"), chain).unwrap();
    std::fs::write(tls.join("example.com.key"), key).unwrap();
    std::fs::write(secrets.join("client_secret"), "from-the-secret\n").unwrap();
    let deployment = read("deploy/k8s/deployment.yaml");
    for mount in ["/var/lib/portcullis/tls", "/run/secrets/portcullis"] {
        assert!(toml.contains(mount), "config does not use {mount}");
        assert!(
            deployment.contains(&format!("mountPath: {mount}")),
            "deployment does not mount {mount}"
        );
    }
    let toml = toml
        .replace("/var/lib/portcullis/tls", &tls.display().to_string())
        .replace("/run/secrets/portcullis", &secrets.display().to_string());
    let stdout = assert_check_passes(&toml, &[]);
    assert!(stdout.contains("media.example.com"), "{stdout}");
    // Shared sessions are shown but not configured until the gateway has the key.
    assert!(manifest.contains("# store = \"redis://portcullis-redis:6379\""));
}

#[test]
fn systemd_and_container_example_configs_pass_check() {
    // systemd: secrets come from LoadCredential= via ${CREDENTIALS_DIRECTORY}.
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("client_secret"), "from-a-credential\n").unwrap();
    let text = read("deploy/systemd/portcullis.toml");
    assert!(text.contains("client_secret_file = \"${CREDENTIALS_DIRECTORY}/client_secret\""));
    assert_check_passes(&text, &[("CREDENTIALS_DIRECTORY", creds.path())]);
    let unit = read("deploy/systemd/portcullis.service");
    assert!(unit.contains("LoadCredential=client_secret:"), "{unit}");

    let container = read("deploy/container/portcullis.toml");
    assert_check_passes(&container, &[]);
}

#[test]
fn systemd_unit_is_notify_type_and_hardened() {
    let unit = read("deploy/systemd/portcullis.service");
    let directives: BTreeSet<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=portcullis",
        "ConfigurationDirectory=portcullis",
        "SystemCallFilter=@system-service",
    ] {
        assert!(directives.contains(wanted), "missing {wanted}");
    }
    assert!(
        directives
            .iter()
            .any(|d| d.starts_with("RestrictAddressFamilies=") && d.contains("AF_UNIX")),
        "RestrictAddressFamilies must keep AF_UNIX for sd_notify and the journal"
    );
}

/// The metric families defined in src/metrics.rs (the values of its `pub const ...: &str` items).
fn defined_metrics() -> BTreeSet<String> {
    read("src/metrics.rs")
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect()
}

/// Every `portcullis_[a-z_]+` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_dashboard_uses_only_defined_metrics() {
    let text = read("deploy/grafana/portcullis-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 7, "{exprs:?}");
    let defined = defined_metrics();
    let mut used = BTreeSet::new();
    for name in metric_names(&text) {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        assert!(
            defined.contains(&family),
            "{name} is not a metric of src/metrics.rs ({defined:?})"
        );
        used.insert(family);
    }
    // Every metric the gateway exports has a panel.
    assert_eq!(used, defined);
}
