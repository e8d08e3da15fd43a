//! Reload: new behaviour after a valid change, the old one kept after an invalid one, no failed request under
//! load, open WebSockets undisturbed, new certificates served, and file watching.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{refused_addr, wait_until, write_certificate, Echo, TestGateway};
use crate::protocols::{open_ws, ws_roundtrip};

fn bypass(upstream: &str) -> String {
    format!("upstream = {upstream:?}\nbypass_auth = true")
}

#[tokio::test]
async fn reload_adds_a_service() -> Result<()> {
    let echo = Echo::start().await?;
    let mut gw = TestGateway::new()
        .service("a", &bypass(&echo.url()))
        .spawn()
        .await?;
    assert_eq!(gw.status("b.example.test", "/").await?, 404);
    gw.update(|c| {
        c.service("b", &bypass(&echo.url()));
    })?;
    assert_eq!(
        gw.status("b.example.test", "/").await?,
        404,
        "nothing changes before the reload"
    );
    gw.reload().await?;
    assert_eq!(gw.status("b.example.test", "/").await?, 200);
    assert_eq!(gw.status("a.example.test", "/").await?, 200);
    Ok(())
}

#[tokio::test]
async fn reload_changes_an_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let dead = refused_addr().await?;
    let mut gw = TestGateway::new()
        .service("a", &bypass(&format!("http://{dead}")))
        .spawn()
        .await?;
    assert_eq!(gw.status("a.example.test", "/").await?, 502);
    gw.update(|c| {
        c.service("a", &bypass(&echo.url()));
    })?;
    gw.reload().await?;
    assert_eq!(gw.status("a.example.test", "/").await?, 200);
    Ok(())
}

#[tokio::test]
async fn invalid_reload_is_rejected_and_the_old_config_keeps_serving() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service("a", &bypass(&echo.url()))
        .spawn()
        .await?;
    let hash_before = gw.shared.snapshot.load().hash.clone();
    let mut broken = gw.config.clone();
    broken.service("a", "upstream = \"ftp://127.0.0.1:1\"\nbypass_auth = true");
    broken.service("b", &bypass(&echo.url()));
    gw.write_config(&broken.render(&gw.certs_dir))?;
    let err = gw
        .reload()
        .await
        .expect_err("an invalid config must be rejected");
    assert!(err.to_string().contains("services.a.upstream"), "{err}");
    assert_eq!(gw.shared.snapshot.load().hash, hash_before);
    assert_eq!(
        gw.status("a.example.test", "/").await?,
        200,
        "old upstream still used"
    );
    assert_eq!(
        gw.status("b.example.test", "/").await?,
        404,
        "nothing of the bad file applies"
    );
    // Not even TOML.
    gw.write_config("this is [not toml")?;
    assert!(gw.reload().await.is_err());
    assert_eq!(gw.status("a.example.test", "/").await?, 200);
    let metrics = gw.shared.metrics.encode();
    assert!(
        metrics.contains("portcullis_config_reloads_total{kind=\"failed\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_concurrent_load_fails_no_request() -> Result<()> {
    let echo = Echo::start().await?;
    let mut gw = TestGateway::new()
        .service("a", &bypass(&echo.url()))
        .spawn()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = gw.client.clone();
        let url = gw.url("a.example.test", &format!("/load/{t}"));
        let post = t % 2 == 0;
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let req = if post {
                    client.post(&url).body(vec![7u8; 4096])
                } else {
                    client.get(&url)
                };
                match req.send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.push(format!("body: {e}")),
                    },
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e}")),
                }
            }
            failures
        }));
    }
    for i in 0..5 {
        let seen = ok.load(Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(10), || {
                let ok = Arc::clone(&ok);
                async move { ok.load(Ordering::SeqCst) >= seen + 20 }
            })
            .await,
            "requests stopped making progress"
        );
        // Alternate between the direct and the relayed upstream, and add/remove a second service.
        let upstream = if i % 2 == 0 {
            echo.counted_url()
        } else {
            echo.url()
        };
        gw.update(|c| {
            c.service("a", &bypass(&upstream));
            if i % 2 == 0 {
                c.service("extra", &bypass(&upstream));
            } else {
                c.remove_service("extra");
            }
        })?;
        gw.reload().await?;
    }
    let seen = ok.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let ok = Arc::clone(&ok);
            async move { ok.load(Ordering::SeqCst) >= seen + 20 }
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await?);
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(echo.connections() > 0, "the reloaded upstream was used");
    let metrics = gw.shared.metrics.encode();
    assert!(
        metrics.contains("portcullis_config_reloads_total{kind=\"ok\"} 5"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn open_websocket_survives_a_reload() -> Result<()> {
    let echo = Echo::start().await?;
    let mut gw = TestGateway::new()
        .service("ws", &bypass(&echo.url()))
        .spawn()
        .await?;
    let mut ws = open_ws(&gw, "ws.example.test").await?;
    ws_roundtrip(&mut ws, Message::Text("before".into())).await?;
    // Point the service elsewhere and reload: the open tunnel keeps its upstream.
    let dead = refused_addr().await?;
    gw.update(|c| {
        c.service("ws", &bypass(&format!("http://{dead}")));
    })?;
    gw.reload().await?;
    assert_eq!(
        gw.status("ws.example.test", "/").await?,
        502,
        "the reload took effect"
    );
    ws_roundtrip(&mut ws, Message::Text("after".into())).await?;
    ws_roundtrip(&mut ws, Message::Binary(vec![1, 2, 3])).await?;
    ws.close(None).await?;
    Ok(())
}

#[tokio::test]
async fn certificate_added_to_the_directory_is_served_after_reload() -> Result<()> {
    let echo = Echo::start().await?;
    let mut gw = TestGateway::new()
        .certificate(&["a.example.test"])
        .service("a", &bypass(&echo.url()))
        .spawn()
        .await?;
    // Before: the default certificate (a.example.test only) is presented, which a client for c refuses.
    assert!(gw.tls_connect("c.example.test").await.is_err());
    write_certificate(&gw.ca, &gw.certs_dir, "c", &["c.example.test".to_owned()])?;
    gw.update(|c| {
        c.service("c", &bypass(&echo.url()));
    })?;
    gw.reload().await?;
    gw.tls_connect("c.example.test").await?;
    assert_eq!(gw.status("c.example.test", "/").await?, 200);
    assert_eq!(gw.status("a.example.test", "/").await?, 200);
    Ok(())
}

#[tokio::test]
async fn watched_config_file_change_is_picked_up() -> Result<()> {
    let echo = Echo::start().await?;
    let mut gw = TestGateway::new()
        .watch()
        .service("a", &bypass(&echo.url()))
        .spawn()
        .await?;
    // A round trip lets the watcher take its first look at the file before it changes.
    assert_eq!(gw.status("a.example.test", "/").await?, 200);
    assert_eq!(gw.status("b.example.test", "/").await?, 404);
    gw.update(|c| {
        c.service("b", &bypass(&echo.url()));
    })?;
    let picked_up = wait_until(Duration::from_secs(10), || async {
        gw.status("b.example.test", "/").await.ok() == Some(200)
    })
    .await;
    assert!(picked_up, "the change was not picked up within 10 s");
    Ok(())
}

/// Regression (watcher compared the file with its own first look, taken when the task started): an edit made
/// after the config was loaded but before the watcher ran was never reloaded.
#[tokio::test]
async fn watcher_sees_an_edit_made_before_it_started() -> Result<()> {
    let echo = Echo::start().await?;
    let url = echo.url();
    let gw = TestGateway::new()
        .watch()
        .service("a", &bypass(&url))
        .edit_before_run(move |c| {
            c.service("b", &bypass(&url));
        })
        .spawn()
        .await?;
    let picked_up = wait_until(Duration::from_secs(10), || async {
        gw.status("b.example.test", "/").await.ok() == Some(200)
    })
    .await;
    assert!(
        picked_up,
        "an edit made during start-up was not picked up within 10 s"
    );
    Ok(())
}
