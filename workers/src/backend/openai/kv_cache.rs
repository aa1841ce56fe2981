//! The engine's KV-cache use, read from its own Prometheus metrics (`GET
//! /metrics` at the server's root): what a worker pool's autoscaler can
//! scale on before requests start to queue. Engines name the figure
//! differently, each a share in [0, 1]; one without any of them reports
//! nothing, and the worker then reports nothing either.

/// The series that carry it: vLLM's (V1 engine, then V0) and SGLang's.
const SERIES: [&str; 3] = [
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

/// Where an engine whose API root is `base_url` (`http://host:port/v1`)
/// serves its metrics: the same server's `/metrics`.
pub(super) fn metrics_url(base_url: &str) -> String {
    let root = base_url.trim_end_matches('/');
    let root = root.strip_suffix("/v1").unwrap_or(root);
    format!("{root}/metrics")
}

/// The mean over the label sets of the first known series present (one per
/// model or data-parallel rank), clamped to [0, 1].
pub(super) fn parse(text: &str) -> Option<f64> {
    SERIES.iter().find_map(|series| {
        let values: Vec<f64> = text
            .lines()
            .filter_map(|line| sample(line, series))
            .collect();
        (!values.is_empty())
            .then(|| (values.iter().sum::<f64>() / values.len() as f64).clamp(0.0, 1.0))
    })
}

/// The value of one sample line of `series` (`name{labels} value [ts]`).
fn sample(line: &str, series: &str) -> Option<f64> {
    let rest = line.strip_prefix(series)?;
    let rest = match rest.chars().next()? {
        // Label values may hold braces: the value follows the last one.
        '{' => &rest[rest.rfind('}')? + 1..],
        c if c.is_whitespace() => rest,
        _ => return None, // another series sharing the prefix
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_url_is_at_the_server_root() {
        assert_eq!(
            metrics_url("http://127.0.0.1:8000/v1"),
            "http://127.0.0.1:8000/metrics"
        );
        assert_eq!(
            metrics_url("http://127.0.0.1:8000/v1/"),
            "http://127.0.0.1:8000/metrics"
        );
        assert_eq!(metrics_url("http://e:1/api"), "http://e:1/api/metrics");
    }

    #[test]
    fn reads_vllm_and_sglang_figures() {
        let vllm = "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
                    # TYPE vllm:kv_cache_usage_perc gauge\n\
                    vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
                    vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.75\n\
                    vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n";
        assert_eq!(parse(vllm), Some(0.5));
        let v0 = "vllm:gpu_cache_usage_perc{model_name=\"a}b\"} 1.5e-1 1712345678\n";
        assert_eq!(parse(v0), Some(0.15));
        assert_eq!(
            parse("sglang:token_usage{model_name=\"m\"} 0.4\n"),
            Some(0.4)
        );
        assert_eq!(parse("sglang:token_usage_total 9\n"), None);
        assert_eq!(parse("vllm:num_requests_running 3\n"), None);
        assert_eq!(parse("vllm:kv_cache_usage_perc NaN\n"), None);
        assert_eq!(parse("vllm:kv_cache_usage_perc 1.2\n"), Some(1.0));
    }
}
