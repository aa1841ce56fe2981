//! Screening: every worker's figures for the request, and whether the
//! request's pin and hints, the worker's health and its load let it serve.

use super::view::TierMedians;
use super::{CandidateScore, Exclusion, Health, Prediction, QualitySource, RouteInput, WorkerView};

/// Every worker scored against the request; `score` is left to the policy.
/// A worker nothing was measured of gets its latency prior here, from the
/// whole pool, so every policy and the SLO see the same figure.
pub(super) fn screen(input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Vec<CandidateScore> {
    let medians = TierMedians::of(workers);
    workers
        .iter()
        .map(|w| {
            let w = &w.with_latency_prior(&medians);
            let model = w.model;
            let Prediction {
                quality: predicted_quality,
                source: quality_source,
            } = input
                .predicted_quality
                .and_then(|p| p.get(&model.name))
                .copied()
                .unwrap_or(Prediction {
                    quality: model.prior_quality(),
                    source: QualitySource::Prior,
                });
            let expected_cost_usd = model.expected_cost_usd(input.prompt_tokens, input.max_tokens);
            let expected_latency_ms = w.expected_latency_ms(input.max_tokens);
            CandidateScore {
                worker_id: w.worker_id.to_string(),
                model: model.name.clone(),
                tier: model.tier,
                predicted_quality,
                quality_source,
                expected_cost_usd,
                expected_latency_ms,
                latency_source: w.latency_source,
                error_rate: w.error_rate,
                load: w.load(),
                score: f64::NEG_INFINITY,
                excluded: exclusion(
                    input,
                    w,
                    predicted_quality,
                    expected_cost_usd,
                    expected_latency_ms,
                ),
            }
        })
        .collect()
}

/// The first reason `w` cannot take the request: what the request asks
/// first, then the worker's health, then its room.
fn exclusion(
    input: &RouteInput<'_>,
    w: &WorkerView<'_>,
    predicted_quality: f64,
    expected_cost_usd: f64,
    expected_latency_ms: Option<f64>,
) -> Option<Exclusion> {
    let hints = input.hints;
    let model = w.model;
    if input.pinned_model.is_some_and(|m| m != model.name) {
        return Some(Exclusion::NotPinned);
    }
    if !hints.allowed_models.is_empty() && !hints.allowed_models.contains(&model.name) {
        return Some(Exclusion::NotAllowedModel);
    }
    if !hints.allowed_tiers.is_empty() && !hints.allowed_tiers.contains(&model.tier) {
        return Some(Exclusion::TierNotAllowed(model.tier));
    }
    if let Some(lack) = w.capabilities.lack(input.needs) {
        return Some(Exclusion::Cannot(lack));
    }
    if let Some(max_usd) = hints.max_cost_usd.filter(|max| expected_cost_usd > *max) {
        return Some(Exclusion::OverMaxCost {
            expected_usd: expected_cost_usd,
            max_usd,
        });
    }
    if let Some(floor) = hints.quality_floor.filter(|f| predicted_quality < *f) {
        return Some(Exclusion::UnderQualityFloor {
            predicted: predicted_quality,
            floor,
        });
    }
    if let (Some(slo_ms), Some(expected_ms)) = (hints.latency_slo_ms, expected_latency_ms)
        && expected_ms > f64::from(slo_ms)
    {
        return Some(Exclusion::OverLatencySlo {
            expected_ms,
            slo_ms,
        });
    }
    match w.health {
        Health::Up => {}
        Health::Down => return Some(Exclusion::Unhealthy),
        Health::CircuitOpen { half_open } => return Some(Exclusion::CircuitOpen { half_open }),
    }
    (!w.has_room()).then_some(Exclusion::Full)
}
