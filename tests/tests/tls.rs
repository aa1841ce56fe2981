//! TLS with real certificates generated in the test (openssl): the gateway's
//! public gRPC port over TLS, and mutual TLS between gateway and worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use routemesh_proto::v1::LoadRequest;
use routemesh_proto::v1::gateway_client::GatewayClient;
use routemesh_proto::v1::worker_client::WorkerClient;
use routemesh_tests::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

async fn tls_channel(
    url: &str,
    dir: &Path,
    identity: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(dir.join("ca.pem")).unwrap(),
    ));
    if let Some(name) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(dir.join(format!("{name}.pem"))).unwrap(),
            std::fs::read(dir.join(format!("{name}.key"))).unwrap(),
        ));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_public_port_and_mutual_tls_to_workers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["worker", "gateway-client", "gateway"]);
    let p = |f: &str| d.join(f).display().to_string();

    // The worker only answers clients with a certificate from the CA.
    let worker_yaml = sim_worker_yaml(None, "secure-0", "m", "small", "{ttft_ms: {median: 1}}")
        .replace(
            "    backend:",
            &format!(
                "    tls: {{cert: {}, key: {}, ca: {}}}\n    backend:",
                p("worker.pem"),
                p("worker.key"),
                p("ca.pem")
            ),
        );
    let worker = Process::start("worker", "worker", &worker_yaml, &[]).unwrap();
    let endpoint = worker.worker_endpoint(0);
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");

    // Without a client certificate, the worker refuses.
    let anonymous = match tls_channel(&endpoint, d, None).await {
        Ok(ch) => WorkerClient::new(ch).load(LoadRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(
        anonymous,
        "mutual TLS: a client without a certificate must be refused"
    );
    let mut direct = WorkerClient::new(
        tls_channel(&endpoint, d, Some("gateway-client"))
            .await
            .unwrap(),
    );
    assert_eq!(
        direct
            .load(LoadRequest {})
            .await
            .unwrap()
            .into_inner()
            .worker_id,
        "secure-0"
    );

    // The gateway dials the worker with its client certificate and serves
    // its own port over TLS.
    let gateway_yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: null\n  admin_listen: null\n  router: {{enabled: false}}\n  tls: {{cert: {}, key: {}}}\n  worker_tls: {{cert: {}, key: {}, ca: {}}}\nstatic_workers:\n  - {{id: secure-0, model: m, tier: small, endpoint: \"{endpoint}\"}}\n",
        p("gateway.pem"),
        p("gateway.key"),
        p("gateway-client.pem"),
        p("gateway-client.key"),
        p("ca.pem"),
    );
    let gateway = Process::start("gateway", "gateway", &gateway_yaml, &[]).unwrap();
    let url = gateway.gateway_url().replace("http://", "https://");
    let mut client = GatewayClient::new(tls_channel(&url, d, None).await.unwrap());
    let answer = client
        .generate(ask("hello over TLS"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.usage.unwrap().worker_id, "secure-0");

    // Plaintext to the TLS port fails.
    let plain = GatewayClient::connect(gateway.gateway_url()).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.generate(ask("hi")).await.is_err(),
    };
    assert!(refused, "the public port speaks TLS only");
}

/// One mesh certificate for every agent, naming them by a DNS name rather
/// than their (pod) IPs, as the chart's `meshTLS` mounts it: the gateway
/// verifies workers by `worker_tls.server_name`, and without it refuses the
/// worker whose certificate does not name the IP it dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mesh_certificate_named_by_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &[]);
    std::fs::write(
        d.join("mesh.cnf"),
        "subjectAltName=DNS:workers.mesh.internal\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "mesh.key",
            "-out",
            "mesh.csr",
            "-subj",
            "/CN=routemesh mesh",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "mesh.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "mesh.pem",
            "-days",
            "2",
            "-extfile",
            "mesh.cnf",
        ],
    );
    let p = |f: &str| d.join(f).display().to_string();
    let worker_yaml = sim_worker_yaml(None, "mesh-0", "m", "small", "{ttft_ms: {median: 1}}")
        .replace(
            "    backend:",
            &format!(
                "    tls: {{cert: {}, key: {}, ca: {}}}\n    backend:",
                p("mesh.pem"),
                p("mesh.key"),
                p("ca.pem")
            ),
        );
    let worker = Process::start("worker", "worker", &worker_yaml, &[]).unwrap();
    let endpoint = worker.worker_endpoint(0);
    let gateway = |server_name: &str| {
        format!(
            "gateway:\n  listen: 127.0.0.1:0\n  http_listen: null\n  admin_listen: null\n  router: {{enabled: false}}\n  max_attempts: 1\n  worker_tls: {{cert: {}, key: {}, ca: {}{server_name}}}\nstatic_workers:\n  - {{id: mesh-0, model: m, tier: small, endpoint: \"{endpoint}\"}}\n",
            p("mesh.pem"),
            p("mesh.key"),
            p("ca.pem"),
        )
    };
    let named = Process::start(
        "named",
        "gateway",
        &gateway(", server_name: workers.mesh.internal"),
        &[],
    )
    .unwrap();
    let mut client = gateway_client(&named.gateway_url()).await;
    let answer = client.generate(ask("hello")).await.unwrap().into_inner();
    assert_eq!(answer.usage.unwrap().worker_id, "mesh-0");

    let unnamed = Process::start("unnamed", "gateway", &gateway(""), &[]).unwrap();
    let mut client = gateway_client(&unnamed.gateway_url()).await;
    let refused = client.generate(ask("hello")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
}
