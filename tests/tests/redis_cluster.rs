//! A mesh on a real three-node Redis Cluster (its own redis-servers, on free
//! ports): workers register and are routed to, a tenant's limits hold across
//! two gateway replicas, telemetry and feedback are shared, and each
//! tenant's limit keys sit in a slot of their own (`CLUSTER KEYSLOT`). Then
//! the node holding the mesh's slot is restarted with requests flowing:
//! every request is answered or refused with a clear status, and the mesh
//! serves again once the node is back. A cluster over mutual TLS (client
//! and bus). Also what `check-config` refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use routemesh_proto::v1::{FeedbackRequest, GenerateRequest, GenerationParams};
use routemesh_tests::*;
use tonic::Code;

/// Three primaries, no replicas, each keeping nothing on disk but its
/// nodes file (so that a restarted node rejoins with its slots).
struct Cluster {
    dir: tempfile::TempDir,
    /// Each node's client port and cluster bus port (both free ports: the
    /// default bus port, client port + 10000, may be taken or beyond 65535).
    ports: Vec<(u16, u16)>,
    nodes: Vec<Option<OwnRedis>>,
}

impl Cluster {
    async fn start() -> Self {
        let cluster = Self::start_nodes(|_| Vec::new());
        cluster.create(&[]);
        cluster.wait_ok().await;
        cluster
    }

    /// Three cluster-enabled nodes, each with `args(dir)` added, not yet
    /// joined.
    fn start_nodes(args: impl Fn(&Path) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let extra = args(dir.path());
        let nodes = ports
            .iter()
            .map(|&ports| Some(start_node(dir.path(), ports, &extra)))
            .collect();
        Cluster { dir, ports, nodes }
    }

    /// Joins the nodes into one cluster, every slot assigned (`cli` are
    /// redis-cli's connection options, e.g. TLS).
    fn create(&self, cli: &[String]) {
        let mut create = Command::new("redis-cli");
        create.args(cli).arg("--cluster").arg("create");
        for (port, _) in &self.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i].0)
    }

    /// Until every node says `cluster_state:ok`.
    async fn wait_ok(&self) {
        for i in 0..self.ports.len() {
            let url = self.url(i);
            eventually(Duration::from_secs(30), "cluster_state:ok", || {
                let url = url.clone();
                async move {
                    node_command(&url, &["CLUSTER", "INFO"])
                        .await
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                }
            })
            .await;
        }
    }

    /// The node (index) that owns `slot`, as that node itself says.
    async fn owner_of(&self, slot: u16) -> usize {
        for i in 0..self.ports.len() {
            let nodes = node_command(&self.url(i), &["CLUSTER", "NODES"])
                .await
                .unwrap();
            let mine = nodes.lines().find(|l| l.contains("myself")).unwrap();
            let owns = mine.split_whitespace().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if owns {
                return i;
            }
        }
        panic!("no node owns slot {slot}");
    }

    /// Every key on every node matching `pattern`.
    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut all = Vec::new();
        for i in 0..self.ports.len() {
            let client = redis::Client::open(self.url(i)).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            all.extend(keys);
        }
        all
    }

    async fn keyslot(&self, key: &str) -> u16 {
        let client = redis::Client::open(self.url(0)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    fn stop(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// On the same port, with the same nodes file: it rejoins with its slots
    /// (and without their data: nothing is persisted).
    fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(start_node(self.dir.path(), self.ports[i], &[]));
    }
}

/// A cluster-enabled redis-server on `port` (its bus on `bus`); `extra`
/// arguments come last (so `--port 0` there leaves only a TLS port).
fn start_node(dir: &Path, (port, bus): (u16, u16), extra: &[String]) -> OwnRedis {
    let nodes_file = dir.join(format!("nodes-{port}.conf"));
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus.to_string(),
        "--cluster-config-file",
        &nodes_file.display().to_string(),
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.replace("{port}", &port.to_string())));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    OwnRedis::start_with(port, &args).expect("redis-server starts")
}

/// One command on one node, its reply as text (`None` if it did not answer).
async fn node_command(url: &str, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.ok()
}

const FAST: &str =
    "{ttft_ms: {median: 1}, tokens_per_second: {median: 0}, output_tokens: {median: 8}, seed: 1}";

fn registry(cluster: &Cluster, mesh: &str) -> String {
    format!(
        "registry:\n  redis:\n    cluster: true\n    urls: [{}, {}]\n    mesh: {mesh}\n",
        cluster.url(0),
        cluster.url(1)
    )
}

fn tenant_request(tenant: &str) -> GenerateRequest {
    GenerateRequest {
        tenant: tenant.into(),
        params: Some(GenerationParams {
            max_tokens: Some(8),
            ..Default::default()
        }),
        ..ask("How are you today?")
    }
}

fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_runs_on_a_redis_cluster_and_rides_out_a_node_restart() {
    let mut cluster = Cluster::start().await;
    // The cluster is this test's own: a fixed mesh name keeps the slots
    // (and so which node the restart hits) the same on every run.
    let mesh = "cluster-mesh";
    let reg = registry(&cluster, mesh);
    let worker_yaml = |id: &str, model: &str, tier: &str| {
        format!(
            "{reg}{}",
            sim_worker_yaml(None, id, model, tier, FAST).trim_start()
        )
    };
    let _small = Process::start(
        "small",
        "worker",
        &worker_yaml("small-0", "small-model", "small"),
        &[],
    )
    .unwrap();
    let _large = Process::start(
        "large",
        "worker",
        &worker_yaml("large-0", "large-model", "large"),
        &[],
    )
    .unwrap();
    let tenants = "  tenants:\n    paced: {requests_per_minute: 5}\n    capped: {budget_usd_per_day: 0.001}\n    roomy: {requests_per_minute: 100000}\n";
    let gateway_yaml = format!("{reg}{}", gateway_yaml_with(None, tenants));
    let gw1 = Process::start("gw-1", "gateway", &gateway_yaml, &[]).unwrap();
    let gw2 = Process::start("gw-2", "gateway", &gateway_yaml, &[]).unwrap();

    // Workers register through the cluster and both replicas route to them.
    wait_for_pool(&gw1.gateway_url(), 2).await;
    wait_for_pool(&gw2.gateway_url(), 2).await;
    let mut c1 = gateway_client(&gw1.gateway_url()).await;
    let mut c2 = gateway_client(&gw2.gateway_url()).await;
    for model in ["small-model", "large-model"] {
        let mut req = ask("Name a prime number.");
        req.model = model.into();
        let usage = c1.generate(req).await.unwrap().into_inner().usage.unwrap();
        assert_eq!(usage.model, model);
    }

    // Requests per minute count both replicas (unless a new minute starts
    // the count afresh midway).
    let started = minute_now();
    let mut outcomes = Vec::new();
    for i in 0..12 {
        let client = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        outcomes.push(
            client
                .generate(tenant_request("paced"))
                .await
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_string())),
        );
    }
    if started == minute_now() {
        assert!(outcomes[..5].iter().all(Result::is_ok), "{outcomes:?}");
        assert!(
            outcomes[5..].iter().all(|o| o
                .as_ref()
                .is_err_and(|(code, msg)| *code == Code::ResourceExhausted
                    && msg.contains("requests_per_minute"))),
            "{outcomes:?}"
        );
    }
    // A budget spent through one replica is refused by the other.
    let mut spent = 0.0;
    loop {
        match c1.generate(tenant_request("capped")).await {
            Ok(answer) => spent += answer.into_inner().usage.unwrap().cost_usd,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
        }
        assert!(spent < 0.001, "spent {spent} of a 0.001 budget");
    }
    let refused = c2.generate(tenant_request("capped")).await.unwrap_err();
    assert!(
        refused.message().contains("budget_usd_per_day"),
        "{refused:?}"
    );

    // Each tenant's limit keys share one slot, not the mesh's and not the
    // other tenant's.
    let mesh_slot = cluster.keyslot(&format!("rm:v1:{{{mesh}}}:x")).await;
    let mut slots: HashMap<&str, BTreeSet<u16>> = HashMap::new();
    for tenant in ["paced", "capped"] {
        let keys = cluster
            .keys(&format!("rm:v1:{{{mesh}:t:{tenant}}}:lim:*"))
            .await;
        assert!(!keys.is_empty(), "no limit keys of {tenant}");
        for key in keys {
            slots
                .entry(tenant)
                .or_default()
                .insert(cluster.keyslot(&key).await);
        }
    }
    assert_eq!(slots["paced"].len(), 1, "{slots:?}");
    assert_eq!(slots["capped"].len(), 1, "{slots:?}");
    assert_ne!(slots["paced"], slots["capped"]);
    assert!(!slots["paced"].contains(&mesh_slot) && !slots["capped"].contains(&mesh_slot));
    assert!(
        cluster
            .keys(&format!("rm:v1:{{{mesh}}}:lim:*"))
            .await
            .is_empty(),
        "limit keys under the mesh's own tag"
    );

    // Telemetry is shared: what gateway 1 served shows in the snapshot
    // every replica reads (here through the CLI, a third reader).
    let cli_config = gateway_yaml.clone();
    eventually(Duration::from_secs(15), "shared telemetry", || {
        let cli_config = cli_config.clone();
        async move {
            let out = run_cli(&["telemetry", "--json"], &cli_config);
            let snapshot: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            snapshot["models"]["small-model"]["requests"]
                .as_f64()
                .is_some_and(|n| n >= 1.0)
                && snapshot["models"]["large-model"]["requests"]
                    .as_f64()
                    .is_some_and(|n| n >= 1.0)
        }
    })
    .await;

    // Feedback on a request served by gateway 1 is accepted by gateway 2.
    let mut req = ask("Name a prime number.");
    req.model = "small-model".into();
    let id = c1.generate(req).await.unwrap().into_inner().request_id;
    let feedback = FeedbackRequest {
        request_id: id,
        score: 0.8,
        comment: String::new(),
    };
    eventually(
        Duration::from_secs(10),
        "gateway 2 accepts the feedback",
        || {
            let (mut c, feedback) = (c2.clone(), feedback.clone());
            async move { c.feedback(feedback).await.is_ok() }
        },
    )
    .await;

    // Restart the node that holds the mesh's slot (registry, telemetry,
    // sessions) while requests flow through both replicas.
    let victim = cluster.owner_of(mesh_slot).await;
    let flowing = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (flowing, sent) = (flowing.clone(), sent.clone());
        let (c1, c2) = (c1.clone(), c2.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0u64;
            while flowing.load(Ordering::Relaxed) {
                let mut client = if i.is_multiple_of(2) {
                    c1.clone()
                } else {
                    c2.clone()
                };
                i += 1;
                let outcome = tokio::time::timeout(
                    Duration::from_secs(15),
                    client.generate(tenant_request("roomy")),
                )
                .await
                .map(|r| {
                    r.map(|_| ())
                        .map_err(|s| (s.code(), s.message().to_string()))
                });
                outcomes.push(outcome);
                sent.fetch_add(1, Ordering::Relaxed);
            }
            outcomes
        })
    };
    // Some requests before the restart, some during, some after.
    eventually(Duration::from_secs(10), "load flowing", || {
        let sent = sent.load(Ordering::Relaxed);
        async move { sent >= 5 }
    })
    .await;
    cluster.stop(victim);
    // Requests keep being answered or refused while the node is down: a
    // good number of them, not just one that slipped through.
    let before = sent.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(60),
        "requests flow while a node is down",
        || {
            let sent = sent.load(Ordering::Relaxed);
            async move { sent >= before + 30 }
        },
    )
    .await;
    cluster.restart(victim);
    cluster.wait_ok().await;
    // The restarted node lost its data: workers announce themselves again,
    // and both replicas serve them.
    eventually(
        Duration::from_secs(30),
        "both replicas serve after the restart",
        || {
            let (mut a, mut b) = (c1.clone(), c2.clone());
            async move {
                let mut ok = true;
                for model in ["small-model", "large-model"] {
                    let mut req = ask("hi");
                    req.model = model.into();
                    ok &= a.generate(req.clone()).await.is_ok() && b.generate(req).await.is_ok();
                }
                ok
            }
        },
    )
    .await;
    flowing.store(false, Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    let answered = outcomes.iter().filter(|o| matches!(o, Ok(Ok(())))).count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Err(refusal)) => Some(refusal.clone()),
            _ => None,
        })
        .collect();
    assert!(
        outcomes.iter().all(Result::is_ok),
        "a request went unanswered for 15 s (lost): {} of {}",
        outcomes.iter().filter(|o| o.is_err()).count(),
        outcomes.len()
    );
    assert!(answered > 0, "{refused:?}");
    for (code, message) in &refused {
        assert!(
            matches!(code, Code::Unavailable | Code::ResourceExhausted) && !message.is_empty(),
            "an unclear refusal: {code:?} {message:?}"
        );
    }
    eprintln!(
        "restart of node {victim} under load: {} sent, {answered} answered, {} refused ({:?}), 0 lost",
        outcomes.len(),
        refused.len(),
        refused
            .iter()
            .map(|(c, _)| format!("{c:?}"))
            .collect::<BTreeSet<_>>()
    );
    // No command hit keys of two slots at once; the outage was seen.
    let logs = format!("{}{}", gw1.log(), gw2.log());
    assert!(!logs.contains("CROSSSLOT"), "{logs}");
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!("{logs}");
    }
}

/// A cluster whose nodes speak only TLS and ask for client certificates
/// (their bus too): the mesh reaches every node it discovers with the
/// configured CA and client certificate; a limited tenant's admission (with
/// `limits_fail_open: false`, so only a script call that ran admits it)
/// and the registry work there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_runs_on_a_redis_cluster_over_mutual_tls() {
    let pki_dir = tempfile::tempdir().unwrap();
    let d = pki_dir.path();
    pki(d, &["redis", "routemesh"]);
    let p = |f: &str| d.join(f).display().to_string();
    let cluster = Cluster::start_nodes(|_| {
        [
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cluster",
            "yes",
            "--tls-cert-file",
            &p("redis.pem"),
            "--tls-key-file",
            &p("redis.key"),
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "yes",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    });
    let cli: Vec<String> = [
        "--tls",
        "--cacert",
        &p("ca.pem"),
        "--cert",
        &p("redis.pem"),
        "--key",
        &p("redis.key"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    cluster.create(&cli);
    for (port, _) in &cluster.ports {
        eventually(Duration::from_secs(30), "cluster_state:ok over TLS", || {
            let out = Command::new("redis-cli")
                .args(&cli)
                .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                .output()
                .unwrap();
            let ok = String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok");
            async move { ok }
        })
        .await;
    }
    let yaml = format!(
        "registry:\n  redis:\n    cluster: true\n    url: rediss://127.0.0.1:{}\n    mesh: tls-cluster\n    tls: {{ca: {}, cert: {}, key: {}}}\n{}{}",
        cluster.ports[0].0,
        p("ca.pem"),
        p("routemesh.pem"),
        p("routemesh.key"),
        gateway_yaml_with(
            None,
            "  limits_fail_open: false\n  tenants:\n    paced: {requests_per_minute: 1000}\n"
        ),
        sim_worker_yaml(None, "small-0", "small-model", "small", FAST),
    );
    let up = Process::start("up", "up", &yaml, &[]).unwrap();
    wait_for_pool(&up.gateway_url(), 1).await;
    let mut client = gateway_client(&up.gateway_url()).await;
    for _ in 0..3 {
        let answer = client
            .generate(tenant_request("paced"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.usage.unwrap().model, "small-model");
    }
}

#[test]
fn check_config_refuses_what_a_cluster_cannot_do() {
    let check = |redis: &str| {
        let out = check_config(&format!("registry:\n  redis:\n{redis}"));
        assert!(!out.status.success(), "accepted: {redis}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let cases = [
        (
            "    cluster: true\n    url: unix:///run/redis.sock\n",
            "registry.redis.url: a Redis Cluster is reached over TCP",
        ),
        (
            "    urls: [redis://a:7000, redis://b:7000]\n",
            "registry.redis.urls: several seed nodes are for a Redis Cluster",
        ),
        (
            "    cluster: true\n    urls: []\n",
            "registry.redis.urls: is empty",
        ),
        (
            "    cluster: true\n    url: redis://a:7000\n    urls: [redis://b:7000]\n",
            "registry.redis.urls: give one seed node as `url` or several as `urls`, not both",
        ),
        (
            "    cluster: true\n    urls: [redis://a:7000, redis://b:7000/2]\n",
            "registry.redis.urls[1]: \"redis://b:7000/2\": a Redis Cluster has only database 0",
        ),
        (
            "    cluster: true\n    urls: [redis://a:7000]\n    tls: {}\n",
            "registry.redis.tls: needs a rediss:// url",
        ),
        ("    mesh: m\n", "registry.redis.url: is missing"),
    ];
    for (redis, needle) in cases {
        let err = check(redis);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let ok = check_config(
        "registry:\n  redis:\n    cluster: true\n    urls: [rediss://a:7000, rediss://b:7000]\n    tls: {reload_interval: 30s}\n",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
