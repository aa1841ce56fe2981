//! `routemesh bench`: a load generator for the gateway, a worker, or any
//! OpenAI-compatible HTTP server.
//!
//! Open loop (`--rate`) sends requests at fixed intervals whatever the server
//! does, and measures each latency from the time the request was *scheduled*,
//! so a server that stalls cannot make its queue invisible by slowing the
//! generator down (no coordinated omission). Closed loop (`--concurrency`)
//! runs N clients back to back, for finding the throughput ceiling.
//!
//! The generator shares the machine with what it measures, so it is kept
//! cheap: requests are built once, a few long-lived connections carry them,
//! and the report says how late the generator itself sent (`send_lag_ms`)
//! and what the load average was.

pub mod stats;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio_util::task::TaskTracker;

use stats::{Outcome, Recorder, Report, RunMeta, loadavg};
use target::{RequestSpec, Target, TargetKind};

/// Arguments of `routemesh bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to call.
    #[arg(long, value_enum, default_value = "generate")]
    pub target: TargetKind,
    /// The server: `host:port` or `http://host:port` (for `http` targets the
    /// base URL, without `/v1`).
    #[arg(long)]
    pub url: String,
    /// Open loop: requests per second, evenly spaced.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: this many clients, each sending its next request when the
    /// last one is answered.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load sent before measuring (connections, caches, allocators warm up).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Connections to open (gRPC: HTTP/2 connections that requests are spread
    /// over; HTTP: client pools).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// HTTP targets: speak HTTP/2 without upgrade (h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    /// The prompt every request carries.
    #[arg(long, default_value = "What is the capital of France?")]
    pub prompt: String,
    /// Prompts to cycle through instead of `--prompt` (gateway gRPC targets):
    /// a JSONL file with a `prompt` field per line, as the routing data, or
    /// plain text with one prompt per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Append the request's sequence number to the prompt (gateway gRPC
    /// targets), so no two prompts are alike and the router's prompt cache
    /// never hits: the learned router runs on every request.
    #[arg(long)]
    pub unique_prompts: bool,
    /// Model field: empty lets the gateway route (HTTP: `router`); worker
    /// targets ask the worker for its model when empty.
    #[arg(long, default_value = "")]
    pub model: String,
    /// `max_tokens` of every request (unset: the server's default).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sent as `authorization: Bearer <key>`.
    #[arg(long, env = "ROUTEMESH_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Each request's deadline.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Open loop: requests in flight beyond which new ones are counted as
    /// failed instead of sent (the server fell behind; memory stays bounded).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Print the report as JSON instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs one benchmark and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

/// The prompts of `--prompts`: each line's `prompt` field when it is a JSON object with one, else the
/// line itself; blank lines skipped.
fn read_prompts(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("prompt")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| l.to_owned())
        })
        .collect();
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

/// Runs one benchmark and returns its report.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let mode = match (args.rate, args.concurrency) {
        (Some(rate), _) if !(rate > 0.0 && rate <= 1_000_000.0) => {
            bail!("--rate must be in (0, 1000000] requests per second")
        }
        (Some(_), _) => "open-loop",
        (None, Some(0)) => bail!("--concurrency must be at least 1"),
        (None, Some(_)) => "closed-loop",
        (None, None) => bail!("give --rate (open loop) or --concurrency (closed loop)"),
    };
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let url = if args.url.contains("://") {
        args.url.clone()
    } else {
        format!("http://{}", args.url)
    };
    let spec = RequestSpec {
        prompt: args.prompt.clone(),
        prompts: match &args.prompts {
            Some(path) => read_prompts(path)?.into(),
            None => Vec::new().into(),
        },
        unique_prompts: args.unique_prompts,
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        api_key: args.api_key.clone(),
        timeout: args.timeout,
    };
    let (target, model) =
        Target::connect(args.target, &url, args.connections, args.http2, &spec).await?;
    let target = Arc::new(target);
    let recorder = Arc::new(Recorder::new()?);
    let loadavg_before = loadavg();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        + args.warmup.as_secs_f64();
    match (args.rate, args.concurrency) {
        (Some(rate), _) => open_loop(&target, &recorder, rate, args).await?,
        (None, Some(clients)) => closed_loop(&target, &recorder, clients, args).await,
        (None, None) => {}
    }
    Ok(recorder.finish(RunMeta {
        target: args.target.name().into(),
        url,
        model,
        mode,
        rate: args.rate,
        concurrency: args.concurrency,
        connections: args.connections.max(1),
        duration: args.duration,
        warmup: args.warmup,
        started_unix,
        loadavg_before,
        loadavg_after: loadavg(),
    }))
}

/// Sends requests at fixed intervals from a thread of its own: a blocking
/// sleep there wakes within tens of microseconds, where tokio's timer has
/// millisecond granularity, which would blur sub-millisecond comparisons.
async fn open_loop(
    target: &Arc<Target>,
    recorder: &Arc<Recorder>,
    rate: f64,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let total = ((args.warmup + args.duration).as_secs_f64() * rate).round() as usize;
    // A short lead so the first requests are not late before the loop runs.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + args.warmup;
    // Counted by index, so the number of measured requests is exact.
    let warm = (args.warmup.as_secs_f64() * rate).round() as usize;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let tracker = TaskTracker::new();
    let handle = tokio::runtime::Handle::current();
    let scheduler = {
        let (target, recorder, in_flight, tracker) = (
            target.clone(),
            recorder.clone(),
            in_flight.clone(),
            tracker.clone(),
        );
        let max_in_flight = args.max_in_flight;
        std::thread::Builder::new()
            .name("bench-scheduler".into())
            .spawn(move || {
                for i in 0..total {
                    let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                        if i >= warm {
                            recorder.record_dropped();
                        }
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (target, recorder, in_flight) =
                        (target.clone(), recorder.clone(), in_flight.clone());
                    tracker.spawn_on(
                        async move {
                            let sent = Instant::now();
                            let outcome = target.call(i, sent).await;
                            let done = Instant::now();
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                            if i >= warm {
                                recorder.record(
                                    outcome,
                                    sent.saturating_duration_since(scheduled),
                                    done - sent,
                                    done.saturating_duration_since(measure_from),
                                );
                            }
                        },
                        &handle,
                    );
                }
            })
            .context("starting the scheduler thread")?
    };
    // Joining a std thread blocks, so wait for it off the async threads.
    tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))?;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// N clients, each sending its next request as soon as the last is answered.
async fn closed_loop(
    target: &Arc<Target>,
    recorder: &Arc<Recorder>,
    clients: usize,
    args: &BenchArgs,
) {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let tracker = TaskTracker::new();
    for c in 0..clients {
        let (target, recorder) = (target.clone(), recorder.clone());
        tracker.spawn(async move {
            let mut n = c;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = target.call(n, sent).await;
                let done = Instant::now();
                let failed = matches!(outcome, Outcome::Err(_));
                if sent >= measure_from {
                    recorder.record(
                        outcome,
                        Duration::ZERO,
                        done - sent,
                        done.saturating_duration_since(measure_from),
                    );
                }
                if failed {
                    // An instant refusal would otherwise spin a core that
                    // the system under test needs.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                n += clients;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prompts_come_from_jsonl_rows_or_plain_lines() {
        let file =
            std::env::temp_dir().join(format!("routemesh-prompts-{}.jsonl", std::process::id()));
        std::fs::write(
            &file,
            "{\"id\": 1, \"prompt\": \"What is 2+2?\"}\n\nplain text line\n{\"no\": \"prompt\"}\n",
        )
        .unwrap();
        assert_eq!(
            read_prompts(&file).unwrap(),
            ["What is 2+2?", "plain text line", "{\"no\": \"prompt\"}"]
        );
        std::fs::write(&file, "\n  \n").unwrap();
        let err = read_prompts(&file).unwrap_err().to_string();
        assert!(err.contains("holds no prompts"), "{err}");
        std::fs::remove_file(&file).unwrap();
        assert!(read_prompts(&file).is_err());
    }
}
