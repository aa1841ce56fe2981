//! Certificates reloaded without a restart, with real certificates from two
//! CAs that openssl generates in the test: the gateway's public certificate
//! (gRPC and HTTP ports, rotated the way a Kubernetes Secret is, by swapping
//! a `..data` symlink), a worker's server certificate and client CA, and the
//! gateway's client certificate towards workers. A broken new certificate
//! keeps the current one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use routemesh_proto::v1::gateway_client::GatewayClient;
use routemesh_proto::v1::worker_client::WorkerClient;
use routemesh_proto::v1::{GenerateRequest, ListModelsRequest, LoadRequest};
use routemesh_tests::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A TLS channel trusting only `ca`, with `identity` (cert, key) if given.
async fn channel(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a new connection trusting only `ca` gets an answer from the gateway.
async fn gateway_trusted_with(url: &str, ca: &Path) -> bool {
    match channel(url, ca, None).await {
        Ok(ch) => GatewayClient::new(ch)
            .list_models(ListModelsRequest {})
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Whether a new connection to the worker, trusting `ca` and presenting the
/// client certificate of the same CA, gets an answer.
async fn worker_trusted_with(url: &str, pki: &Path) -> bool {
    let identity = (pki.join("client.pem"), pki.join("client.key"));
    match channel(url, &pki.join("ca.pem"), Some((&identity.0, &identity.1))).await {
        Ok(ch) => WorkerClient::new(ch).load(LoadRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

/// Writes `bytes` to `path` atomically (a temp file renamed over it).
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A Kubernetes-style Secret volume: `dir/tls.crt -> ..data/tls.crt`, and
/// `..data -> ..<version>`, swapped atomically on update.
fn secret_volume(dir: &Path, version: &str, cert: &[u8], key: &[u8]) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

fn pinned(model: &str) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
        ..ask("hello")
    }
}

fn curl_https(url: &str, ca: &Path) -> u16 {
    curl_get(url, &["--cacert", ca.to_str().unwrap()]).0
}

fn metric(admin: &str, parts: &[&str]) -> f64 {
    let (_, text) = curl_get(&format!("{admin}/metrics"), &[]);
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_when_their_files_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two, live) = (
        tmp.path().join("ca1"),
        tmp.path().join("ca2"),
        tmp.path().join("live"),
    );
    for dir in [&one, &two, &live] {
        std::fs::create_dir_all(dir).unwrap();
    }
    pki(&one, &["gateway", "worker", "client"]);
    pki(&two, &["gateway", "worker", "client"]);
    let read = |dir: &PathBuf, f: &str| std::fs::read(dir.join(f)).unwrap();
    let l = |f: &str| live.join(f).display().to_string();
    // What the processes read: all from CA 1 to begin with.
    let secret = live.join("gateway-secret");
    std::fs::create_dir_all(&secret).unwrap();
    secret_volume(
        &secret,
        "v1",
        &read(&one, "gateway.pem"),
        &read(&one, "gateway.key"),
    );
    for (name, from) in [
        ("w1.pem", "worker.pem"),
        ("w1.key", "worker.key"),
        ("w1-clients-ca.pem", "ca.pem"),
        ("client.pem", "client.pem"),
        ("client.key", "client.key"),
        ("workers-ca.pem", "ca.pem"),
    ] {
        replace(&live.join(name), &read(&one, from));
    }

    let redis = shared_redis_url();
    let mesh = unique_mesh("tls-reload");
    let worker = |id: &str, model: &str, cert: String, key: String, ca: String| {
        sim_worker_yaml(
            Some((&redis, &mesh)),
            id,
            model,
            "small",
            "{ttft_ms: {median: 1}}",
        )
        .replace(
            "    backend:",
            &format!(
                "    tls: {{cert: {cert}, key: {key}, ca: {ca}, reload_interval: 100ms}}\n    backend:"
            ),
        )
    };
    let w1 = Process::start(
        "w1",
        "worker",
        &worker("w1", "m1", l("w1.pem"), l("w1.key"), l("w1-clients-ca.pem")),
        &[],
    )
    .unwrap();
    // W2 is all CA 2 from the start: the gateway cannot use it until its
    // client certificate and worker CA move to CA 2.
    let p2 = |f: &str| two.join(f).display().to_string();
    let _w2 = Process::start(
        "w2",
        "worker",
        &worker("w2", "m2", p2("worker.pem"), p2("worker.key"), p2("ca.pem")),
        &[],
    )
    .unwrap();
    let gateway_yaml = gateway_yaml_with(
        Some((&redis, &mesh)),
        &format!(
            "  router: {{enabled: false}}\n  tls: {{cert: {}, key: {}, reload_interval: 100ms}}\n  worker_tls: {{cert: {}, key: {}, ca: {}, reload_interval: 100ms}}\n",
            secret.join("tls.crt").display(),
            secret.join("tls.key").display(),
            l("client.pem"),
            l("client.key"),
            l("workers-ca.pem"),
        ),
    );
    let gateway = Process::start("gateway", "gateway", &gateway_yaml, &[]).unwrap();
    let url = gateway.gateway_url().replace("http://", "https://");
    let models = format!(
        "{}/v1/models",
        gateway.http_url().replace("http://", "https://")
    );
    let w1_url = w1.worker_endpoint(0);
    let (ca1, ca2) = (one.join("ca.pem"), two.join("ca.pem"));

    // Before: CA 1 everywhere.
    let mut client = GatewayClient::new(channel(&url, &ca1, None).await.unwrap());
    eventually(WITHIN, "both workers in the pool", || {
        let mut client = client.clone();
        async move {
            client
                .route(ask("hi"))
                .await
                .is_ok_and(|r| r.into_inner().candidates.len() == 2)
        }
    })
    .await;
    let answer = client.generate(pinned("m1")).await.unwrap().into_inner();
    assert_eq!(answer.usage.unwrap().worker_id, "w1");
    let refused = client.generate(pinned("m2")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(!gateway_trusted_with(&url, &ca2).await);
    assert_eq!(curl_https(&models, &ca1), 200);
    assert_eq!(curl_https(&models, &ca2), 0, "CA 2 must not verify yet");
    assert!(worker_trusted_with(&w1_url, &one).await);
    assert!(!worker_trusted_with(&w1_url, &two).await);

    // Rotate everything to CA 2, without restarting anything.
    secret_volume(
        &secret,
        "v2",
        &read(&two, "gateway.pem"),
        &read(&two, "gateway.key"),
    );
    for (name, from) in [
        ("w1.pem", "worker.pem"),
        ("w1.key", "worker.key"),
        ("w1-clients-ca.pem", "ca.pem"),
        ("client.pem", "client.pem"),
        ("client.key", "client.key"),
        ("workers-ca.pem", "ca.pem"),
    ] {
        replace(&live.join(name), &read(&two, from));
    }

    // The gateway's public ports present the CA 2 certificate to new connections...
    eventually(WITHIN, "the gateway presents the new certificate", || {
        let (url, ca2) = (url.clone(), ca2.clone());
        async move { gateway_trusted_with(&url, &ca2).await }
    })
    .await;
    assert!(!gateway_trusted_with(&url, &ca1).await);
    assert_eq!(curl_https(&models, &ca2), 200);
    assert_eq!(curl_https(&models, &ca1), 0, "CA 1 must no longer verify");
    // ...the worker its new certificate, requiring CA 2 clients...
    eventually(WITHIN, "the worker presents the new certificate", || {
        let (w1_url, two) = (w1_url.clone(), two.clone());
        async move { worker_trusted_with(&w1_url, &two).await }
    })
    .await;
    assert!(!worker_trusted_with(&w1_url, &one).await);
    // ...and the gateway dials workers with its new client certificate, so
    // the all-CA-2 worker now serves.
    let mut client = GatewayClient::new(channel(&url, &ca2, None).await.unwrap());
    eventually(WITHIN, "the gateway reaches the CA 2 worker", || {
        let mut client = client.clone();
        async move { client.generate(pinned("m2")).await.is_ok() }
    })
    .await;
    let answer = client.generate(pinned("m1")).await.unwrap().into_inner();
    assert_eq!(answer.usage.unwrap().worker_id, "w1");

    // A broken certificate is not loaded: the current one stays.
    secret_volume(
        &secret,
        "v3",
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        &read(&two, "gateway.key"),
    );
    let admin = gateway.admin_url();
    eventually(WITHIN, "the failed reload is counted", || {
        let admin = admin.clone();
        async move {
            metric(
                &admin,
                &[
                    "routemesh_tls_reloads_total{",
                    "what=\"gateway.tls\"",
                    "result=\"error\"",
                ],
            ) >= 1.0
        }
    })
    .await;
    assert!(gateway_trusted_with(&url, &ca2).await);
    assert_eq!(curl_https(&models, &ca2), 200);
    assert!(
        gateway.log().contains("keeping the current ones"),
        "{}",
        gateway.log()
    );
    assert!(
        metric(
            &admin,
            &[
                "routemesh_tls_reloads_total{",
                "what=\"gateway.tls\"",
                "result=\"ok\""
            ]
        ) >= 1.0
    );
    delete_mesh_keys(&redis, &mesh).await;
}
