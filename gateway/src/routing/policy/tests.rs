//! The policies' decisions and explanations on small hand-made pools.

use std::collections::HashMap;

use routemesh_mesh::{ModelSpec, Tier};

use super::*;

fn small() -> ModelSpec {
    ModelSpec {
        name: "small".into(),
        tier: Tier::Small,
        input_usd_per_mtok: 0.1,
        output_usd_per_mtok: 0.1,
        quality_prior: None,
        router_model: None,
        params_b: None,
    }
}

fn large() -> ModelSpec {
    ModelSpec {
        name: "large".into(),
        tier: Tier::Large,
        input_usd_per_mtok: 10.0,
        output_usd_per_mtok: 30.0,
        quality_prior: None,
        router_model: None,
        params_b: None,
    }
}

fn view<'a>(id: &'a str, model: &'a ModelSpec, in_flight: u32) -> WorkerView<'a> {
    WorkerView {
        worker_id: id,
        model,
        capabilities: routemesh_mesh::Capabilities::UNDECLARED,
        health: Health::Up,
        gateway_in_flight: in_flight,
        reported_in_flight: 0,
        queue_depth: 0,
        capacity: 4,
        max_queue: 4,
        ttft_ms_p50: 0.0,
        tokens_per_second_p50: 0.0,
        latency_source: LatencySource::Unknown,
        error_rate: 0.0,
        observed_latency_ms_p50: None,
        declared_ttft_ms: None,
        declared_tokens_per_second: None,
    }
}

const NO_NEEDS: routemesh_mesh::Needs = routemesh_mesh::Needs {
    tools: false,
    json_output: false,
    structured_output: false,
    vision: false,
    logprobs: false,
    prompt_tokens: 100,
    max_tokens: 256,
};

fn input(hints: &Hints) -> RouteInput<'_> {
    RouteInput {
        prompt_tokens: 100,
        max_tokens: 256,
        needs: &NO_NEEDS,
        hints,
        pinned_model: None,
        predicted_quality: None,
        cost_weight: None,
    }
}

#[test]
fn least_loaded_prefers_idle_worker_then_cheaper() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [view("s1", &s, 3), view("s2", &s, 1), view("l1", &l, 1)];
    let d = LeastLoaded.decide(&input(&hints), &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.worker_id.as_str()),
        Some("s2")
    );
}

#[test]
fn utility_trades_quality_for_cost() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [view("s1", &s, 0), view("l1", &l, 0)];
    // Priors: small 0.55, large 0.80; large costs ~0.0087 USD -> 0.17 at λ=20.
    let d = UtilityPolicy::default().decide(&input(&hints), &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("large")
    );
    let pricey = UtilityPolicy {
        cost_weight: 100.0,
        ..Default::default()
    };
    let d = pricey.decide(&input(&hints), &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("small")
    );
    assert!(d.reason.contains("prior"), "{}", d.reason);
}

#[test]
fn predictions_override_priors() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [view("s1", &s, 0), view("l1", &l, 0)];
    let p = Prediction {
        quality: 0.9,
        source: QualitySource::Router,
    };
    let predicted = HashMap::from([("small".to_string(), p), ("large".to_string(), p)]);
    let mut inp = input(&hints);
    inp.predicted_quality = Some(&predicted);
    let d = UtilityPolicy::default().decide(&inp, &workers);
    let chosen = d
        .chosen_candidate()
        .map(|c| (c.model.as_str(), c.quality_source));
    assert_eq!(chosen, Some(("small", QualitySource::Router)));
}

#[test]
fn hints_exclude_with_named_reasons() {
    let (s, l) = (small(), large());
    let workers = [view("s1", &s, 0), view("l1", &l, 0)];
    let hints = Hints {
        max_cost_usd: Some(0.001),
        ..Default::default()
    };
    let d = UtilityPolicy::default().decide(&input(&hints), &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("small")
    );
    assert!(matches!(
        d.candidates[1].excluded,
        Some(Exclusion::OverMaxCost { .. })
    ));
    assert!(
        d.candidates[1]
            .excluded
            .as_ref()
            .is_some_and(|e| e.to_string().contains("max_cost_usd"))
    );

    let hints = Hints {
        quality_floor: Some(0.99),
        ..Default::default()
    };
    let d = UtilityPolicy::default().decide(&input(&hints), &workers);
    assert_eq!(d.chosen, Err(NoCandidate::HintsUnsatisfiable));
    assert!(d.reason.contains("quality_floor"), "{}", d.reason);

    let hints = Hints {
        allowed_tiers: vec![Tier::Large],
        ..Default::default()
    };
    let d = LeastLoaded.decide(&input(&hints), &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("large")
    );
}

#[test]
fn unhealthy_or_full_is_unavailable_not_unsatisfiable() {
    let s = small();
    let mut w = view("s1", &s, 0);
    w.health = Health::Down;
    let hints = Hints::default();
    let d = LeastLoaded.decide(&input(&hints), &[w]);
    assert_eq!(d.chosen, Err(NoCandidate::Unavailable));
    let full = view("s2", &s, 8);
    let d = LeastLoaded.decide(&input(&hints), &[full]);
    assert_eq!(d.chosen, Err(NoCandidate::Saturated));
    let d = LeastLoaded.decide(&input(&hints), &[]);
    assert_eq!(d.chosen, Err(NoCandidate::EmptyPool));
}

#[test]
fn pinned_model_only() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [view("s1", &s, 0), view("l1", &l, 3)];
    let mut inp = input(&hints);
    inp.pinned_model = Some("large");
    let d = LeastLoaded.decide(&inp, &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.worker_id.as_str()),
        Some("l1")
    );
}

#[test]
fn failing_workers_lose_traffic() {
    let s = small();
    let hints = Hints::default();
    let mut failing = view("s1", &s, 0);
    failing.error_rate = 0.5;
    let healthy = view("s2", &s, 1);
    let d = UtilityPolicy::default().decide(&input(&hints), &[failing, healthy]);
    assert_eq!(
        d.chosen_candidate().map(|c| c.worker_id.as_str()),
        Some("s2")
    );
    assert!(d.reason.contains("error rate 0.000"), "{}", d.reason);
}

#[test]
fn a_tenant_cost_weight_overrides_the_policy() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [view("s1", &s, 0), view("l1", &l, 0)];
    let mut inp = input(&hints);
    inp.cost_weight = Some(100.0);
    let d = UtilityPolicy::default().decide(&inp, &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("small")
    );
}

#[test]
fn threshold_routing_picks_strong_only_past_the_gap() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [view("s1", &s, 0), view("l1", &l, 0)];
    let predicted = HashMap::from([
        (
            "small".to_string(),
            Prediction {
                quality: 0.5,
                source: QualitySource::Router,
            },
        ),
        (
            "large".to_string(),
            Prediction {
                quality: 0.7,
                source: QualitySource::Router,
            },
        ),
    ]);
    let mut inp = input(&hints);
    inp.predicted_quality = Some(&predicted);
    let d = Threshold(0.1).decide(&inp, &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("large")
    );
    assert!(d.reason.contains(">= threshold 0.1"), "{}", d.reason);
    let d = Threshold(0.3).decide(&inp, &workers);
    assert_eq!(
        d.chosen_candidate().map(|c| c.model.as_str()),
        Some("small")
    );
    assert_eq!(d.policy, "threshold");
}

#[test]
fn latency_slo_uses_reported_speed() {
    let s = small();
    let mut w = view("s1", &s, 0);
    w.ttft_ms_p50 = 100.0;
    w.tokens_per_second_p50 = 50.0;
    // 100 ms + 256 tokens / 50 tok/s = 5.22 s.
    let hints = Hints {
        latency_slo_ms: Some(1000),
        ..Default::default()
    };
    let d = LeastLoaded.decide(&input(&hints), &[w]);
    assert!(matches!(
        d.candidates[0].excluded,
        Some(Exclusion::OverLatencySlo { slo_ms: 1000, .. })
    ));
}

#[test]
fn an_open_breaker_is_named_and_makes_the_pool_unavailable() {
    let s = small();
    let mut w = view("s1", &s, 0);
    w.health = Health::CircuitOpen { half_open: false };
    let hints = Hints::default();
    let d = LeastLoaded.decide(&input(&hints), &[w]);
    assert_eq!(d.chosen, Err(NoCandidate::Unavailable));
    let why = d.candidates[0].excluded.as_ref().map(ToString::to_string);
    assert_eq!(
        why.as_deref(),
        Some("circuit breaker open (recent calls failed)")
    );
}

fn measured<'a>(id: &'a str, model: &'a ModelSpec, ttft_ms: f64, tps: f64) -> WorkerView<'a> {
    let mut w = view(id, model, 0);
    w.ttft_ms_p50 = ttft_ms;
    w.tokens_per_second_p50 = tps;
    w.latency_source = LatencySource::Telemetry;
    w
}

fn candidate<'d>(d: &'d Decision, id: &str) -> &'d CandidateScore {
    d.candidates
        .iter()
        .find(|c| c.worker_id == id)
        .unwrap_or_else(|| panic!("no candidate {id}"))
}

#[test]
fn a_fresh_worker_is_never_instant() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let d = LeastLoaded.decide(&input(&hints), &[view("s1", &s, 0), view("l1", &l, 0)]);
    for (id, tier) in [("s1", Tier::Small), ("l1", Tier::Large)] {
        let c = candidate(&d, id);
        let speed = tier_default_speed(tier);
        let want = speed.ttft_ms + 256.0 * 1000.0 / speed.tokens_per_second;
        assert_eq!(c.latency_source, LatencySource::TierDefault);
        assert_eq!(c.expected_latency_ms, Some(want));
        assert!(want > 0.0);
    }
    // The utility explanation names the source, not "unknown".
    let d = UtilityPolicy::default().decide(&input(&hints), &[view("s1", &s, 0)]);
    assert!(d.reason.contains("(tier-default)"), "{}", d.reason);
}

#[test]
fn declared_figures_come_before_the_tier() {
    let s = small();
    let mut w = view("s1", &s, 0);
    w.declared_ttft_ms = Some(120.0);
    w.declared_tokens_per_second = Some(40.0);
    let hints = Hints::default();
    let d = LeastLoaded.decide(&input(&hints), &[w, measured("s2", &s, 50.0, 100.0)]);
    let c = candidate(&d, "s1");
    assert_eq!(c.latency_source, LatencySource::Declared);
    // 120 ms + 256 tokens at 40 tok/s.
    assert_eq!(c.expected_latency_ms, Some(120.0 + 6400.0));

    // Only a time to first token declared: the decode speed is the tier's.
    let mut half = view("s3", &s, 0);
    half.declared_ttft_ms = Some(10.0);
    let d = LeastLoaded.decide(&input(&hints), &[half]);
    let c = candidate(&d, "s3");
    let tps = tier_default_speed(Tier::Small).tokens_per_second;
    assert_eq!(c.latency_source, LatencySource::Declared);
    assert_eq!(c.expected_latency_ms, Some(10.0 + 256.0 * 1000.0 / tps));
}

#[test]
fn an_unmeasured_worker_gets_its_tiers_median() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let workers = [
        measured("s1", &s, 100.0, 50.0),
        measured("s2", &s, 300.0, 100.0),
        measured("s3", &s, 200.0, 200.0),
        // A measured large worker does not count for the small tier.
        measured("l1", &l, 5.0, 1000.0),
        view("s4", &s, 0),
    ];
    let d = LeastLoaded.decide(&input(&hints), &workers);
    let c = candidate(&d, "s4");
    assert_eq!(c.latency_source, LatencySource::TierMedian);
    // Medians: 200 ms and 100 tok/s.
    assert_eq!(c.expected_latency_ms, Some(200.0 + 2560.0));
    assert_eq!(candidate(&d, "s1").latency_source, LatencySource::Telemetry);
}

#[test]
fn latency_slo_excludes_an_unobserved_slow_worker() {
    // The case: a 49B model declared at 120 ms and 40 tok/s never
    // meets latency_slo_ms 1, although nobody has called it yet.
    let (s, l) = (small(), large());
    let mut slow = view("l1", &l, 0);
    slow.declared_ttft_ms = Some(120.0);
    slow.declared_tokens_per_second = Some(40.0);
    let hints = Hints {
        latency_slo_ms: Some(1),
        ..Default::default()
    };
    let d = UtilityPolicy::default().decide(&input(&hints), std::slice::from_ref(&slow));
    assert_eq!(d.chosen, Err(NoCandidate::HintsUnsatisfiable));
    assert!(d.reason.contains("latency_slo_ms 1"), "{}", d.reason);

    // A declared fast worker takes a request the slow one cannot meet.
    let mut fast = view("s1", &s, 0);
    fast.declared_ttft_ms = Some(20.0);
    fast.declared_tokens_per_second = Some(500.0);
    let hints = Hints {
        latency_slo_ms: Some(1000),
        ..Default::default()
    };
    let d = UtilityPolicy::default().decide(&input(&hints), &[slow, fast]);
    assert_eq!(
        d.chosen_candidate().map(|c| c.worker_id.as_str()),
        Some("s1")
    );
    assert!(matches!(
        candidate(&d, "l1").excluded,
        Some(Exclusion::OverLatencySlo { slo_ms: 1000, .. })
    ));
}

#[test]
fn the_utility_no_longer_prefers_unused_workers() {
    // A measured worker at the tier's typical speed against an unused one
    // of the same tier: the unused one is not assumed faster (it gets the
    // tier median), so the tie goes by load, cost and id, not by ignorance.
    let s = small();
    let hints = Hints::default();
    let d = UtilityPolicy::default().decide(
        &input(&hints),
        &[view("a-unused", &s, 0), measured("b-used", &s, 100.0, 80.0)],
    );
    let (unused, used) = (candidate(&d, "a-unused"), candidate(&d, "b-used"));
    assert_eq!(unused.expected_latency_ms, used.expected_latency_ms);
    assert_eq!(unused.score, used.score);
}

#[test]
fn workers_that_cannot_serve_the_request_are_left_out_with_the_reason() {
    let (s, l) = (small(), large());
    let hints = Hints::default();
    let mut short = view("s1", &s, 0);
    short.capabilities = routemesh_mesh::Capabilities {
        tools: false,
        context_tokens: Some(4096),
        ..routemesh_mesh::Capabilities::OPENAI_ENGINE
    };
    let workers = [short, view("l1", &l, 0)];
    let pricey = UtilityPolicy {
        cost_weight: 100.0,
        ..Default::default()
    };
    let long = routemesh_mesh::Needs {
        prompt_tokens: 5951,
        ..NO_NEEDS
    };
    let d = pricey.decide(
        &RouteInput {
            needs: &long,
            ..input(&hints)
        },
        &workers,
    );
    // The small model would win on cost, but the prompt does not fit it.
    assert_eq!(
        d.chosen_candidate().map(|c| c.worker_id.as_str()),
        Some("l1")
    );
    assert_eq!(
        d.candidates[0]
            .excluded
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("context 4096 < prompt 5951 + max_tokens 256")
    );
    // Pinned to the model that cannot call tools: nobody, and why.
    let tools = routemesh_mesh::Needs {
        tools: true,
        ..NO_NEEDS
    };
    let d = pricey.decide(
        &RouteInput {
            needs: &tools,
            pinned_model: Some("small"),
            ..input(&hints)
        },
        &workers,
    );
    assert_eq!(d.chosen, Err(NoCandidate::HintsUnsatisfiable));
    assert!(d.reason.contains("no tool calling"), "{}", d.reason);
}
