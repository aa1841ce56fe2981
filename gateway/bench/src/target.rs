//! What the load generator calls: the gateway over gRPC (unary and
//! streaming), a worker directly (the baseline for overhead), or an
//! OpenAI-compatible HTTP endpoint. Requests are built once and cloned, so
//! the generator spends its CPU on sending, not on building.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use routemesh_proto::v1::gateway_client::GatewayClient;
use routemesh_proto::v1::worker_client::WorkerClient;
use routemesh_proto::v1::{
    ChatMessage, GenerateRequest, GenerationParams, LoadRequest, WorkerGenerateRequest,
    generate_stream_event, worker_stream_event,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::stats::Outcome;

/// The kinds of target, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// `routemesh.v1.Gateway/Generate`.
    Generate,
    /// `routemesh.v1.Gateway/GenerateStream` (records time to first delta).
    GenerateStream,
    /// `routemesh.v1.Gateway/Route`: the routing decision alone, nothing generated.
    Route,
    /// `routemesh.v1.Worker/Generate`, straight to a worker (no gateway).
    WorkerGenerate,
    /// `routemesh.v1.Worker/GenerateStream`, straight to a worker.
    WorkerGenerateStream,
    /// `POST /v1/chat/completions` on an OpenAI-compatible HTTP server.
    Http,
    /// The same with `stream: true` (records time to first content chunk).
    HttpStream,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::GenerateStream => "generate-stream",
            Self::Route => "route",
            Self::WorkerGenerate => "worker-generate",
            Self::WorkerGenerateStream => "worker-generate-stream",
            Self::Http => "http",
            Self::HttpStream => "http-stream",
        }
    }
}

/// What each request carries.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub prompt: String,
    /// Gateway targets: request `n` carries `prompts[n % len]` instead of `prompt` (see `--prompts`).
    pub prompts: Arc<[String]>,
    /// Make every gateway request's prompt distinct (see `--unique-prompts`).
    pub unique_prompts: bool,
    /// Empty: the router chooses (gateway), the worker's own model (worker,
    /// asked once with `Load`), or `router` (HTTP).
    pub model: String,
    pub max_tokens: Option<u32>,
    /// Sent as `authorization: Bearer` on either protocol.
    pub api_key: Option<String>,
    /// Each request's deadline (gRPC `grpc-timeout`, or the HTTP client's).
    pub timeout: Duration,
}

/// Which gateway RPC a request makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayCall {
    Generate,
    GenerateStream,
    Route,
}

/// A connected target, cheap to clone into each request task.
// One per run, cloned per request task: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Target {
    Gateway {
        clients: Vec<GatewayClient<Channel>>,
        request: GenerateRequest,
        prompts: Arc<[String]>,
        unique_prompts: bool,
        call: GatewayCall,
        auth: Option<MetadataValue<tonic::metadata::Ascii>>,
        timeout: Duration,
    },
    Worker {
        clients: Vec<WorkerClient<Channel>>,
        request: WorkerGenerateRequest,
        stream: bool,
        timeout: Duration,
    },
    Http {
        clients: Vec<reqwest::Client>,
        url: String,
        body: Bytes,
        stream: bool,
        auth: Option<String>,
    },
}

impl Target {
    /// Opens `connections` connections to `url` (each its own HTTP/2
    /// connection for gRPC, its own pool for HTTP) and builds the request.
    pub async fn connect(
        kind: TargetKind,
        url: &str,
        connections: usize,
        http2: bool,
        spec: &RequestSpec,
    ) -> anyhow::Result<(Self, String)> {
        let connections = connections.max(1);
        let messages = vec![ChatMessage {
            role: "user".into(),
            content: spec.prompt.clone(),
            ..Default::default()
        }];
        let params = Some(GenerationParams {
            max_tokens: spec.max_tokens,
            ..Default::default()
        });
        match kind {
            TargetKind::Generate | TargetKind::GenerateStream | TargetKind::Route => {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    clients.push(GatewayClient::new(channel(url).await?));
                }
                let auth = match &spec.api_key {
                    Some(key) => Some(
                        format!("Bearer {key}")
                            .parse()
                            .context("--api-key is not valid in a header")?,
                    ),
                    None => None,
                };
                let request = GenerateRequest {
                    model: spec.model.clone(),
                    messages,
                    params,
                    ..Default::default()
                };
                Ok((
                    Self::Gateway {
                        clients,
                        request,
                        prompts: spec.prompts.clone(),
                        unique_prompts: spec.unique_prompts,
                        call: match kind {
                            TargetKind::GenerateStream => GatewayCall::GenerateStream,
                            TargetKind::Route => GatewayCall::Route,
                            _ => GatewayCall::Generate,
                        },
                        auth,
                        timeout: spec.timeout,
                    },
                    spec.model.clone(),
                ))
            }
            _ if !spec.prompts.is_empty() => {
                bail!("--prompts is for gateway targets (generate, generate-stream, route)")
            }
            TargetKind::WorkerGenerate | TargetKind::WorkerGenerateStream => {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    clients.push(WorkerClient::new(channel(url).await?));
                }
                // A worker refuses any model but its own, so ask it which.
                let model = if spec.model.is_empty() {
                    let mut first = clients[0].clone();
                    first
                        .load(LoadRequest {})
                        .await
                        .with_context(|| format!("asking the worker at {url} for its model"))?
                        .into_inner()
                        .model
                } else {
                    spec.model.clone()
                };
                let request = WorkerGenerateRequest {
                    request_id: "bench".into(),
                    model: model.clone(),
                    messages,
                    params,
                    tenant: "bench".into(),
                    want_logprobs: false,
                    user: String::new(),
                };
                Ok((
                    Self::Worker {
                        clients,
                        request,
                        stream: kind == TargetKind::WorkerGenerateStream,
                        timeout: spec.timeout,
                    },
                    model,
                ))
            }
            TargetKind::Http | TargetKind::HttpStream => {
                let stream = kind == TargetKind::HttpStream;
                let model = if spec.model.is_empty() {
                    "router".to_string()
                } else {
                    spec.model.clone()
                };
                let mut body = serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": spec.prompt}],
                    "stream": stream,
                });
                if let (Some(n), Some(obj)) = (spec.max_tokens, body.as_object_mut()) {
                    obj.insert("max_tokens".into(), n.into());
                }
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    let mut builder = reqwest::Client::builder()
                        .tcp_nodelay(true)
                        .timeout(spec.timeout)
                        .pool_max_idle_per_host(usize::MAX);
                    if http2 {
                        builder = builder.http2_prior_knowledge();
                    }
                    clients.push(builder.build()?);
                }
                Ok((
                    Self::Http {
                        clients,
                        url: format!("{}/v1/chat/completions", url.trim_end_matches('/')),
                        body: Bytes::from(serde_json::to_vec(&body)?),
                        stream,
                        auth: spec.api_key.as_ref().map(|k| format!("Bearer {k}")),
                    },
                    model,
                ))
            }
        }
    }

    /// Sends request number `n` (which picks the connection) and waits for
    /// its whole answer. `sent` is when it was sent, for the first delta.
    pub async fn call(&self, n: usize, sent: Instant) -> Outcome {
        match self {
            Self::Gateway {
                clients,
                request,
                prompts,
                unique_prompts,
                call,
                auth,
                timeout,
            } => {
                let mut client = clients[n % clients.len()].clone();
                let mut body = request.clone();
                if let Some(m) = body.messages.last_mut() {
                    if !prompts.is_empty() {
                        m.content.clone_from(&prompts[n % prompts.len()]);
                    }
                    if *unique_prompts {
                        m.content.push_str(&format!(" [{n}]"));
                    }
                }
                let mut req = tonic::Request::new(body);
                req.set_timeout(*timeout);
                if let Some(auth) = auth {
                    req.metadata_mut().insert("authorization", auth.clone());
                }
                let answered = Outcome::Ok {
                    first: None,
                    deltas: 0,
                };
                match call {
                    GatewayCall::Generate => {
                        return client
                            .generate(req)
                            .await
                            .map_or_else(|status| grpc_error(&status), |_| answered);
                    }
                    GatewayCall::Route => {
                        return client
                            .route(req)
                            .await
                            .map_or_else(|status| grpc_error(&status), |_| answered);
                    }
                    GatewayCall::GenerateStream => {}
                }
                let mut events = match client.generate_stream(req).await {
                    Ok(r) => r.into_inner(),
                    Err(status) => return grpc_error(&status),
                };
                let mut first = None;
                let mut deltas = 0;
                loop {
                    match events.message().await {
                        Ok(Some(event)) => match event.event {
                            Some(generate_stream_event::Event::Delta(_)) => {
                                first.get_or_insert_with(|| sent.elapsed());
                                deltas += 1;
                            }
                            Some(generate_stream_event::Event::End(_)) => {
                                return finish(events, Outcome::Ok { first, deltas }).await;
                            }
                            _ => {}
                        },
                        Ok(None) => return Outcome::Err("stream ended without end event".into()),
                        Err(status) => return grpc_error(&status),
                    }
                }
            }
            Self::Worker {
                clients,
                request,
                stream,
                timeout,
            } => {
                let mut client = clients[n % clients.len()].clone();
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(*timeout);
                if !*stream {
                    return match client.generate(req).await {
                        Ok(_) => Outcome::Ok {
                            first: None,
                            deltas: 0,
                        },
                        Err(status) => grpc_error(&status),
                    };
                }
                let mut events = match client.generate_stream(req).await {
                    Ok(r) => r.into_inner(),
                    Err(status) => return grpc_error(&status),
                };
                let mut first = None;
                let mut deltas = 0;
                loop {
                    match events.message().await {
                        Ok(Some(event)) => match event.event {
                            Some(
                                worker_stream_event::Event::Delta(_)
                                | worker_stream_event::Event::ToolCall(_),
                            ) => {
                                first.get_or_insert_with(|| sent.elapsed());
                                deltas += 1;
                            }
                            Some(worker_stream_event::Event::End(_)) => {
                                return finish(events, Outcome::Ok { first, deltas }).await;
                            }
                            None => {}
                        },
                        Ok(None) => return Outcome::Err("stream ended without end event".into()),
                        Err(status) => return grpc_error(&status),
                    }
                }
            }
            Self::Http {
                clients,
                url,
                body,
                stream,
                auth,
            } => {
                let client = &clients[n % clients.len()];
                let mut req = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(auth) = auth {
                    req = req.header("authorization", auth);
                }
                let resp = match req.send().await {
                    Ok(r) => r,
                    Err(e) => return http_error(&e),
                };
                let status = resp.status();
                if !status.is_success() {
                    // Read the body so the connection goes back to the pool.
                    let _ = resp.bytes().await;
                    return Outcome::Err(format!("http {}", status.as_u16()));
                }
                if !*stream {
                    return match resp.bytes().await {
                        Ok(_) => Outcome::Ok {
                            first: None,
                            deltas: 0,
                        },
                        Err(e) => http_error(&e),
                    };
                }
                let mut chunks = resp.bytes_stream();
                let mut first = None;
                let mut deltas = 0;
                // The last bytes seen, so `data: [DONE]` split across chunks
                // is still found.
                let mut tail: Vec<u8> = Vec::new();
                while let Some(chunk) = chunks.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => return http_error(&e),
                    };
                    let found = count_content(&chunk);
                    if first.is_none() && found > 0 {
                        first = Some(sent.elapsed());
                    }
                    deltas += found;
                    tail.extend_from_slice(&chunk);
                    if tail.len() > 64 {
                        tail.drain(..tail.len() - 64);
                    }
                }
                if contains(&tail, b"[DONE]") {
                    Outcome::Ok { first, deltas }
                } else {
                    Outcome::Err("sse ended without [DONE]".into())
                }
            }
        }
    }
}

/// Reads a gRPC stream to its end (the status trailer) after its end event.
/// Dropping it earlier would reset the HTTP/2 stream, and h2 limits how many
/// reset streams a connection may pile up: at a few thousand streams per
/// second that refuses calls and would be measured as the server's fault.
async fn finish<T>(mut events: tonic::Streaming<T>, ok: Outcome) -> Outcome {
    loop {
        match events.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return ok,
            Err(status) => return grpc_error(&status),
        }
    }
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("{url} is not a URL (e.g. http://127.0.0.1:50051)"))?
        .tcp_nodelay(true);
    match endpoint.connect().await {
        Ok(c) => Ok(c),
        Err(e) => bail!("connecting to {url}: {e}"),
    }
}

fn grpc_error(status: &tonic::Status) -> Outcome {
    Outcome::Err(format!("grpc {}", grpc_code_name(status.code())))
}

/// The canonical upper-case names, as in gRPC's documentation and the README.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn http_error(e: &reqwest::Error) -> Outcome {
    Outcome::Err(if e.is_timeout() {
        "http timeout".into()
    } else if e.is_connect() {
        "http connect".into()
    } else {
        "http transport".into()
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How many pieces of completion text an SSE chunk carries: `"content":`
/// fields whose string is not empty (the first chunk usually has only the
/// role and `"content": ""`). Either JSON spacing style is accepted. A field
/// split across two reads is missed, so the count is a lower bound.
fn count_content(chunk: &[u8]) -> u64 {
    const KEY: &[u8] = b"\"content\":";
    let mut rest = chunk;
    let mut found = 0;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        let value = rest.trim_ascii_start();
        if value.first() == Some(&b'"') && value.get(1).is_some_and(|&c| c != b'"') {
            found += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_counted_in_either_spacing_and_empty_content_is_not() {
        let role = br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(count_content(role), 0);
        assert_eq!(count_content(br#"data: {"delta":{"content":"Hi"}}"#), 1);
        assert_eq!(
            count_content(br#"data: {"delta": {"content": " there"}}"#),
            1
        );
        assert_eq!(count_content(b"data: [DONE]"), 0);
        // A role chunk and two content chunks arriving in one read.
        let many = b"data: {\"content\":\"\"}\n\ndata: {\"content\":\"x\"}\n\ndata: {\"content\":\"y\"}\n\n";
        assert_eq!(count_content(many), 2);
    }

    #[test]
    fn grpc_errors_use_canonical_names() {
        match grpc_error(&tonic::Status::resource_exhausted("full")) {
            Outcome::Err(label) => assert_eq!(label, "grpc RESOURCE_EXHAUSTED"),
            Outcome::Ok { .. } => panic!("an error"),
        }
    }
}
