//! Per-service access policy: who may reach a service, path rules, CORS preflight, which issuers and audiences
//! it trusts. Built from the `[services.NAME]` keys at config load; deciding is pure (no I/O).
//!
//! Rules are matched on every normalized reading of the path (see `path`), and the most restrictive outcome
//! among them applies, so no encoding of a path gets past a rule that its plain form would not pass. Bypass
//! rules match case-sensitively (only the exact form escapes authentication); allow and deny rules match
//! ASCII case-insensitively (so `/ADMIN` cannot dodge a rule for `/admin` on a case-insensitive backend).

use std::fmt;
use std::sync::Arc;

use http::Method;

use super::claims::{claim_holds, ClaimPath};
use super::error::DenyReason;
use super::identity::{build_identity_headers, Identity, IdentityHeaders};
use super::path::PathPattern;
use super::settings::{AuthSettings, Issuer};
use crate::config::file::{FileOneOrMany, FileRule, FileService};
use crate::config::{ProblemKind, Problems};

/// Per-service access policy.
#[derive(Debug)]
pub struct ServicePolicy {
    pub(crate) name: String,
    pub(crate) bypass: bool,
    pub(crate) access: Access,
    pub(crate) audiences: Option<Vec<String>>,
    /// `None`: every configured issuer.
    pub(crate) issuers: Option<Vec<Arc<Issuer>>>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) cors_bypass: bool,
    pub(crate) groups_claim: Option<ClaimPath>,
    pub(crate) pass_authorization: bool,
    pub(crate) headers: IdentityHeaders,
}

/// Which part of a policy made a decision (logged as `auth.rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef {
    /// The service-level keys.
    Service,
    /// `rules[i]`.
    Rule(usize),
    /// `cors_preflight = "bypass"`.
    CorsPreflight,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Service => f.write_str("service"),
            RuleRef::Rule(i) => write!(f, "rules.{i}"),
            RuleRef::CorsPreflight => f.write_str("cors_preflight"),
        }
    }
}

/// Allow conditions: any of users/groups/emails (when any is set), and every required claim.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    users: Vec<String>,
    groups: Vec<String>,
    emails: Vec<EmailPattern>,
    claims: Vec<(ClaimPath, Vec<String>)>,
}

#[derive(Debug, Clone)]
enum EmailPattern {
    Exact(String),
    Domain(String),
}

/// One path rule.
#[derive(Debug)]
pub(crate) struct Rule {
    paths: Vec<PathPattern>,
    methods: Option<Vec<Method>>,
    policy: RulePolicy,
}

#[derive(Debug)]
enum RulePolicy {
    Bypass,
    Deny,
    /// `None`: the service's allow keys apply.
    Allow(Option<Access>),
}

/// What the policy requires for one request.
#[derive(Debug)]
pub(crate) enum Requirement<'a> {
    /// Admit anonymously.
    Anonymous(RuleRef),
    /// Refuse.
    Deny(RuleRef),
    /// An identity satisfying every listed access.
    Identity(Vec<(RuleRef, &'a Access)>),
}

impl ServicePolicy {
    /// Whether every request to this service is admitted without authentication (`bypass_auth = true` and no
    /// path rules). Identity headers must still be stripped with [`super::apply_identity`].
    pub fn is_bypass(&self) -> bool {
        self.bypass && self.rules.is_empty()
    }

    /// Whether the client's `Authorization` header is passed upstream.
    pub fn passes_authorization(&self) -> bool {
        self.pass_authorization
    }

    /// One line for `portcullis check`'s table.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.bypass {
            parts.push("bypass".into());
        } else {
            let a = &self.access;
            let mut who = Vec::new();
            if !a.users.is_empty() {
                who.push(format!("users {}", a.users.join(",")));
            }
            if !a.groups.is_empty() {
                who.push(format!("groups {}", a.groups.join(",")));
            }
            if !a.emails.is_empty() {
                let e: Vec<String> = a
                    .emails
                    .iter()
                    .map(|e| match e {
                        EmailPattern::Exact(s) => s.clone(),
                        EmailPattern::Domain(d) => format!("*@{d}"),
                    })
                    .collect();
                who.push(format!("emails {}", e.join(",")));
            }
            if who.is_empty() {
                who.push("any user".into());
            }
            if !a.claims.is_empty() {
                let c: Vec<&str> = a.claims.iter().map(|(p, _)| p.as_str()).collect();
                who.push(format!("claims {}", c.join(",")));
            }
            parts.push(format!("auth: {}", who.join("; ")));
            if let Some(iss) = &self.issuers {
                let n: Vec<&str> = iss.iter().map(|i| i.name()).collect();
                parts.push(format!("issuers {}", n.join(",")));
            }
        }
        if !self.rules.is_empty() {
            parts.push(format!(
                "{} path rule{}",
                self.rules.len(),
                if self.rules.len() == 1 { "" } else { "s" }
            ));
        }
        if self.cors_bypass {
            parts.push("cors preflight bypass".into());
        }
        parts.join("; ")
    }

    /// The issuers this service trusts.
    pub(crate) fn trusted<'a>(&'a self, auth: &'a AuthSettings) -> &'a [Arc<Issuer>] {
        self.issuers.as_deref().unwrap_or(&auth.issuers)
    }

    /// What one request needs, over every normalized reading of its path (most restrictive wins).
    pub(crate) fn requirement(
        &self,
        method: &Method,
        forms: &[String],
        is_preflight: bool,
    ) -> Requirement<'_> {
        let mut needs: Vec<(RuleRef, &Access)> = Vec::new();
        let mut anonymous = None;
        for form in forms {
            let (rule, policy) = self.pick(method, form);
            match policy {
                Picked::Deny => return Requirement::Deny(rule),
                Picked::Bypass => anonymous = anonymous.or(Some(rule)),
                Picked::Allow(a) => {
                    if !needs.iter().any(|(r, _)| *r == rule) {
                        needs.push((rule, a));
                    }
                }
            }
        }
        if is_preflight && self.cors_bypass {
            return Requirement::Anonymous(RuleRef::CorsPreflight);
        }
        match anonymous {
            Some(rule) if needs.is_empty() => Requirement::Anonymous(rule),
            _ => Requirement::Identity(needs),
        }
    }

    fn pick(&self, method: &Method, path: &str) -> (RuleRef, Picked<'_>) {
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(ms) = &rule.methods {
                if !ms.contains(method) {
                    continue;
                }
            }
            let fold = !matches!(rule.policy, RulePolicy::Bypass);
            if rule.paths.iter().any(|p| p.matches(path, fold)) {
                let picked = match &rule.policy {
                    RulePolicy::Bypass => Picked::Bypass,
                    RulePolicy::Deny => Picked::Deny,
                    RulePolicy::Allow(Some(a)) => Picked::Allow(a),
                    RulePolicy::Allow(None) if self.bypass => Picked::Allow(&NO_CONDITIONS),
                    RulePolicy::Allow(None) => Picked::Allow(&self.access),
                };
                return (RuleRef::Rule(i), picked);
            }
        }
        if self.bypass {
            (RuleRef::Service, Picked::Bypass)
        } else {
            (RuleRef::Service, Picked::Allow(&self.access))
        }
    }
}

static NO_CONDITIONS: Access = Access {
    users: Vec::new(),
    groups: Vec::new(),
    emails: Vec::new(),
    claims: Vec::new(),
};

enum Picked<'a> {
    Bypass,
    Deny,
    Allow(&'a Access),
}

impl Access {
    fn is_open(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.emails.is_empty()
    }

    /// Whether `id` satisfies these conditions.
    ///
    /// # Errors
    /// The reason it does not.
    pub(crate) fn check(&self, id: &Identity) -> Result<(), DenyReason> {
        if !self.is_open() {
            let user_ok = self.users.iter().any(|u| *u == id.user || *u == id.subject);
            let group_ok = self.groups.iter().any(|g| id.groups.contains(g));
            // An address the issuer marks unverified proves nothing (OpenID Connect Core §5.1 `email_verified`).
            let email = id
                .email
                .as_deref()
                .filter(|_| id.email_verified != Some(false));
            let email_ok = email.is_some_and(|e| {
                self.emails.iter().any(|p| match p {
                    EmailPattern::Exact(x) => x.eq_ignore_ascii_case(e),
                    EmailPattern::Domain(d) => e
                        .rsplit_once('@')
                        .is_some_and(|(_, dom)| dom.eq_ignore_ascii_case(d)),
                })
            });
            if !(user_ok || group_ok || email_ok) {
                return Err(DenyReason::NotAllowed);
            }
        }
        for (path, wanted) in &self.claims {
            if !claim_holds(path.lookup(&id.claims), wanted) {
                return Err(DenyReason::ClaimMismatch {
                    claim: path.as_str().to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Builds a service's policy; key paths are `services.{name}.…`; named issuers must exist in `auth`.
pub fn build_service_policy(
    name: &str,
    svc: &FileService,
    auth: &AuthSettings,
    problems: &mut Problems,
) -> ServicePolicy {
    let base = format!("services.{name}");
    let bypass = svc.bypass_auth.unwrap_or(false);
    if bypass {
        for (key, set) in [
            ("allow_users", svc.allow_users.is_some()),
            ("allow_groups", svc.allow_groups.is_some()),
            ("allow_emails", svc.allow_emails.is_some()),
            ("require_claims", svc.require_claims.is_some()),
        ] {
            if set {
                problems.push(
                    format!("{base}.{key}"),
                    ProblemKind::Conflict {
                        reason: format!(
                            "`{key}` has no effect with `bypass_auth = true`; remove one (or put it in a path rule)"
                        ),
                    },
                );
            }
        }
    }
    let access = build_access(
        &base,
        svc.allow_users.as_deref(),
        svc.allow_groups.as_deref(),
        svc.allow_emails.as_deref(),
        svc.require_claims.as_ref(),
        problems,
    );
    let audiences = match &svc.audiences {
        Some(a) if a.is_empty() || a.iter().any(|s| s.is_empty()) => {
            problems.invalid(
                format!("{base}.audiences"),
                format!("{a:?}"),
                "audiences must be non-empty strings; omit the key to use the issuers' audiences",
            );
            None
        }
        other => other.clone(),
    };
    let issuers = svc.issuers.as_ref().map(|names| {
        if names.is_empty() {
            problems.invalid(
                format!("{base}.issuers"),
                "[]",
                "list at least one issuer; omit the key to trust every configured issuer",
            );
        }
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match auth.find(n) {
                Some(iss) => out.push(Arc::clone(iss)),
                None => {
                    let known: Vec<&str> = auth.issuers().map(Issuer::name).collect();
                    problems.invalid(
                        format!("{base}.issuers.{i}"),
                        n,
                        if known.is_empty() {
                            "no issuer is configured in [[auth.issuers]]".to_owned()
                        } else {
                            format!(
                                "no such issuer in [[auth.issuers]] (known: {})",
                                known.join(", ")
                            )
                        },
                    );
                }
            }
        }
        out
    });
    let cors_bypass = match svc.cors_preflight.as_deref() {
        None | Some("enforce") => false,
        Some("bypass") => true,
        Some(other) => {
            problems.invalid(
                format!("{base}.cors_preflight"),
                other,
                "expected `bypass` or `enforce`",
            );
            false
        }
    };
    let groups_claim = svc
        .groups_claim
        .as_deref()
        .and_then(|s| match ClaimPath::parse(s) {
            Ok(c) => Some(c),
            Err(reason) => {
                problems.invalid(format!("{base}.groups_claim"), s, reason);
                None
            }
        });
    let rules = svc
        .rules
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| build_rule(&format!("{base}.rules.{i}"), r, problems))
        .collect();
    let headers = build_identity_headers(
        &format!("{base}.identity_headers"),
        svc.identity_headers.as_ref(),
        problems,
    );
    ServicePolicy {
        name: name.to_owned(),
        bypass,
        access,
        audiences,
        issuers,
        rules,
        cors_bypass,
        groups_claim,
        pass_authorization: svc.pass_authorization.unwrap_or(false),
        headers,
    }
}

fn build_access(
    base: &str,
    users: Option<&[String]>,
    groups: Option<&[String]>,
    emails: Option<&[String]>,
    claims: Option<&std::collections::BTreeMap<String, FileOneOrMany>>,
    problems: &mut Problems,
) -> Access {
    let mut list = |key: &str, v: Option<&[String]>| -> Vec<String> {
        let Some(v) = v else { return Vec::new() };
        if v.is_empty() {
            problems.invalid(
                format!("{base}.{key}"),
                "[]",
                "an empty list admits nobody through this key; remove it or list names",
            );
        }
        for (i, s) in v.iter().enumerate() {
            if s.trim().is_empty() {
                problems.invalid(format!("{base}.{key}.{i}"), s, "must not be empty");
            }
        }
        v.to_vec()
    };
    let users = list("allow_users", users);
    let groups = list("allow_groups", groups);
    let emails = list("allow_emails", emails)
        .into_iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let parsed = match e.split_once('@') {
                Some(("*", d)) if !d.is_empty() && !d.contains(['@', '*']) => {
                    Some(EmailPattern::Domain(d.to_owned()))
                }
                Some((l, d))
                    if !(l.is_empty()
                        || d.is_empty()
                        || l.contains('*')
                        || d.contains(['@', '*'])) =>
                {
                    Some(EmailPattern::Exact(e.clone()))
                }
                _ => None,
            };
            if parsed.is_none() && !e.trim().is_empty() {
                problems.invalid(
                    format!("{base}.allow_emails.{i}"),
                    &e,
                    "expected an address (`ann@example.com`) or a domain (`*@example.com`)",
                );
            }
            parsed
        })
        .collect();
    let claims = claims
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let path = match ClaimPath::parse(k) {
                Ok(p) => p,
                Err(reason) => {
                    problems.invalid(format!("{base}.require_claims"), k, reason);
                    return None;
                }
            };
            let values = match v {
                FileOneOrMany::One(s) => vec![s.clone()],
                FileOneOrMany::Many(m) => m.clone(),
            };
            if values.is_empty() {
                problems.invalid(
                    format!("{base}.require_claims.{k}"),
                    "[]",
                    "list at least one accepted value",
                );
                return None;
            }
            Some((path, values))
        })
        .collect();
    Access {
        users,
        groups,
        emails,
        claims,
    }
}

fn build_rule(path: &str, r: &FileRule, problems: &mut Problems) -> Option<Rule> {
    let before = problems.len();
    let paths = match &r.paths {
        None => {
            problems.push(
                format!("{path}.paths"),
                ProblemKind::Required {
                    hint: Some("e.g. paths = [\"/api/public/*\"]"),
                },
            );
            Vec::new()
        }
        Some(p) if p.is_empty() => {
            problems.invalid(format!("{path}.paths"), "[]", "list at least one path");
            Vec::new()
        }
        Some(p) => p
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match PathPattern::parse(s) {
                Ok(pat) => Some(pat),
                Err(reason) => {
                    problems.invalid(format!("{path}.paths.{i}"), s, reason);
                    None
                }
            })
            .collect(),
    };
    let methods = r.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            problems.invalid(
                format!("{path}.methods"),
                "[]",
                "list at least one method; omit the key for all methods",
            );
        }
        ms.iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let up = m.to_ascii_uppercase();
                match Method::from_bytes(up.as_bytes()) {
                    Ok(method) if !up.is_empty() => Some(method),
                    _ => {
                        problems.invalid(
                            format!("{path}.methods.{i}"),
                            m,
                            "not an HTTP method token",
                        );
                        None
                    }
                }
            })
            .collect()
    });
    let has_allow_keys = r.allow_users.is_some()
        || r.allow_groups.is_some()
        || r.allow_emails.is_some()
        || r.require_claims.is_some();
    let policy = match r.policy.as_deref() {
        Some(p @ ("bypass" | "deny")) => {
            if has_allow_keys {
                problems.push(
                    format!("{path}.policy"),
                    ProblemKind::Conflict {
                        reason: format!("allow keys have no effect with policy = \"{p}\""),
                    },
                );
            }
            if p == "bypass" {
                RulePolicy::Bypass
            } else {
                RulePolicy::Deny
            }
        }
        None | Some("allow") => {
            if has_allow_keys {
                RulePolicy::Allow(Some(build_access(
                    path,
                    r.allow_users.as_deref(),
                    r.allow_groups.as_deref(),
                    r.allow_emails.as_deref(),
                    r.require_claims.as_ref(),
                    problems,
                )))
            } else {
                RulePolicy::Allow(None)
            }
        }
        Some(other) => {
            problems.invalid(
                format!("{path}.policy"),
                other,
                "expected `allow`, `bypass` or `deny`",
            );
            return None;
        }
    };
    (problems.len() == before).then_some(Rule {
        paths,
        methods,
        policy,
    })
}
