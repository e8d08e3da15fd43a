//! What a running snapshot looks like from outside, and what would change between two of them.
//!
//! The admin listener serves a [`Summary`] as JSON at `/config`; `portcullis check --against` fetches it and diffs
//! it with a candidate file. A summary carries names, hosts, upstreams and policy descriptions only: never a
//! secret, a key, or anything read from a secret file.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::snapshot::Snapshot;

/// The running configuration, without secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The file the snapshot was loaded from.
    pub source: String,
    /// First 16 hex digits of the file's SHA-256.
    pub hash: String,
    /// Listener addresses as configured (a change needs a restart).
    pub listen: ListenSummary,
    /// Services in name order.
    pub services: Vec<ServiceSummary>,
}

/// Listener addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSummary {
    /// HTTPS.
    pub https: String,
    /// Plain HTTP, if on.
    pub http: Option<String>,
    /// Admin, if on.
    pub admin: Option<String>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The `[services.NAME]` name.
    pub name: String,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// `scheme://authority`.
    pub upstream: String,
    /// The policy as `portcullis check` prints it.
    pub policy: String,
}

impl Summary {
    /// Summarizes a snapshot.
    pub fn of(s: &Snapshot) -> Summary {
        Summary {
            source: s.source.display().to_string(),
            hash: s.hash.clone(),
            listen: ListenSummary {
                https: s.listen.https.to_string(),
                http: s.listen.http.map(|a| a.to_string()),
                admin: s.listen.admin.map(|a| a.to_string()),
            },
            services: s
                .routes
                .iter()
                .map(|r| ServiceSummary {
                    name: r.name.clone(),
                    hosts: r.hosts.iter().map(ToString::to_string).collect(),
                    upstream: r.upstream.to_string(),
                    policy: r.policy.describe(),
                })
                .collect(),
        }
    }

    /// What replacing `self` (running) by `next` (candidate) would change, services in name order.
    pub fn diff(&self, next: &Summary) -> Vec<Change> {
        let old: BTreeMap<&str, &ServiceSummary> =
            self.services.iter().map(|s| (s.name.as_str(), s)).collect();
        let new: BTreeMap<&str, &ServiceSummary> =
            next.services.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut changes = Vec::new();
        if self.listen != next.listen {
            changes.push(Change::Listeners {
                from: self.listen.clone(),
                to: next.listen.clone(),
            });
        }
        let names: std::collections::BTreeSet<&str> =
            old.keys().chain(new.keys()).copied().collect();
        for name in names {
            match (old.get(name), new.get(name)) {
                (None, Some(n)) => changes.push(Change::Added((*n).clone())),
                (Some(o), None) => changes.push(Change::Removed((*o).clone())),
                (Some(o), Some(n)) => {
                    if o.hosts != n.hosts {
                        changes.push(Change::Hosts {
                            service: name.to_owned(),
                            from: o.hosts.clone(),
                            to: n.hosts.clone(),
                        });
                    }
                    if o.upstream != n.upstream {
                        changes.push(Change::Upstream {
                            service: name.to_owned(),
                            from: o.upstream.clone(),
                            to: n.upstream.clone(),
                        });
                    }
                    if o.policy != n.policy {
                        changes.push(Change::Policy {
                            service: name.to_owned(),
                            from: o.policy.clone(),
                            to: n.policy.clone(),
                        });
                    }
                }
                (None, None) => {}
            }
        }
        changes
    }
}

/// One difference between the running and a candidate configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new service.
    Added(ServiceSummary),
    /// A service that would stop being served.
    Removed(ServiceSummary),
    /// Different host patterns.
    Hosts {
        /// Service name.
        service: String,
        /// Running.
        from: Vec<String>,
        /// Candidate.
        to: Vec<String>,
    },
    /// A different upstream.
    Upstream {
        /// Service name.
        service: String,
        /// Running.
        from: String,
        /// Candidate.
        to: String,
    },
    /// A different policy.
    Policy {
        /// Service name.
        service: String,
        /// Running.
        from: String,
        /// Candidate.
        to: String,
    },
    /// Different listener addresses: a reload does not apply them.
    Listeners {
        /// Running.
        from: ListenSummary,
        /// Candidate.
        to: ListenSummary,
    },
}

impl fmt::Display for ListenSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "https {}  http {}  admin {}",
            self.https,
            self.http.as_deref().unwrap_or("off"),
            self.admin.as_deref().unwrap_or("off")
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(s) => write!(
                f,
                "+ service {}: hosts {}; upstream {}; policy {}",
                s.name,
                s.hosts.join(", "),
                s.upstream,
                s.policy
            ),
            Change::Removed(s) => write!(
                f,
                "- service {}: hosts {} would no longer be served",
                s.name,
                s.hosts.join(", ")
            ),
            Change::Hosts { service, from, to } => write!(
                f,
                "~ service {service}: hosts {} -> {}",
                from.join(", "),
                to.join(", ")
            ),
            Change::Upstream { service, from, to } => {
                write!(f, "~ service {service}: upstream {from} -> {to}")
            }
            Change::Policy { service, from, to } => {
                write!(f, "~ service {service}: policy \"{from}\" -> \"{to}\"")
            }
            Change::Listeners { from, to } => write!(
                f,
                "! listeners: {from} -> {to} (not applied by a reload: needs a restart)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, upstream: &str, policy: &str) -> ServiceSummary {
        ServiceSummary {
            name: name.into(),
            hosts: vec![format!("{name}.example.test")],
            upstream: upstream.into(),
            policy: policy.into(),
        }
    }

    fn summary(services: Vec<ServiceSummary>) -> Summary {
        Summary {
            source: "a.toml".into(),
            hash: "00".into(),
            listen: ListenSummary {
                https: "127.0.0.1:8443".into(),
                http: None,
                admin: Some("127.0.0.1:9090".into()),
            },
            services,
        }
    }

    #[test]
    fn identical_summaries_have_no_changes() {
        let a = summary(vec![service("a", "http://x:1", "bypass")]);
        assert!(a.diff(&a.clone()).is_empty());
    }

    #[test]
    fn diff_lists_added_removed_and_changed_services_in_name_order() {
        let running = summary(vec![
            service("a", "http://x:1", "bypass"),
            service("b", "http://x:2", "auth: any user"),
        ]);
        let mut next = summary(vec![
            service("b", "http://x:3", "bypass"),
            service("c", "http://x:4", "bypass"),
        ]);
        next.listen.http = Some("127.0.0.1:8080".into());
        let lines: Vec<String> = running
            .diff(&next)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "! listeners: https 127.0.0.1:8443  http off  admin 127.0.0.1:9090 -> https 127.0.0.1:8443  http 127.0.0.1:8080  admin 127.0.0.1:9090 (not applied by a reload: needs a restart)",
                "- service a: hosts a.example.test would no longer be served",
                "~ service b: upstream http://x:2 -> http://x:3",
                "~ service b: policy \"auth: any user\" -> \"bypass\"",
                "+ service c: hosts c.example.test; upstream http://x:4; policy bypass",
            ]
        );
    }
}
