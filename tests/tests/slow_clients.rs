//! Clients that hold the gateway's resources without using them: streams
//! whose client never opens its HTTP/2 flow-control window are ended after
//! `stream_stall_timeout`, their worker calls cancelled and their slots
//! under `max_concurrent_requests` released.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use prost::Message;
use routemesh_proto::v1::{GenerateRequest, GenerationParams};
use routemesh_tests::*;

/// A long answer: 5,000 tokens at 50 per second.
const LONG: &str = "{ttft_ms: {median: 1}, tokens_per_second: {median: 50}, output_tokens: {median: 5000}, seed: 1}";

/// Opens a GenerateStream over raw HTTP/2 with a stream window of 0: the
/// gateway may send headers but not one byte of the answer. Returns once
/// the gateway has answered with headers (the request holds a slot); the
/// connection stays open, answering pings, until the returned task is
/// dropped.
async fn stalled_stream(addr: &str) -> tokio::task::JoinHandle<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = GenerateRequest {
        params: Some(GenerationParams {
            max_tokens: Some(4096),
            ..Default::default()
        }),
        ..ask("Tell me a very long story.")
    };
    let body = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&body);
    let head = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/routemesh.v1.Gateway/GenerateStream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(head, false).unwrap();
    send.send_data(framed.into(), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("response headers")
        .unwrap();
    assert_eq!(response.status(), 200);
    tokio::spawn(async move {
        // Holds the stream (and its connection) open without reading.
        let _response = response;
        let _send = send;
        let _client = client;
        let _ = driver.await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_nobody_reads_release_their_slots() {
    let redis = OwnRedis::start().unwrap();
    let url = redis.url();
    let r = Some((url.as_str(), "slow"));
    let _worker = Process::start(
        "w",
        "worker",
        &format!(
            "{}    capacity: 16\n",
            sim_worker_yaml(r, "big-0", "big", "large", LONG)
        ),
        &[],
    )
    .unwrap();
    let gw = Process::start(
        "gw",
        "gateway",
        &gateway_yaml_with(
            r,
            "  max_concurrent_requests: 4\n  stream_stall_timeout: 1s\n",
        ),
        &[],
    )
    .unwrap();
    let mut client = gateway_client(&gw.gateway_url()).await;
    eventually(
        Duration::from_secs(10),
        "the gateway sees the worker",
        || {
            let mut c = client.clone();
            async move { c.route(ask("hi")).await.is_ok() }
        },
    )
    .await;
    let addr = gw.gateway_url().trim_start_matches("http://").to_string();

    // Every slot taken by a client that reads nothing.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_stream(&addr).await);
    }
    let full = client.generate(ask("hi")).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");

    // Within the stall timeout (plus the time to fill the buffers) the slots
    // are free again, long before the answers' 100 s or the 20 s deadline.
    eventually(Duration::from_secs(8), "a slot is free again", || {
        let mut c = client.clone();
        async move { c.generate(ask("hi")).await.is_ok() }
    })
    .await;
    drop(stalled);
}
