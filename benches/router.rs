//! Question: how long does the Host -> service lookup take with 1,000 services, exact and wildcard, for a hit on
//! an exact name, a hit on a wildcard, and a miss; and what does parsing the Host header add?

#![allow(missing_docs, clippy::expect_used)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::router::{Host, HostPattern, Router};

fn table() -> Router<usize> {
    let mut r = Router::default();
    for i in 0..1000 {
        let pattern = if i % 4 == 0 {
            format!("*.svc{i}.example.test")
        } else {
            format!("svc{i}.example.test")
        };
        let p = HostPattern::parse(&pattern).expect("valid pattern");
        r.insert(&p, Arc::new(i));
    }
    r
}

fn bench(c: &mut Criterion) {
    let r = table();
    let mut g = c.benchmark_group("router_1000_services");
    g.bench_function("exact_hit", |b| {
        b.iter(|| r.lookup(black_box("svc501.example.test")))
    });
    g.bench_function("wildcard_hit", |b| {
        b.iter(|| r.lookup(black_box("app.svc500.example.test")))
    });
    g.bench_function("miss", |b| {
        b.iter(|| r.lookup(black_box("nothing.example.org")))
    });
    g.bench_function("parse_host_and_lookup", |b| {
        b.iter(|| {
            let h = Host::parse(black_box("Svc501.Example.test:8443")).expect("valid host");
            r.lookup(h.as_str()).map(|v| **v)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
