//! The end-to-end harness: runs the real `routemesh` binary (gateways and
//! workers as separate processes) against a real Redis, on free ports, and
//! cleans up every process it starts.

#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod fake_openai;
pub mod rogue_worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use routemesh_proto::v1::gateway_client::GatewayClient;
use routemesh_proto::v1::worker_client::WorkerClient;
use routemesh_proto::v1::{ChatMessage, GenerateRequest};
use tonic::transport::Channel;

/// The workspace root (where Cargo.toml and target/ live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `routemesh` binary: `$ROUTEMESH_BIN`, else built once from the workspace.
pub fn routemesh_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("ROUTEMESH_BIN") {
            return PathBuf::from(bin);
        }
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "routemesh-gateway",
                "--bin",
                "routemesh",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the routemesh binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from);
        target.join("debug").join("routemesh")
    })
}

/// A Redis URL for tests that do not stop Redis: `$ROUTEMESH_TEST_REDIS` or the
/// local server. Tests namespace their keys with [`unique_mesh`].
pub fn shared_redis_url() -> String {
    std::env::var("ROUTEMESH_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A mesh name no other test uses, so keys never collide.
pub fn unique_mesh(test: &str) -> String {
    format!("test-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every key of `mesh` (teardown for tests on the shared Redis).
pub async fn delete_mesh_keys(url: &str, mesh: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("rm:v1:{{{mesh}}}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A free TCP port on loopback (for servers such as redis-server that cannot
/// report a port they picked themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server of the test's own, for tests that stop and restart Redis.
pub struct OwnRedis {
    pub port: u16,
    child: Child,
}

impl OwnRedis {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(free_port())
    }

    /// On a given port: to bring Redis back where clients expect it.
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        Self::start_with(port, &["--port", &port.to_string()])
    }

    /// Listening on `port` as `args` say (e.g. TLS only: `--port 0
    /// --tls-port <port> ...`), bound to loopback, keeping nothing on disk.
    pub fn start_with(port: u16, args: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        let redis = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `routemesh` process; killed on drop.
pub struct Process {
    pub name: String,
    child: Child,
    /// What the process wrote to its `--ready-file`.
    pub ready: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Runs `routemesh <args> --config <yaml> --ready-file ...` and waits until
    /// it reports it is serving (or exits, which is an error).
    pub fn start(name: &str, subcommand: &str, yaml: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml)?;
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("log.txt"))?;
        let mut child = Command::new(routemesh_bin())
            .arg(subcommand)
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "info,h2=warn,hyper=warn,tower=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", routemesh_bin().display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let ready = serde_json::from_str(&text)?;
                return Ok(Self {
                    name: name.into(),
                    child,
                    ready,
                    _dir: dir,
                });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("log.txt")).unwrap_or_default();
                bail!("{name} exited with {status} before serving:\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{name} did not report ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway address from the ready file, as a URL.
    pub fn gateway_url(&self) -> String {
        format!(
            "http://{}",
            self.ready["gateway"]
                .as_str()
                .expect("a gateway in this process")
        )
    }

    /// The OpenAI-compatible HTTP API's base URL (`http://host:port`).
    pub fn http_url(&self) -> String {
        format!(
            "http://{}",
            self.ready["http"]
                .as_str()
                .expect("an HTTP API in this process")
        )
    }

    /// The endpoint of the `i`th worker in this process.
    pub fn worker_endpoint(&self, i: usize) -> String {
        self.ready["workers"][i]["endpoint"]
            .as_str()
            .expect("a worker in this process")
            .to_string()
    }

    pub fn worker_id(&self, i: usize) -> String {
        self.ready["workers"][i]["id"]
            .as_str()
            .expect("a worker in this process")
            .to_string()
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log.txt")).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit (bounded).
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        signal(self.pid(), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies without cleaning up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// GET `url` with curl (plus `extra` arguments, e.g. `--cacert`): the status
/// code and the body. Status 0 means curl could not complete the request.
pub fn curl_get(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The admin port's base URL of a process that has one.
impl Process {
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.ready["admin"].as_str().expect("an admin port")
        )
    }
}

/// Runs a one-shot `routemesh` command with `yaml` as its `--config`.
pub fn run_cli(args: &[&str], yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).expect("config written");
    Command::new(routemesh_bin())
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .output()
        .expect("routemesh runs")
}

/// YAML for one sim worker announcing to `redis_url`/`mesh`.
pub fn sim_worker_yaml(
    redis: Option<(&str, &str)>,
    id: &str,
    model: &str,
    tier: &str,
    sim: &str,
) -> String {
    format!(
        "{}workers:\n  - id: {id}\n    model: {model}\n    tier: {tier}\n    input_usd_per_mtok: {}\n    output_usd_per_mtok: {}\n    registration_ttl: 2s\n    drain_grace: 5s\n    backend:\n      sim: {sim}\n",
        registry_yaml(redis),
        if tier == "large" { 10.0 } else { 0.2 },
        if tier == "large" { 30.0 } else { 0.2 },
    )
}

/// A quick simulated answer (4 tokens, no delay) for tests about the path,
/// not the model.
pub const QUICK_SIM: &str =
    "{ttft_ms: {median: 1}, tokens_per_second: {median: 0}, output_tokens: {median: 4}, seed: 1}";

/// A sim worker `small-0` (model `small`, tier small; `sim` its backend) and
/// a gateway that knows it as a static worker, without Redis. `gateway` is
/// the gateway's YAML (e.g. [`gateway_yaml_with`]) before `static_workers`.
pub fn gateway_with_one_worker(sim: &str, gateway: &str) -> (Process, Process) {
    let worker = Process::start(
        "w",
        "worker",
        &sim_worker_yaml(None, "small-0", "small", "small", sim),
        &[],
    )
    .expect("the worker starts");
    let gateway = Process::start(
        "gw",
        "gateway",
        &format!(
            "{gateway}static_workers:\n  - {{id: small-0, model: small, tier: small, endpoint: \"{}\"}}\n",
            worker.worker_endpoint(0)
        ),
        &[],
    )
    .expect("the gateway starts");
    (worker, gateway)
}

/// YAML for a gateway with fast discovery (tests should not wait seconds).
pub fn gateway_yaml(redis: Option<(&str, &str)>) -> String {
    gateway_yaml_with(redis, "")
}

/// [`gateway_yaml`] plus more `gateway:` keys (each line indented by two
/// spaces), with telemetry fast enough for tests to see adaptation.
pub fn gateway_yaml_with(redis: Option<(&str, &str)>, extra: &str) -> String {
    format!(
        "{}gateway:\n  listen: 127.0.0.1:0\n  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  discovery_interval: 100ms\n  load_interval: 100ms\n  request_timeout: 20s\n  drain_grace: 5s\n  telemetry: {{window: 10s, snapshot_interval: 100ms, flush_interval: 20ms, min_requests: 3}}\n{extra}",
        registry_yaml(redis)
    )
}

fn registry_yaml(redis: Option<(&str, &str)>) -> String {
    match redis {
        Some((url, mesh)) => format!("registry:\n  redis:\n    url: {url}\n    mesh: {mesh}\n"),
        None => String::new(),
    }
}

pub async fn gateway_client(url: &str) -> GatewayClient<Channel> {
    GatewayClient::connect(url.to_string())
        .await
        .expect("gateway reachable")
}

pub async fn worker_client(url: &str) -> WorkerClient<Channel> {
    WorkerClient::connect(url.to_string())
        .await
        .expect("worker reachable")
}

/// A one-message request.
pub fn ask(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Polls `check` until it holds; fails after `within`. For conditions that
/// arrive through background discovery, which the test cannot subscribe to.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `shared/data/routing` beside the repository, or `None` (tests that need it
/// then skip, saying why).
pub fn routing_data() -> Option<PathBuf> {
    let dir = std::env::var_os("ROUTEMESH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join("..")
                .join("shared")
                .join("data")
                .join("routing")
        });
    if dir.join("gsm8k.jsonl").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: routing data not found at {} (set ROUTEMESH_DATA)",
            dir.display()
        );
        None
    }
}

/// Waits until the gateway at `url` routes among `workers` workers (they
/// registered and passed their first load check).
pub async fn wait_for_pool(url: &str, workers: usize) {
    let url = url.to_string();
    eventually(
        Duration::from_secs(10),
        &format!("{workers} workers in the pool"),
        || {
            let url = url.clone();
            async move {
                // The pool as the gateway lists it (a cascade's dry run
                // shows only its first step's candidates).
                gateway_client(&url)
                    .await
                    .list_models(routemesh_proto::v1::ListModelsRequest {})
                    .await
                    .map(|r| {
                        r.into_inner()
                            .models
                            .iter()
                            .map(|m| m.workers.len())
                            .sum::<usize>()
                            == workers
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await;
}

/// Waits until the gateway at `url` has `n` requests in flight to its workers.
pub async fn wait_for_in_flight(url: &str, n: u32) {
    let url = url.to_string();
    eventually(
        Duration::from_secs(10),
        &format!("{n} requests in flight"),
        || {
            let url = url.clone();
            async move {
                let models = gateway_client(&url)
                    .await
                    .list_models(routemesh_proto::v1::ListModelsRequest {})
                    .await
                    .map(|r| r.into_inner().models)
                    .unwrap_or_default();
                models
                    .iter()
                    .flat_map(|m| &m.workers)
                    .map(|w| w.gateway_in_flight)
                    .sum::<u32>()
                    == n
            }
        },
    )
    .await;
}

/// The local backend's model (SmolLM2-135M-Instruct Q4_1 GGUF):
/// `$ROUTEMESH_LOCAL_MODEL`, else where `scripts/fetch-local-model.sh` puts
/// it. `None`, after saying why, when it is absent; when it is required
/// (`ROUTEMESH_REQUIRE_LOCAL_MODEL` or `CI` set, as `./dev test` does after
/// fetching it) absence fails the test instead.
pub fn local_model() -> Option<PathBuf> {
    let path = std::env::var_os("ROUTEMESH_LOCAL_MODEL").map_or_else(
        || workspace_root().join(".cache/routemesh/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    if path.is_file() {
        return Some(path);
    }
    let required = std::env::var_os("ROUTEMESH_REQUIRE_LOCAL_MODEL").is_some()
        || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "the local model {} is missing (run scripts/fetch-local-model.sh)",
        path.display()
    );
    eprintln!(
        "SKIPPED: the local model {} is absent; run scripts/fetch-local-model.sh to test the local backend",
        path.display()
    );
    None
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and certificates for `names`, each valid for 127.0.0.1 as server and client.
pub fn pki(dir: &Path, names: &[&str]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=routemesh test CA",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    for name in names {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    }
}

/// `routemesh check-config <file>` on `yaml`: what the binary says of it.
pub fn check_config(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).expect("config written");
    Command::new(routemesh_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("routemesh check-config runs")
}
