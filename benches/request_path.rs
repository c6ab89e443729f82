//! The whole per-request path over loopback: client → gateway (token check on a cache hit,
//! routing, header rewriting) → a no-op upstream → back, with keep-alive on both hops; and
//! the direct client → upstream round trip as the floor. The difference is what the gateway
//! costs. Run: `cargo bench --bench request_path`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use figment::Figment;
use figment::providers::{Format, Toml};
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meiro_gate::App;

const PASSWORD: &str = "bench password 1234";

/// A keep-alive HTTP/1.1 server answering every request with `200 ok`.
async fn noop_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, upstream, token, _app) = rt.block_on(async {
        let upstream = noop_upstream().await;
        let toml = format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            access_log = false
            [admin]
            listen = "127.0.0.1:0"
            [store]
            url = "sqlite://{d}/bench.db"
            [auth]
            keys_dir = "{d}/keys"
            [mail]
            dir = "{d}/outbox"
            [bootstrap]
            admin_email = "bench@example.com"
            admin_password = "{PASSWORD}"
            [[upstreams]]
            name = "noop"
            instances = ["http://{upstream}"]
            [[routes]]
            prefix = "/"
            upstream = "noop"
            "#,
            d = dir.path().display()
        );
        let config = meiro_gate::config::load_from_figment(&Figment::from(Toml::string(&toml)))
            .expect("bench config");
        let app = App::start(config).await.unwrap();
        let gateway = app.addr;
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let login = Request::post(format!("http://{gateway}/users/login"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"email":"bench@example.com","password":"{PASSWORD}"}}"#
            ))))
            .unwrap();
        let body = client.request(login).await.unwrap().into_body();
        let body = body.collect().await.unwrap().to_bytes();
        let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        (gateway, upstream, token, app)
    });

    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let get = |addr: SocketAddr, token: Option<&str>| {
        let mut request = Request::get(format!("http://{addr}/some/path?x=1"));
        if let Some(token) = token {
            request = request.header("x-access-token", token);
        }
        request.body(Empty::new()).unwrap()
    };

    c.bench_function("request/direct_to_upstream", |b| {
        b.to_async(&rt).iter(|| async {
            let response = client.request(get(upstream, None)).await.unwrap();
            assert!(response.status().is_success());
            response.into_body().collect().await.unwrap();
        })
    });
    c.bench_function("request/through_gateway_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let response = client.request(get(gateway, Some(&token))).await.unwrap();
            assert!(response.status().is_success());
            response.into_body().collect().await.unwrap();
        })
    });
}

criterion_group!(benches, request_path);
criterion_main!(benches);
