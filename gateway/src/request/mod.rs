//! Turns a client's GenerateRequest into a validated request, or an error that
//! names the field at fault. Nothing downstream re-checks these rules.

mod conversation;

use std::borrow::Cow;

use routemesh_mesh::{Needs, Tier};
use routemesh_proto::v1::{ChatMessage, GenerateRequest, GenerationParams};

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::routing::policy::Hints;
use crate::routing::route::RouteRequest;

/// The model names that ask the router to choose.
pub const ROUTED_MODELS: &[&str] = &["", "router"];

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];
const MAX_STOP: usize = 4;
const MAX_STOP_CHARS: usize = 256;
const MAX_ID_CHARS: usize = 128;
const MAX_TENANT_CHARS: usize = 64;

/// Whether `tenant` is a name a request may carry.
pub(crate) fn valid_tenant(tenant: &str) -> bool {
    tenant.len() <= MAX_TENANT_CHARS
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub request_id: String,
    /// `None` when the router chooses.
    pub pinned_model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
    pub hints: Hints,
    pub tenant: String,
    /// The tenant the request's API key authenticated (`None` without
    /// auth): who owns the request id, and so who may score it. Unlike
    /// `tenant`, never taken from the request itself.
    pub owner: Option<String>,
    pub prompt_chars: usize,
    /// The end user (OpenAI's `user`), forwarded to the engine.
    pub user: String,
    /// Free-form tags, kept in logs and traces.
    pub metadata: std::collections::HashMap<String, String>,
    /// The client's session id (empty: none given).
    pub session_id: String,
    /// What the serving engine must be able to do (tools, formats, images,
    /// log-probs) and the context the request takes.
    pub needs: Needs,
    /// RouteLLM-style threshold routing (model `router-<name>-<threshold>`).
    pub threshold: Option<f64>,
}

impl ValidRequest {
    pub fn max_tokens(&self) -> u32 {
        self.params.max_tokens.unwrap_or(0)
    }

    /// Prompt tokens as the evaluation cost model estimates them: ceil(chars / 4).
    pub fn prompt_tokens_estimate(&self) -> u32 {
        u32::try_from(self.prompt_chars.div_ceil(4)).unwrap_or(u32::MAX)
    }

    /// What a routing decision needs to know of the request.
    pub(crate) fn routing(&self) -> RouteRequest<'_> {
        RouteRequest {
            request_id: &self.request_id,
            prompt_tokens: self.prompt_tokens_estimate(),
            max_tokens: self.max_tokens(),
            needs: &self.needs,
            hints: &self.hints,
            pinned_model: self.pinned_model.as_deref(),
            threshold: self.threshold,
        }
    }

    /// The text the router judges: the last user turn of a one-turn
    /// request, else the conversation's most recent turns.
    pub fn routing_prompt(&self) -> Cow<'_, str> {
        conversation::routing_text(&self.messages)
    }
}

fn tier_from_wire(value: i32, field: &str) -> Result<Tier, GatewayError> {
    Tier::from_wire(value).ok_or_else(|| {
        GatewayError::invalid(
            field,
            format!("{value} is not a tier (TIER_SMALL = 1, TIER_LARGE = 2)"),
        )
    })
}

/// The threshold of a RouteLLM-style model name, `router-<name>-<threshold>`
/// (e.g. `router-mf-0.116`), with the threshold a number in [-1, 1].
pub fn threshold_of(model: &str) -> Option<f64> {
    let rest = model.strip_prefix("router-")?;
    let (head, value) = rest.rsplit_once('-')?;
    // `router-mf--0.2`: the last dash before the number is its sign.
    let value = if head.ends_with('-') {
        format!("-{value}")
    } else {
        value.to_string()
    };
    value
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && (-1.0..=1.0).contains(t))
}

fn valid_id(id: &str) -> bool {
    id.chars().all(|c| c.is_ascii_graphic())
}

/// Validates `req`; `known_models` are the models in the pool now.
pub fn validate(
    req: GenerateRequest,
    config: &GatewayConfig,
    known_models: &[&str],
) -> Result<ValidRequest, GatewayError> {
    let request_id = if req.request_id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else if req.request_id.len() > MAX_ID_CHARS || !valid_id(&req.request_id) {
        return Err(GatewayError::invalid(
            "request_id",
            format!("must be at most {MAX_ID_CHARS} printable ASCII characters without spaces"),
        ));
    } else {
        req.request_id
    };

    let unknown = |field: String, model: &str| GatewayError::UnknownModel {
        field,
        model: model.to_string(),
        known: if known_models.is_empty() {
            "(no models: no worker is registered)".into()
        } else {
            known_models.join(", ")
        },
    };
    let threshold = threshold_of(&req.model);
    let pinned_model = if ROUTED_MODELS.contains(&req.model.as_str()) || threshold.is_some() {
        None
    } else if known_models.contains(&req.model.as_str()) {
        Some(req.model)
    } else {
        return Err(unknown("model".into(), &req.model));
    };

    if req.messages.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "must hold at least one message",
        ));
    }
    if req.messages.len() > config.max_messages {
        return Err(GatewayError::invalid(
            "messages",
            format!(
                "{} messages; at most {} are allowed",
                req.messages.len(),
                config.max_messages
            ),
        ));
    }
    let mut prompt_chars = 0usize;
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(GatewayError::invalid(
                format!("messages[{i}].role"),
                format!("{:?} is not one of {}", m.role, ROLES.join(", ")),
            ));
        }
        prompt_chars += conversation::check_turn(i, m)?;
    }
    if !req.messages.iter().any(|m| m.role == "user") {
        return Err(GatewayError::invalid(
            "messages",
            "must hold at least one user message",
        ));
    }
    if prompt_chars > config.max_prompt_chars {
        return Err(GatewayError::invalid(
            "messages",
            format!(
                "prompt of {prompt_chars} characters exceeds the limit of {}",
                config.max_prompt_chars
            ),
        ));
    }

    let mut params = req.params.unwrap_or_default();
    match params.max_tokens {
        None => params.max_tokens = Some(config.default_max_tokens),
        Some(n) if n == 0 || n > config.max_tokens_limit => {
            return Err(GatewayError::invalid(
                "params.max_tokens",
                format!("{n} is not in [1, {}]", config.max_tokens_limit),
            ));
        }
        Some(_) => {}
    }
    if let Some(t) = params.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(GatewayError::invalid(
            "params.temperature",
            format!("{t} is not in [0, 2]"),
        ));
    }
    if let Some(p) = params.top_p
        && !(p.is_finite() && p > 0.0 && p <= 1.0)
    {
        return Err(GatewayError::invalid(
            "params.top_p",
            format!("{p} is not in (0, 1]"),
        ));
    }
    if params.stop.len() > MAX_STOP {
        return Err(GatewayError::invalid(
            "params.stop",
            format!("{} stop strings; at most {MAX_STOP}", params.stop.len()),
        ));
    }
    for (i, s) in params.stop.iter().enumerate() {
        if s.is_empty() || s.chars().count() > MAX_STOP_CHARS {
            return Err(GatewayError::invalid(
                format!("params.stop[{i}]"),
                format!("must be 1 to {MAX_STOP_CHARS} characters"),
            ));
        }
    }

    conversation::check_params(&params)?;
    conversation::check_tags(&req.user, &req.metadata)?;
    if req.session_id.len() > MAX_ID_CHARS || !valid_id(&req.session_id) {
        return Err(GatewayError::invalid(
            "session_id",
            format!("must be at most {MAX_ID_CHARS} printable ASCII characters without spaces"),
        ));
    }

    let wire = req.hints.unwrap_or_default();
    let mut hints = Hints {
        max_cost_usd: wire.max_cost_usd,
        latency_slo_ms: wire.latency_slo_ms,
        quality_floor: wire.quality_floor,
        ..Hints::default()
    };
    for (i, m) in wire.allowed_models.into_iter().enumerate() {
        if !known_models.contains(&m.as_str()) {
            return Err(unknown(format!("hints.allowed_models[{i}]"), &m));
        }
        hints.allowed_models.push(m);
    }
    for (i, t) in wire.allowed_tiers.into_iter().enumerate() {
        hints
            .allowed_tiers
            .push(tier_from_wire(t, &format!("hints.allowed_tiers[{i}]"))?);
    }
    if let Some(c) = hints.max_cost_usd
        && !(c.is_finite() && c >= 0.0)
    {
        return Err(GatewayError::invalid(
            "hints.max_cost_usd",
            format!("{c} must be a finite number >= 0"),
        ));
    }
    if let Some(q) = hints.quality_floor
        && !(q.is_finite() && (0.0..=1.0).contains(&q))
    {
        return Err(GatewayError::invalid(
            "hints.quality_floor",
            format!("{q} is not in [0, 1]"),
        ));
    }
    if hints.latency_slo_ms == Some(0) {
        return Err(GatewayError::invalid(
            "hints.latency_slo_ms",
            "must be at least 1",
        ));
    }

    let tenant = if req.tenant.is_empty() {
        "default".to_string()
    } else {
        req.tenant
    };
    if !valid_tenant(&tenant) {
        return Err(GatewayError::invalid(
            "tenant",
            format!("must be at most {MAX_TENANT_CHARS} ASCII letters, digits, '-', '_' or '.'"),
        ));
    }

    let needs = Needs {
        prompt_tokens: u32::try_from(prompt_chars.div_ceil(4)).unwrap_or(u32::MAX),
        max_tokens: params.max_tokens.unwrap_or(0),
        ..conversation::needs(&req.messages, &params)
    };
    Ok(ValidRequest {
        needs,
        request_id,
        pinned_model,
        messages: req.messages,
        params,
        hints,
        tenant,
        owner: None,
        prompt_chars,
        user: req.user,
        metadata: req.metadata,
        session_id: req.session_id,
        threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemesh_proto::v1::RoutingHints;

    fn ok_request() -> GenerateRequest {
        GenerateRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn check(req: GenerateRequest) -> Result<ValidRequest, GatewayError> {
        validate(req, &GatewayConfig::default(), &["small", "large"])
    }

    fn field_of(req: GenerateRequest) -> String {
        match check(req) {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            Err(GatewayError::UnknownModel { field, .. }) => format!("notfound:{field}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_filled() {
        let v = check(ok_request()).unwrap();
        assert_eq!(v.params.max_tokens, Some(256));
        assert_eq!(v.tenant, "default");
        assert!(v.pinned_model.is_none());
        assert_eq!(v.request_id.len(), 36);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(GenerateRequest {
                messages: vec![],
                ..ok_request()
            }),
            "messages"
        );
        let mut r = ok_request();
        r.messages[0].content = "  ".into();
        assert_eq!(field_of(r), "messages[0].content");
        let mut r = ok_request();
        r.messages[0].role = "robot".into();
        assert_eq!(field_of(r), "messages[0].role");
        let r = GenerateRequest {
            params: Some(GenerationParams {
                max_tokens: Some(0),
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "params.max_tokens");
        let r = GenerateRequest {
            params: Some(GenerationParams {
                temperature: Some(f32::NAN),
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "params.temperature");
        let r = GenerateRequest {
            params: Some(GenerationParams {
                top_p: Some(0.0),
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "params.top_p");
        let r = GenerateRequest {
            params: Some(GenerationParams {
                stop: vec!["".into()],
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "params.stop[0]");
        assert_eq!(
            field_of(GenerateRequest {
                model: "gpt-9".into(),
                ..ok_request()
            }),
            "notfound:model"
        );
        let r = GenerateRequest {
            hints: Some(RoutingHints {
                allowed_models: vec!["x".into()],
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "notfound:hints.allowed_models[0]");
        let r = GenerateRequest {
            hints: Some(RoutingHints {
                allowed_tiers: vec![0],
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "hints.allowed_tiers[0]");
        let r = GenerateRequest {
            hints: Some(RoutingHints {
                quality_floor: Some(1.5),
                ..Default::default()
            }),
            ..ok_request()
        };
        assert_eq!(field_of(r), "hints.quality_floor");
        assert_eq!(
            field_of(GenerateRequest {
                request_id: "a b".into(),
                ..ok_request()
            }),
            "request_id"
        );
        assert_eq!(
            field_of(GenerateRequest {
                tenant: "t{1}".into(),
                ..ok_request()
            }),
            "tenant"
        );
    }

    #[test]
    fn routellm_threshold_names() {
        assert_eq!(threshold_of("router-mf-0.116"), Some(0.116));
        assert_eq!(threshold_of("router-knn-blend-0.2"), Some(0.2));
        assert_eq!(threshold_of("router-mf-7"), None);
        assert_eq!(threshold_of("router-mf--0.5"), Some(-0.5));
        assert_eq!(threshold_of("router"), None);
        let v = check(GenerateRequest {
            model: "router-mf-0.116".into(),
            ..ok_request()
        })
        .unwrap();
        assert_eq!((v.threshold, v.pinned_model), (Some(0.116), None));
    }

    #[test]
    fn odd_unicode_is_fine_and_counted_in_chars() {
        let mut r = ok_request();
        r.messages[0].content = "🦀 naïve 東京\u{200b}".into();
        let v = check(r).unwrap();
        assert_eq!(v.prompt_chars, 11);
        assert_eq!(v.prompt_tokens_estimate(), 3);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: no input makes validation panic, and what it accepts
    //! keeps the rules downstream code relies on.
    use super::*;
    use proptest::prelude::*;
    use routemesh_proto::v1::RoutingHints;

    fn any_f32() -> impl Strategy<Value = Option<f32>> {
        prop_oneof![
            Just(None),
            any::<f32>().prop_map(Some),
            Just(Some(f32::NAN)),
            Just(Some(f32::INFINITY))
        ]
    }

    fn any_f64() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(Some),
            Just(Some(f64::NAN))
        ]
    }

    prop_compose! {
        fn request()(
            request_id in ".{0,140}",
            model in prop_oneof![Just(String::new()), Just("router".to_string()), Just("small".to_string()), ".{0,20}"],
            messages in prop::collection::vec((prop_oneof![Just("user".to_string()), Just("system".to_string()), ".{0,8}"], ".{0,200}"), 0..6),
            max_tokens in prop::option::of(any::<u32>()),
            temperature in any_f32(),
            top_p in any_f32(),
            stop in prop::collection::vec(".{0,300}", 0..6),
            max_cost in any_f64(),
            floor in any_f64(),
            tiers in prop::collection::vec(any::<i32>(), 0..3),
            tenant in ".{0,70}",
        ) -> GenerateRequest {
            GenerateRequest {
                request_id,
                model,
                messages: messages.into_iter().map(|(role, content)| ChatMessage { role, content, ..Default::default() }).collect(),
                params: Some(GenerationParams { max_tokens, temperature, top_p, stop, ..Default::default() }),
                hints: Some(RoutingHints { allowed_models: vec![], allowed_tiers: tiers, max_cost_usd: max_cost, latency_slo_ms: None, quality_floor: floor }),
                tenant,
                ..Default::default()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_and_accepted_requests_keep_the_rules(req in request()) {
            let config = GatewayConfig::default();
            if let Ok(v) = validate(req, &config, &["small", "large"]) {
                let max = v.params.max_tokens.unwrap_or(0);
                prop_assert!(max >= 1 && max <= config.max_tokens_limit);
                prop_assert!(v.messages.iter().any(|m| m.role == "user" && !m.content.trim().is_empty()));
                prop_assert!(v.params.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
                prop_assert!(v.params.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
                prop_assert!(v.hints.quality_floor.is_none_or(|q| (0.0..=1.0).contains(&q)));
                prop_assert!(v.request_id.len() <= 128 && !v.request_id.is_empty());
            }
        }
    }
}
