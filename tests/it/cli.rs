//! `portcullis check`: the resolved table on success, every problem and a non-zero exit on failure.

use std::process::Command;
use std::time::Duration;

use portcullis::tls::DevCa;

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.env_remove("PORTCULLIS_CONFIG").env_remove("RUST_LOG");
    cmd
}

#[test]
fn check_prints_the_routing_table_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    let ca = DevCa::generate("cli test ca").expect("ca");
    let (chain, key) = ca
        .issue(
            &[
                "*.example.test".to_owned(),
                "*.grafana2.example.test".to_owned(),
            ],
            Duration::from_secs(3600),
        )
        .expect("issue");
    std::fs::write(certs.join("wild.pem"), chain).expect("write");
    std::fs::write(certs.join("wild.key"), key).expect("write");
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"example.test\"\n\n[server]\nhttps = \"127.0.0.1:8443\"\n\n[tls]\ncerts_dir = {:?}\n\n[services.media]\nupstream = \"http://127.0.0.1:16366\"\nbypass_auth = true\n\n[services.grafana]\nupstream = \"http://127.0.0.1:3000\"\nhosts = [\"grafana.example.test\", \"*.grafana2.example.test\"]\n",
            certs.display().to_string()
        ),
    )
    .expect("write config");
    let out = portcullis()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run portcullis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let header = stdout
        .lines()
        .find(|l| l.starts_with("HOST"))
        .expect("table header");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["HOST", "SERVICE", "UPSTREAM", "POLICY"]);
    let row = |host: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("no row for {host} in:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let media = row("media.example.test");
    assert_eq!(
        &media[..4],
        [
            "media.example.test",
            "media",
            "http://127.0.0.1:16366",
            "bypass"
        ]
    );
    let grafana = row("grafana.example.test");
    assert_eq!(
        &grafana[..3],
        ["grafana.example.test", "grafana", "http://127.0.0.1:3000"]
    );
    assert!(grafana[3..].join(" ").starts_with("auth"), "{grafana:?}");
    row("*.grafana2.example.test");
}

#[test]
fn check_reports_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "domain = \"example.test\"\n\n[server]\nhttps = \"127.0.0.1:0\"\ntrusted_proxies = [\"nope\"]\n\n[tls]\ncerts_dir = \"/nonexistent/certs\"\n\n[services.a]\nupstream = \"ftp://x\"\n\n[services.b]\nupstrem = \"http://127.0.0.1:1\"\n",
    )
    .expect("write config");
    let out = portcullis()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run portcullis");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = config.display().to_string();
    for needle in [
        format!("{file}:line 5: server.trusted_proxies.0"),
        format!("{file}:line 8: tls.certs_dir"),
        format!("{file}:line 11: services.a.upstream"),
        format!("{file}:line 14: services.b.upstrem"),
        "did you mean `upstream`?".to_owned(),
        format!("{file}:line 13: services.b.upstream"),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in:\n{stderr}");
    }
}
