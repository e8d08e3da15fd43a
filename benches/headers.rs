//! Question: what does rewriting a typical browser request's headers cost on the way upstream (hop-by-hop
//! stripping incl. `Connection`-listed names, `X-Forwarded-*`, request id), for an untrusted and a trusted peer?

#![allow(missing_docs, clippy::expect_used)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use portcullis::proxy::{set_forwarding_headers, strip_hop_by_hop, Peer};

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.test"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/130.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        (
            "cookie",
            "_portcullis=abcdefghijklmnopqrstuvwxyz0123456789; theme=dark",
        ),
        ("x-forwarded-for", "203.0.113.7"),
        ("upgrade-insecure-requests", "1"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let host = HeaderValue::from_static("app.example.test");
    let rid = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let mut g = c.benchmark_group("header_rewrite");
    for (name, trusted) in [("untrusted_peer", false), ("trusted_peer", true)] {
        let ip: std::net::IpAddr = "192.0.2.10".parse().expect("ip");
        let peer = Peer {
            ip,
            ip_header: portcullis::proxy::ip_header_value(ip),
            trusted,
        };
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                browser_headers,
                |h| {
                    strip_hop_by_hop(h);
                    set_forwarding_headers(h, peer.clone(), &host, &rid);
                    black_box(h.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
