//! The admin port behind a bearer token (`gateway.admin_auth`): every
//! tenant's spend and traffic answer only the token; probes, the page and
//! (unless `protect_metrics`) Prometheus stay open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_tests::*;

/// SHA-256 of "s3cret".
const TOKEN_SHA256: &str = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";

async fn status(url: &str, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ports_data_needs_the_token() {
    for protect_metrics in [false, true] {
        let (_worker, gw) = gateway_with_one_worker(
            QUICK_SIM,
            &gateway_yaml_with(
                None,
                &format!(
                    "  admin_auth: {{sha256: {TOKEN_SHA256}, protect_metrics: {protect_metrics}}}\n"
                ),
            ),
        );
        let admin = gw.admin_url();
        let client = gateway_client(&gw.gateway_url()).await;
        eventually(Duration::from_secs(10), "the gateway serves", || {
            let mut c = client.clone();
            async move { c.generate(ask("hi")).await.is_ok() }
        })
        .await;
        for path in ["/v1/overview", "/v1/cost", "/v1/telemetry"] {
            let url = format!("{admin}{path}");
            assert_eq!(status(&url, None).await, 401, "{path}");
            assert_eq!(status(&url, Some("wrong")).await, 401, "{path}");
            assert_eq!(status(&url, Some("s3cret")).await, 200, "{path}");
        }
        for path in ["/healthz", "/readyz", "/"] {
            assert_eq!(status(&format!("{admin}{path}"), None).await, 200, "{path}");
        }
        let metrics = format!("{admin}/metrics");
        let expected = if protect_metrics { 401 } else { 200 };
        assert_eq!(status(&metrics, None).await, expected);
        assert_eq!(status(&metrics, Some("s3cret")).await, 200);
    }
}
