//! Question: what does opening the session cookie cost on every browser request — finding ours in the `Cookie`
//! header of a typical browser (several cookies), then either remembering that its value verified before
//! (`valid`, a browser's every request after its first) or decoding it and checking its HMAC-SHA256 signature
//! (`valid_first_seen`) — and what does a tampered cookie cost (it must be refused just as cheaply)? And what does
//! taking our cookies out of the header cost before the request goes upstream, when ours is among the browser's
//! cookies and when only other applications' cookies are there (a bypass or Bearer request from a browser)?

#![allow(missing_docs, clippy::expect_used)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
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
    let secret = Secret::new("bench-session-key-bench-session-key-0123456789");
    let keys = CookieKeys::new(&secret, "_portcullis".to_owned());
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
    // New keys (an empty memory of verified values) for every call, made and dropped outside the timing.
    g.bench_function("valid_first_seen", |b| {
        b.iter_batched(
            || CookieKeys::new(&secret, "_portcullis".to_owned()),
            |k| {
                let id = k.session_id(black_box(&good));
                (k, id)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("tampered", |b| {
        b.iter(|| keys.session_id(black_box(&tampered)))
    });
    g.finish();

    // A browser that holds twenty cookies of other applications on the domain (about 1 KiB).
    let others: Vec<String> = (0..20)
        .map(|i| format!("app{i}_pref=v{i}-0123456789abcdefghijklmnopqrstuvwxyz"))
        .collect();
    let mut g = c.benchmark_group("session_cookie_strip");
    for (name, field) in [
        (
            "ours_among_others",
            format!("{}; {pair}", others.join("; ")),
        ),
        ("others_only", others.join("; ")),
    ] {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&field).expect("header value"));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || h.clone(),
                |h| keys.strip_from_request(black_box(h)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
