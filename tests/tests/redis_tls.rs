//! Redis over TLS, as managed Redis services require: a real redis-server
//! listening on TLS only and asking for client certificates (certificates
//! made in the test with openssl), a mesh whose registry, telemetry and
//! sessions live there, and the refusals that name what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use routemesh_tests::*;

/// A redis-server that speaks only TLS and requires a client certificate
/// from the test CA.
fn tls_redis(dir: &Path) -> OwnRedis {
    let port = free_port();
    let p = |f: &str| dir.join(f).display().to_string();
    OwnRedis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &p("redis.pem"),
            "--tls-key-file",
            &p("redis.key"),
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "yes",
        ],
    )
    .expect("redis-server (Debian's is built with TLS)")
}

fn mesh_yaml(port: u16, mesh: &str, tls: &str) -> String {
    let registry = format!(
        "registry:\n  redis:\n    url: rediss://127.0.0.1:{port}\n    mesh: {mesh}\n    tls: {tls}\n"
    );
    let worker = sim_worker_yaml(
        None,
        "small-0",
        "small-model",
        "small",
        "{ttft_ms: {median: 1}}",
    );
    let gateway = gateway_yaml(None);
    format!("{registry}{gateway}{worker}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_runs_on_redis_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["redis", "routemesh"]);
    let redis = tls_redis(d);
    let p = |f: &str| d.join(f).display().to_string();
    let mesh = unique_mesh("redis-tls");
    let tls = format!(
        "{{ca: {}, cert: {}, key: {}}}",
        p("ca.pem"),
        p("routemesh.pem"),
        p("routemesh.key")
    );

    let up = Process::start("up", "up", &mesh_yaml(redis.port, &mesh, &tls), &[]).unwrap();
    wait_for_pool(&up.gateway_url(), 1).await;
    let mut client = gateway_client(&up.gateway_url()).await;
    let answer = client
        .generate(ask("hello over TLS"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.usage.unwrap().model, "small-model");

    // The worker's record is in that Redis, read back over TLS.
    let read = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}", redis.port),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(d.join("routemesh.pem")).unwrap(),
                client_key: std::fs::read(d.join("routemesh.key")).unwrap(),
            }),
            root_cert: Some(std::fs::read(d.join("ca.pem")).unwrap()),
        },
    )
    .unwrap();
    let mut conn = read.get_multiplexed_async_connection().await.unwrap();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("rm:v1:{{{mesh}}}:workers"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, ["small-0"]);
    drop(up);

    // Without its client certificate, the server refuses the mesh, and the
    // binary says so at start instead of serving without its registry.
    let no_cert = format!("{{ca: {}}}", p("ca.pem"));
    let refused = Process::start("up", "up", &mesh_yaml(redis.port, &mesh, &no_cert), &[])
        .err()
        .expect("refused without a client certificate")
        .to_string();
    assert!(refused.contains("registry"), "{refused}");

    // Trusting another CA: the server's certificate is refused.
    std::fs::create_dir(d.join("other")).unwrap();
    pki(&d.join("other"), &[]);
    let wrong_ca = format!(
        "{{ca: {}, cert: {}, key: {}}}",
        d.join("other").join("ca.pem").display(),
        p("routemesh.pem"),
        p("routemesh.key")
    );
    assert!(Process::start("up", "up", &mesh_yaml(redis.port, &mesh, &wrong_ca), &[]).is_err());
}

#[test]
fn check_config_names_what_tls_to_redis_needs() {
    let plain = "registry: {redis: {url: 'redis://127.0.0.1:6379', tls: {ca: /x/ca.pem}}}\n";
    let out = check_config(plain);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("registry.redis.tls: needs a rediss:// url"),
        "{err}"
    );

    let half = "registry: {redis: {url: 'rediss://127.0.0.1:6380', tls: {cert: /x/c.pem}}}\n";
    let out = check_config(half);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("registry.redis.tls: a client certificate needs both cert and key"),
        "{err}"
    );

    let password = "registry: {redis: {url: 'http://:s3cret@host:6379'}}\n";
    let out = check_config(password);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registry.redis.url"), "{err}");
    assert!(!err.contains("s3cret"), "the password is not shown: {err}");

    let fine = "registry: {redis: {url: 'rediss://127.0.0.1:6380', tls: {ca: /x/ca.pem}}}\n";
    assert!(check_config(fine).status.success());
}

/// Certificates rotated to a new CA while the mesh runs (the server
/// restarted with the new set, the files rewritten in place): the mesh's
/// connections are reopened with the files as they are now, its worker is
/// announced again in the restarted Redis and the gateway serves it. With
/// the files read once at start, every reconnect would present the old
/// client certificate and distrust the new server certificate forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_redis_certificates_are_used_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, live) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("live"),
    );
    for d in [&old, &new, &live] {
        std::fs::create_dir(d).unwrap();
    }
    pki(&old, &["redis", "routemesh"]);
    pki(&new, &["redis", "routemesh"]);
    let install = |from: &Path| {
        for f in ["ca.pem", "routemesh.pem", "routemesh.key"] {
            std::fs::copy(from.join(f), live.join(f)).unwrap();
        }
    };
    install(&old);
    let redis = tls_redis(&old);
    let port = redis.port;
    let mesh = unique_mesh("redis-tls-rotate");
    let p = |f: &str| live.join(f).display().to_string();
    let tls = format!(
        "{{ca: {}, cert: {}, key: {}, reload_interval: 100ms}}",
        p("ca.pem"),
        p("routemesh.pem"),
        p("routemesh.key")
    );
    let up = Process::start("up", "up", &mesh_yaml(port, &mesh, &tls), &[]).unwrap();
    wait_for_pool(&up.gateway_url(), 1).await;

    // The new CA signs the server's certificate and must sign the client's.
    drop(redis);
    let _redis = OwnRedis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &new.join("redis.pem").display().to_string(),
            "--tls-key-file",
            &new.join("redis.key").display().to_string(),
            "--tls-ca-cert-file",
            &new.join("ca.pem").display().to_string(),
            "--tls-auth-clients",
            "yes",
        ],
    )
    .unwrap();
    install(&new);

    // The restarted Redis lost everything: the worker is back in it only
    // if the registry's connection was made with the new files.
    let read = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}"),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(new.join("routemesh.pem")).unwrap(),
                client_key: std::fs::read(new.join("routemesh.key")).unwrap(),
            }),
            root_cert: Some(std::fs::read(new.join("ca.pem")).unwrap()),
        },
    )
    .unwrap();
    let key = format!("rm:v1:{{{mesh}}}:workers");
    eventually(
        std::time::Duration::from_secs(20),
        "the worker announced again over the new certificates",
        || {
            let (read, key) = (read.clone(), key.clone());
            async move {
                let Ok(mut conn) = read.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
                    .is_ok_and(|ids| ids == ["small-0"])
            }
        },
    )
    .await;
    let mut client = gateway_client(&up.gateway_url()).await;
    eventually(
        std::time::Duration::from_secs(20),
        "the gateway serves after the rotation",
        || {
            let mut c = client.clone();
            async move { c.generate(ask("hello again")).await.is_ok() }
        },
    )
    .await;
    client.generate(ask("and once more")).await.unwrap();
    let (_, metrics) = curl_get(&format!("{}/metrics", up.admin_url()), &[]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("routemesh_tls_reloads_total")
                && l.contains("what=\"registry.redis.tls\"")
                && l.contains("result=\"ok\"")),
        "no reload counted:\n{metrics}"
    );
}
