//! Question: what does one whole request cost inside the gateway — HTTP/1.1 parsing, routing, the policy check,
//! header rewrite, the pooled upstream exchange and the response — for a bypass route and for a refused
//! protected route? The client side is hyper over an in-memory duplex on a kept-alive connection; the upstream is
//! the echo backend in the same process (its `/small` answer is two bytes), reached over loopback TCP.

#![allow(missing_docs, clippy::expect_used)] // criterion's macros generate undocumented items

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portcullis::config::{self, Mode};
use portcullis::tls::DevCa;
use portcullis::Shared;

struct Setup {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let echo_addr = echo.local_addr().expect("echo addr");
    tokio::spawn(portcullis::echo::serve(echo, std::future::pending()));
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    let ca = DevCa::generate("bench").expect("ca");
    let (chain, key) = ca
        .issue(
            &["*.bench.test".to_owned()],
            std::time::Duration::from_secs(3600),
        )
        .expect("issue");
    std::fs::write(certs.join("bench.pem"), format!("{chain}{key}")).expect("write cert");
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"domain = "bench.test"
[server]
https = "127.0.0.1:0"
watch = false
[tls]
certs_dir = "{}"
[services.open]
upstream = "http://{echo_addr}"
bypass_auth = true
[services.closed]
upstream = "http://{echo_addr}"
"#,
            certs.display()
        ),
    )
    .expect("write config");
    let snapshot = config::load_with(&cfg, &|_| None, Mode::Serve).expect("valid config");
    let shared = Shared::new(snapshot, cfg);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let peer = "127.0.0.1:40000".parse().expect("addr");
    tokio::spawn(portcullis::server::serve_gateway_connection(
        server_io, peer, shared,
    ));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    Setup { sender, _dir: dir }
}

async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &'static str,
) -> usize {
    sender.ready().await.expect("ready");
    let req = http::Request::get("/small")
        .header("host", host)
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let setup = rt.block_on(setup());
    let sender = Arc::new(tokio::sync::Mutex::new(setup.sender));
    let mut g = c.benchmark_group("handle");
    for (name, host) in [
        ("bypass_route_small_body", "open.bench.test"),
        ("protected_route_refused", "closed.bench.test"),
    ] {
        let sender = Arc::clone(&sender);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let sender = Arc::clone(&sender);
                async move {
                    let mut s = sender.lock().await;
                    one(&mut s, host).await
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
