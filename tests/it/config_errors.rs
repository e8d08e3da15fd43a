//! One test per validation rule (src/config/validate.rs and source.rs), through `load_with(.., Mode::Check)`:
//! each names the key path, and lines where the key is in the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::config::{load_with, ConfigError, Mode, Problem, ProblemKind, Snapshot};
use portcullis::tls::DevCa;

/// A temporary directory holding the config file (and, when asked, a certificate directory).
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Creates the certificate directory with one certificate for these names.
    fn with_certificate(&self, names: &[&str]) -> &Self {
        std::fs::create_dir_all(self.certs()).expect("certs dir");
        let ca = DevCa::generate("config test ca").expect("ca");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let (chain, key) = ca.issue(&names, Duration::from_secs(3600)).expect("issue");
        std::fs::write(self.certs().join("site.pem"), chain).expect("write");
        std::fs::write(self.certs().join("site.key"), key).expect("write");
        self
    }

    /// Writes `text` (with `{certs}` replaced) and loads it with `env`.
    fn load_env(
        &self,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Snapshot, ConfigError> {
        let text = text.replace("{certs}", &self.certs().display().to_string());
        std::fs::write(self.path(), text).expect("write config");
        load_with(&self.path(), env, Mode::Check)
    }

    fn load(&self, text: &str) -> Result<Snapshot, ConfigError> {
        self.load_env(text, &|_| None)
    }

    fn errors(&self, text: &str) -> ConfigError {
        match self.load(text) {
            Ok(_) => panic!("expected problems in:\n{text}"),
            Err(e) => e,
        }
    }
}

/// A valid file around the given `[services...]` text; self-signed so no certificate is needed in check mode.
fn with_services(services: &str) -> String {
    format!(
        "domain = \"example.test\"\n\n[server]\nhttps = \"127.0.0.1:0\"\n\n[tls]\ncerts_dir = \"{{certs}}\"\nself_signed = true\n\n{services}\n"
    )
}

/// The problem at `path`, which must exist and mention `needle`.
fn problem<'a>(err: &'a ConfigError, path: &str, needle: &str) -> &'a Problem {
    let p = err
        .problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}; got:\n{err}"));
    assert!(
        p.to_string().contains(needle),
        "problem at {path} is {p}, expected it to mention {needle:?}"
    );
    p
}

const WEB: &str = "[services.web]\nupstream = \"http://127.0.0.1:8080\"\nbypass_auth = true\n";

#[test]
fn a_minimal_file_is_valid() {
    let snap = Case::new().load(&with_services(WEB)).expect("valid");
    assert_eq!(snap.routes.len(), 1);
}

#[test]
fn missing_upstream() {
    let err = Case::new().errors(&with_services("[services.web]\nbypass_auth = true\n"));
    let p = problem(&err, "services.web.upstream", "is required");
    assert_eq!(p.line, Some(10), "the line of [services.web]");
}

#[test]
fn bad_upstream_scheme() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"ftp://127.0.0.1:21\"\n",
    ));
    let p = problem(&err, "services.web.upstream", "scheme");
    assert_eq!(p.line, Some(11));
}

#[test]
fn upstream_that_is_not_a_url() {
    let err = Case::new().errors(&with_services("[services.web]\nupstream = \"not a url\"\n"));
    problem(&err, "services.web.upstream", "not a url");
}

#[test]
fn upstream_with_a_path() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://127.0.0.1:8080/api\"\n",
    ));
    problem(&err, "services.web.upstream", "without a path");
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://127.0.0.1:8080/?a=b\"\n",
    ));
    problem(&err, "services.web.upstream", "without a path");
}

#[test]
fn upstream_with_credentials() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://u:p@127.0.0.1:8080\"\n",
    ));
    problem(&err, "services.web.upstream", "credentials");
}

#[test]
fn upstream_ca_file_with_a_plain_http_upstream() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://127.0.0.1:8080\"\nupstream_ca_file = \"/nonexistent/ca.pem\"\n",
    ));
    problem(&err, "services.web.upstream_ca_file", "https://");
}

#[test]
fn bad_host_pattern() {
    for bad in [
        "a.*.example.test",
        "https://web.example.test",
        "web.example.test:443",
        "bad host",
    ] {
        let err = Case::new().errors(&with_services(&format!(
            "{WEB}hosts = [\"ok.example.test\", {bad:?}]\n"
        )));
        problem(&err, "services.web.hosts.1", "host name");
    }
}

#[test]
fn empty_hosts_list() {
    let err = Case::new().errors(&with_services(&format!("{WEB}hosts = []\n")));
    problem(&err, "services.web.hosts", "at least one host");
}

#[test]
fn hosts_required_without_a_domain() {
    let text = with_services(WEB).replace("domain = \"example.test\"\n", "");
    let err = Case::new().errors(&text);
    problem(&err, "services.web.hosts", "domain");
}

#[test]
fn bad_domain() {
    let text =
        with_services(WEB).replace("domain = \"example.test\"", "domain = \"*.example.test\"");
    let err = Case::new().errors(&text);
    problem(&err, "domain", "DNS name");
}

#[test]
fn bad_service_name() {
    let err = Case::new().errors(&with_services(
        "[services.\"we b\"]\nupstream = \"http://127.0.0.1:8080\"\nhosts = [\"web.example.test\"]\n",
    ));
    problem(&err, "services.we b", "service names");
}

#[test]
fn no_services() {
    let err = Case::new().errors(&with_services(""));
    problem(&err, "services", "is required");
}

#[test]
fn duplicate_host_across_services() {
    let err = Case::new().errors(&with_services(
        "[services.a]\nupstream = \"http://127.0.0.1:1\"\nhosts = [\"x.example.test\"]\n\n[services.b]\nupstream = \"http://127.0.0.1:2\"\nhosts = [\"X.example.test\"]\n",
    ));
    problem(&err, "services.b.hosts", "already served by service `a`");
}

#[test]
fn missing_server_https() {
    let text = with_services(WEB).replace("https = \"127.0.0.1:0\"\n", "");
    let err = Case::new().errors(&text);
    problem(&err, "server.https", "is required");
}

#[test]
fn bad_listener_address() {
    let text = with_services(WEB).replace(
        "https = \"127.0.0.1:0\"",
        "https = \"localhost:443\"\nadmin = \"127.0.0.1\"",
    );
    let err = Case::new().errors(&text);
    problem(&err, "server.https", "ip:port");
    problem(&err, "server.admin", "ip:port");
}

#[test]
fn two_listeners_on_one_address() {
    let text = with_services(WEB).replace(
        "https = \"127.0.0.1:0\"",
        "https = \"127.0.0.1:8443\"\nadmin = \"127.0.0.1:8443\"",
    );
    let err = Case::new().errors(&text);
    problem(&err, "server.admin", "used by another listener");
}

#[test]
fn bad_trusted_proxies_cidr() {
    let text = with_services(WEB).replace(
        "https = \"127.0.0.1:0\"",
        "https = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"::1\", \"proxy.local\"]",
    );
    let err = Case::new().errors(&text);
    problem(&err, "server.trusted_proxies.1", "CIDR");
    problem(&err, "server.trusted_proxies.3", "CIDR");
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn bad_response_request_id() {
    let text = with_services(WEB).replace(
        "https = \"127.0.0.1:0\"",
        "https = \"127.0.0.1:0\"\nresponse_request_id = \"sometimes\"",
    );
    let err = Case::new().errors(&text);
    let p = problem(&err, "server.response_request_id", "`errors`");
    assert!(p.to_string().contains("sometimes"), "{p}");
    assert_eq!(err.problems.len(), 1, "{err}");
}

#[test]
fn token_cache_budget() {
    cache_budget_key("token_cache_mib", |a| a.token_cache_bytes());
}

#[test]
fn introspection_cache_budget() {
    cache_budget_key("introspection_cache_mib", |a| a.introspection_cache_bytes());
}

/// `[auth] <key>` is a budget in MiB: 16 by default, 0 turns the cache off, over 4096 or negative is a problem
/// naming the key.
fn cache_budget_key(key: &str, bytes: fn(&portcullis::auth::AuthSettings) -> u64) {
    let snap = Case::new().load(&with_services(WEB)).expect("valid");
    assert_eq!(bytes(&snap.auth), 16 << 20, "the default budget of {key}");
    let with = |mib: &str| format!("[auth]\n{key} = {mib}\n\n{WEB}");
    let snap = Case::new()
        .load(&with_services(&with("0")))
        .expect("0 turns it off");
    assert_eq!(bytes(&snap.auth), 0);
    let snap = Case::new().load(&with_services(&with("3"))).expect("3 MiB");
    assert_eq!(bytes(&snap.auth), 3 << 20);
    let err = Case::new().errors(&with_services(&with("5000")));
    let p = problem(&err, &format!("auth.{key}"), "at most 4096");
    assert!(p.to_string().contains("5000"), "{p}");
    assert_eq!(err.problems.len(), 1, "{err}");
    let err = Case::new().errors(&with_services(&with("-1")));
    assert!(err.to_string().contains(key), "{err}");
}

#[test]
fn zero_timeouts() {
    let text = with_services(&format!("{WEB}upstream_response_secs = 0\n")).replace(
        "https = \"127.0.0.1:0\"",
        "https = \"127.0.0.1:0\"\n\n[server.timeouts]\nidle_secs = 0\ntls_handshake_secs = 0\nrequest_header_secs = 0\nupstream_connect_secs = 0\nupstream_response_secs = 0",
    );
    let err = Case::new().errors(&text);
    for key in [
        "server.timeouts.idle_secs",
        "server.timeouts.tls_handshake_secs",
        "server.timeouts.request_header_secs",
        "server.timeouts.upstream_connect_secs",
        "server.timeouts.upstream_response_secs",
        "services.web.upstream_response_secs",
    ] {
        let p = problem(&err, key, "at least 1 second");
        assert!(p.line.is_some(), "{p}");
    }
}

#[test]
fn upstream_read_buffer_out_of_range() {
    for bad in ["0", "3", "1025"] {
        let text = with_services(&format!("{WEB}upstream_read_buffer_kib = {bad}\n"));
        let err = Case::new().errors(&text);
        let p = problem(
            &err,
            "services.web.upstream_read_buffer_kib",
            "from 4 to 1024",
        );
        assert!(p.line.is_some(), "{p}");
        assert_eq!(err.problems.len(), 1, "{err}");
    }
    for good in ["4", "32", "1024"] {
        let text = with_services(&format!("{WEB}upstream_read_buffer_kib = {good}\n"));
        let snap = Case::new().load(&text).expect("valid");
        assert_eq!(
            snap.routes[0].pool.read_buffer(),
            good.parse::<usize>().unwrap() * 1024
        );
    }
    // Negative and non-integer values are type errors that name the key.
    let err = Case::new().errors(&with_services(&format!(
        "{WEB}upstream_read_buffer_kib = -1\n"
    )));
    problem(&err, "services.web.upstream_read_buffer_kib", "");
}

#[test]
fn unknown_key_with_suggestion_and_line() {
    let text =
        with_services("[services.web]\nupstrem = \"http://127.0.0.1:8080\"\nbypass_auth = true\n")
            .replace(
                "https = \"127.0.0.1:0\"",
                "https = \"127.0.0.1:0\"\ntrusted_proxy = []",
            );
    let err = Case::new().errors(&text);
    let p = problem(&err, "services.web.upstrem", "did you mean `upstream`?");
    assert!(
        matches!(&p.kind, ProblemKind::UnknownKey { suggestion: Some(s), .. } if s == "upstream")
    );
    assert_eq!(p.line, Some(12));
    let p = problem(
        &err,
        "server.trusted_proxy",
        "did you mean `trusted_proxies`?",
    );
    assert_eq!(p.line, Some(5));
    let err = Case::new().errors(&format!("{}\n[bogus]\nx = 1\n", with_services(WEB)));
    let p = problem(&err, "bogus", "unknown key `bogus`");
    assert!(
        !p.to_string().contains("did you mean"),
        "nothing is close to `bogus`: {p}"
    );
}

#[test]
fn bypass_auth_nix_spelling_is_accepted() {
    let snap = Case::new()
        .load(&with_services(
            "[services.web]\nupstream = \"http://127.0.0.1:8080\"\nbypassAuth = true\n",
        ))
        .expect("valid");
    assert!(snap.routes[0].policy.is_bypass());
}

#[test]
fn wrong_type() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://127.0.0.1:8080\"\nbypass_auth = \"yes\"\n",
    ));
    problem(&err, "services.web.bypass_auth", "");
}

#[test]
fn syntax_error_has_a_line() {
    let err = Case::new().errors("domain = \"example.test\"\n[server\nhttps = 1\n");
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].line, Some(2), "{err}");
}

#[test]
fn unset_variable() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://127.0.0.1:${WEB_PORT}\"\nbypass_auth = true\n",
    ));
    let p = problem(&err, "services.web.upstream", "`WEB_PORT` is not set");
    assert_eq!(p.line, Some(11));
}

#[test]
fn variable_default_is_used_and_the_environment_wins() {
    let text = with_services(
        "[services.web]\nupstream = \"http://127.0.0.1:${WEB_PORT:-9999}\"\nbypass_auth = true\n",
    );
    let case = Case::new();
    let snap = case.load(&text).expect("default applies");
    assert_eq!(snap.routes[0].upstream.to_string(), "http://127.0.0.1:9999");
    let snap = case
        .load_env(&text, &|n| (n == "WEB_PORT").then(|| "7000".to_owned()))
        .expect("env applies");
    assert_eq!(snap.routes[0].upstream.to_string(), "http://127.0.0.1:7000");
}

#[test]
fn bad_variable_reference() {
    let err = Case::new().errors(&with_services(
        "[services.web]\nupstream = \"http://${1BAD}\"\n",
    ));
    problem(&err, "services.web.upstream", "bad `${...}` reference");
}

fn strict_tls(services: &str) -> String {
    with_services(services).replace("self_signed = true\n", "")
}

#[test]
fn certs_dir_is_required() {
    let text = with_services(WEB).replace("certs_dir = \"{certs}\"\nself_signed = true\n", "");
    let err = Case::new().errors(&text);
    problem(&err, "tls.certs_dir", "is required");
}

#[test]
fn missing_certs_dir() {
    let err = Case::new().errors(&strict_tls(WEB));
    problem(&err, "tls.certs_dir", "not a directory");
}

#[test]
fn empty_certs_dir_without_self_signed() {
    let case = Case::new();
    std::fs::create_dir(case.certs()).expect("mkdir");
    let err = case.errors(&strict_tls(WEB));
    problem(&err, "tls.certs_dir", "holds no certificate");
}

#[test]
fn certificate_without_key() {
    let case = Case::new();
    case.with_certificate(&["web.example.test"]);
    std::fs::remove_file(case.certs().join("site.key")).expect("rm");
    let err = case.errors(&strict_tls(WEB));
    problem(&err, "tls.certs_dir", "no matching key file");
}

#[test]
fn host_not_covered_by_any_certificate() {
    let case = Case::new();
    case.with_certificate(&["web.example.test", "*.apps.example.test"]);
    let services = format!(
        "{WEB}\n[services.apps]\nupstream = \"http://127.0.0.1:1\"\nhosts = [\"x.apps.example.test\", \"*.apps.example.test\", \"*.other.example.test\", \"a.b.apps.example.test\"]\n"
    );
    let err = case.errors(&strict_tls(&services));
    let covered: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(err.problems.len(), 2, "{covered:#?}");
    problem(&err, "services.apps.hosts", "covers *.other.example.test");
    assert!(
        covered
            .iter()
            .any(|p| p.contains("covers a.b.apps.example.test")),
        "{covered:#?}"
    );
    // With the certificate covering everything the file is valid.
    case.load(&strict_tls(WEB)).expect("covered");
}

#[test]
fn several_problems_are_reported_at_once_with_file_and_lines() {
    let case = Case::new();
    let text = "domain = \"example.test\"\n\n[server]\nhttps = \"127.0.0.1:0\"\ntrusted_proxies = [\"nope\"]\n\n[tls]\ncerts_dir = \"{certs}\"\nself_signed = true\n\n[services.a]\nupstream = \"ftp://x\"\n\n[services.b]\nupstrem = \"http://127.0.0.1:1\"\n";
    let err = case.errors(text);
    let lines: Vec<(String, Option<usize>)> = err
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.line))
        .collect();
    for expected in [
        ("server.trusted_proxies.0", Some(5)),
        ("services.a.upstream", Some(12)),
        ("services.b.upstrem", Some(15)),
        ("services.b.upstream", Some(14)),
    ] {
        assert!(
            lines
                .iter()
                .any(|(p, l)| p == expected.0 && *l == expected.1),
            "missing {expected:?} in {lines:?}"
        );
    }
    let shown = err.to_string();
    let file = case.path().display().to_string();
    assert!(
        shown.contains(&format!("{file}:line 5: server.trusted_proxies.0")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{file}:line 12: services.a.upstream")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{} problem(s)", err.problems.len())),
        "{shown}"
    );
}

#[test]
fn missing_file_names_it() {
    let err = load_with(
        Path::new("/nonexistent/portcullis.toml"),
        &|_| None,
        Mode::Check,
    )
    .expect_err("no file");
    assert!(
        err.to_string().contains("/nonexistent/portcullis.toml"),
        "{err}"
    );
}
