//! Question: what does opening the session cookie cost on every browser request — parsing the `Cookie` header
//! of a typical browser (several cookies) and checking the HMAC-SHA256 signature of ours — and what does a
//! tampered cookie cost (it must be refused just as cheaply)?

#![allow(missing_docs, clippy::expect_used)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{header::COOKIE, HeaderMap, HeaderValue};
use portcullis::auth::CookieKeys;
use portcullis::config::Secret;

fn headers_with(cookie_pair: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let value = format!("theme=dark; _ga=GA1.2.1234567890.1700000000; {cookie_pair}; lang=en");
    h.insert(COOKIE, HeaderValue::from_str(&value).expect("header value"));
    h
}

fn bench(c: &mut Criterion) {
    let keys = CookieKeys::new(
        &Secret::new("bench-session-key-bench-session-key-0123456789"),
        "_portcullis".to_owned(),
    );
    let set = keys.session_cookie(
        "Q2hhbmdlIG1lOiBhIHJhbmRvbSBzZXNzaW9uIGlkIQ",
        Some("example.test"),
        Duration::from_secs(3600),
    );
    let pair = set.split(';').next().expect("cookie pair").to_owned();
    let good = headers_with(&pair);
    let tampered = headers_with(&pair.replacen('Q', "R", 1));
    let mut g = c.benchmark_group("session_cookie_open");
    g.bench_function("valid", |b| b.iter(|| keys.session_id(black_box(&good))));
    g.bench_function("tampered", |b| {
        b.iter(|| keys.session_id(black_box(&tampered)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
