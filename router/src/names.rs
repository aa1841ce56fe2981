//! Which of the router's models a served model is, and which known models stand in for one it does not
//! know.
//!
//! Engines serve a model under many spellings: a Hugging Face id (`meta-llama/Llama-3.1-8B-Instruct`),
//! a vLLM `--served-model-name`, an Ollama tag (`llama3.1:8b-instruct-q4_K_M`), a quantised build
//! (`...-AWQ`). [`ModelCatalog::resolve`] matches them to the artifact's names by a normalised key
//! (case, organisation prefix, separators, quantisation and format tags do not count), falling back to a
//! looser key without instruct markers when that is unambiguous. For a model it cannot match,
//! [`ModelCatalog::nearest`] names the known models closest in size and family, whose predictions the
//! gateway turns into a per-prompt prior on the router's own scale.

/// Tokens that name a build of a model rather than the model: quantisation, weight format, packaging.
const BUILD_TOKENS: &[&str] = &[
    "hf",
    "awq",
    "gptq",
    "gguf",
    "ggml",
    "fp8",
    "fp16",
    "bf16",
    "f16",
    "f32",
    "int4",
    "int8",
    "4bit",
    "8bit",
    "exl2",
    "mlx",
    "latest",
    "w4a16",
    "w8a8",
    "dynamic",
    "onnx",
    "nf4",
    "quantized",
];

/// Tokens that mark an instruction-tuned variant: dropped by the loose key only.
const INSTRUCT_TOKENS: &[&str] = &["instruct", "it", "chat"];

/// The normalised tokens of a model name (see the module docs).
fn tokens(name: &str) -> Vec<String> {
    let lower = name.trim().to_lowercase();
    let last = lower.rsplit('/').next().unwrap_or(&lower);
    // `3_1` (NVIDIA's ids) is the version `3.1`.
    let chars: Vec<char> = last.chars().collect();
    let mut text = String::with_capacity(last.len());
    for (i, &c) in chars.iter().enumerate() {
        let between_digits = i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        text.push(if c == '_' && between_digits { '.' } else { c });
    }
    let mut out = Vec::new();
    for raw in text.split(['-', '_', ' ', ':']) {
        // Build tags (`w4a16`) and quantisation levels (`q4` of `q4_K_M`) are matched whole, before
        // the split below would cut them up.
        let quant_level =
            raw.starts_with('q') && raw[1..].starts_with(|c: char| c.is_ascii_digit());
        if BUILD_TOKENS.contains(&raw) || quant_level {
            continue;
        }
        // `llama3.1` is `llama 3.1`: split where letters turn into digits.
        let mut piece = String::new();
        let mut prev: Option<char> = None;
        for c in raw.chars() {
            if prev.is_some_and(|p| p.is_ascii_alphabetic()) && c.is_ascii_digit() {
                out.push(std::mem::take(&mut piece));
            }
            piece.push(c);
            prev = Some(c);
        }
        out.push(piece);
    }
    // Single letters are the leftovers of `v0.3` or `q4_K_M`.
    let stray_letter = |t: &str| t.len() == 1 && t.chars().all(|c| c.is_ascii_alphabetic());
    out.retain(|t| !(t.is_empty() || BUILD_TOKENS.contains(&t.as_str()) || stray_letter(t)));
    // `Meta-Llama-3.1-...` is `Llama-3.1-...`.
    if out.first().is_some_and(|t| t == "meta") && out.len() > 1 {
        out.remove(0);
    }
    out
}

/// The key two spellings of one model share.
pub fn match_key(name: &str) -> String {
    tokens(name).join("-")
}

/// [`match_key`] without instruct markers: `llama3.1:8b` matches `llama-3.1-8b-instruct`.
fn loose_key(name: &str) -> String {
    tokens(name)
        .into_iter()
        .filter(|t| !INSTRUCT_TOKENS.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join("-")
}

/// Parameters in billions when the name says (`8b`, `1.5B`, `135m`, `8x7b`), else `None`.
pub fn params_billions(name: &str) -> Option<f64> {
    let lower = name.to_lowercase();
    let last = lower.rsplit('/').next().unwrap_or(&lower);
    last.rsplit(['-', '_', ' ', ':']).find_map(|t| {
        let (number, scale) = if let Some(n) = t.strip_suffix('b') {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 1e-3)
        } else {
            return None;
        };
        let value = match number.split_once('x') {
            Some((experts, each)) => experts.parse::<f64>().ok()? * each.parse::<f64>().ok()?,
            None => number.parse::<f64>().ok()?,
        };
        (value.is_finite() && value > 0.0).then_some(value * scale)
    })
}

/// The family a model belongs to: the first word of its name (`llama`, `qwen`, `gemma`, `mistral`).
fn family(name: &str) -> Option<String> {
    tokens(name)
        .into_iter()
        .find(|t| t.chars().all(|c| c.is_ascii_alphabetic()))
}

/// Quality an unknown model loses per halving of size below the known models it stands on.
pub const PENALTY_PER_HALVING: f64 = 0.02;
/// At most this much is taken for size, on top of the margin.
pub const MAX_SIZE_PENALTY: f64 = 0.2;

/// What an unknown model's prior sits below its stands' weighted prediction: `margin`, plus
/// [`PENALTY_PER_HALVING`] per halving of size below them (weighted, at most [`MAX_SIZE_PENALTY`]).
pub fn stand_in_penalty(stands: &[Stand], margin: f64) -> f64 {
    let smaller_by: f64 = stands
        .iter()
        .map(|s| s.weight * s.size_gap_log2.unwrap_or(0.0).max(0.0))
        .sum();
    margin + (PENALTY_PER_HALVING * smaller_by).min(MAX_SIZE_PENALTY)
}

/// Models larger than this (billions of parameters) count as large-tier when matching by tier.
const LARGE_ABOVE_B: f64 = 20.0;

/// Known models weighed into an unknown model's prior, at most.
const NEAREST: usize = 3;

/// The artifact's models, indexed for matching served names against.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    names: Vec<String>,
    keys: Vec<String>,
    loose: Vec<String>,
    params: Vec<Option<f64>>,
    families: Vec<Option<String>>,
}

/// A known model standing in for an unknown one, with its weight (weights of one answer sum to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Stand {
    pub model: String,
    pub weight: f64,
    /// log2(its parameters / the unknown model's), when both are known: > 0 when it is larger.
    pub size_gap_log2: Option<f64>,
}

impl ModelCatalog {
    pub fn new(models: &[String]) -> Self {
        Self {
            names: models.to_vec(),
            keys: models.iter().map(|m| match_key(m)).collect(),
            loose: models.iter().map(|m| loose_key(m)).collect(),
            params: models.iter().map(|m| params_billions(m)).collect(),
            families: models.iter().map(|m| family(m)).collect(),
        }
    }

    /// The artifact's name for a served model: `declared` (a worker's `router_model`) when given, else
    /// `served`; exact, then by [`match_key`], then by the loose key when exactly one model has it.
    pub fn resolve(&self, served: &str, declared: Option<&str>) -> Option<&str> {
        let wanted = declared.unwrap_or(served);
        if let Some(exact) = self.names.iter().find(|n| *n == wanted) {
            return Some(exact);
        }
        let key = match_key(wanted);
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            return Some(&self.names[i]);
        }
        let loose = loose_key(wanted);
        let mut hits = self.loose.iter().enumerate().filter(|(_, k)| **k == loose);
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => Some(&self.names[i]),
            _ => None,
        }
    }

    /// The known models among `candidates` (artifact names) nearest to an unknown `served` model:
    /// closest in size on a log scale when both sizes are known (from the name or `params_b`), else
    /// those of the same tier; the same family counts as half a doubling closer. Up to three, weighted
    /// by closeness; empty when `candidates` is.
    pub fn nearest(
        &self,
        served: &str,
        params_b: Option<f64>,
        large_tier: bool,
        candidates: &[&str],
    ) -> Vec<Stand> {
        let size = params_b
            .filter(|b| b.is_finite() && *b > 0.0)
            .or_else(|| params_billions(served));
        let fam = family(served);
        let mut scored: Vec<(f64, Stand)> = candidates
            .iter()
            .filter_map(|c| {
                let i = self.names.iter().position(|n| n == c)?;
                let gap = match (size, self.params[i]) {
                    (Some(u), Some(k)) => Some((k / u).log2()),
                    _ => None,
                };
                let mut distance = match (gap, self.params[i]) {
                    (Some(g), _) => g.abs(),
                    // Without both sizes, the tier decides: a known model of unknown size (GPT-4) is large.
                    (None, known) => {
                        let known_large = known.is_none_or(|k| k > LARGE_ABOVE_B);
                        if known_large == large_tier { 0.0 } else { 3.0 }
                    }
                };
                if fam.is_some() && fam == self.families[i] {
                    distance -= 0.5;
                }
                Some((
                    distance,
                    Stand {
                        model: self.names[i].clone(),
                        weight: 0.0,
                        size_gap_log2: gap,
                    },
                ))
            })
            .collect();
        // Ties (the family bonus can make them) go to the closer size, then the name.
        let size_gap = |s: &Stand| s.size_gap_log2.map_or(f64::INFINITY, f64::abs);
        scored.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| size_gap(&a.1).total_cmp(&size_gap(&b.1)))
                .then_with(|| a.1.model.cmp(&b.1.model))
        });
        scored.truncate(NEAREST);
        let total: f64 = scored.iter().map(|(d, _)| (-d).exp()).sum();
        if !(total.is_finite() && total > 0.0) {
            return Vec::new();
        }
        scored
            .into_iter()
            .map(|(d, mut s)| {
                s.weight = (-d).exp() / total;
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> ModelCatalog {
        ModelCatalog::new(
            &[
                "codegemma-7b",
                "gemma-2-9b-it",
                "llama-3.1-8b-instruct",
                "llama-3.1-nemotron-51b-instruct",
                "llama-3.3-nemotron-super-49b-v1",
                "llama3-chatqa-1.5-70b",
                "llama3-chatqa-1.5-8b",
                "mistral-7b-instruct-v0.3",
                "qwen2.5-7b-instruct",
                "gpt-4-1106-preview",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
            ]
            .map(String::from),
        )
    }

    #[test]
    fn common_spellings_resolve_to_the_artifact_names() {
        let c = artifact();
        for (served, known) in [
            ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct"),
            (
                "meta-llama/Meta-Llama-3.1-8B-Instruct",
                "llama-3.1-8b-instruct",
            ),
            ("llama3.1:8b", "llama-3.1-8b-instruct"),
            ("llama3.1:8b-instruct-q4_K_M", "llama-3.1-8b-instruct"),
            (
                "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
                "llama-3.1-8b-instruct",
            ),
            ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct"),
            ("Qwen/Qwen2.5-7B-Instruct-AWQ", "qwen2.5-7b-instruct"),
            ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "qwen2.5-7b-instruct"),
            (
                "neuralmagic/Qwen2.5-7B-Instruct-quantized-w4a16",
                "qwen2.5-7b-instruct",
            ),
            ("qwen2.5:7b", "qwen2.5-7b-instruct"),
            ("google/gemma-2-9b-it", "gemma-2-9b-it"),
            ("gemma2:9b", "gemma-2-9b-it"),
            (
                "mistralai/Mistral-7B-Instruct-v0.3",
                "mistral-7b-instruct-v0.3",
            ),
            (
                "nvidia/Llama-3_1-Nemotron-51B-Instruct",
                "llama-3.1-nemotron-51b-instruct",
            ),
            (
                "nvidia/Llama-3_3-Nemotron-Super-49B-v1",
                "llama-3.3-nemotron-super-49b-v1",
            ),
            ("nvidia/Llama3-ChatQA-1.5-70B", "llama3-chatqa-1.5-70b"),
            (
                "mixtral-8x7b-instruct-v0.1",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
            ),
            ("GPT-4-1106-preview", "gpt-4-1106-preview"),
        ] {
            assert_eq!(c.resolve(served, None), Some(known), "{served}");
        }
    }

    #[test]
    fn other_models_and_other_sizes_do_not_match() {
        let c = artifact();
        for served in [
            "my-org/llama-3.3-70b",
            "meta-llama/Llama-3.1-70B-Instruct",
            "llama3.2:3b",
            "smollm2-135m-instruct",
            "qwen2.5-72b-instruct",
            "gpt-4o",
            "mistral-7b-instruct-v0.2",
        ] {
            assert_eq!(c.resolve(served, None), None, "{served}");
        }
        // `gemma2` alone does not say which size: the loose key needs one match.
        assert_eq!(c.resolve("gemma", None), None);
    }

    #[test]
    fn a_declared_router_model_wins_over_the_served_name() {
        let c = artifact();
        assert_eq!(
            c.resolve("my-org/llama-8b-finetune", Some("llama-3.1-8b-instruct")),
            Some("llama-3.1-8b-instruct")
        );
        assert_eq!(
            c.resolve("my-org/ft", Some("meta-llama/Llama-3.1-8B-Instruct")),
            Some("llama-3.1-8b-instruct")
        );
        // A declared name the artifact does not know is not silently replaced by the served one.
        assert_eq!(
            c.resolve("llama-3.1-8b-instruct", Some("unknown-model")),
            None
        );
    }

    #[test]
    fn sizes_are_read_from_names() {
        assert_eq!(
            params_billions("meta-llama/Llama-3.1-8B-Instruct"),
            Some(8.0)
        );
        assert_eq!(params_billions("smollm2-135m-instruct"), Some(0.135));
        assert_eq!(params_billions("Mixtral-8x7B-Instruct-v0.1"), Some(56.0));
        assert_eq!(params_billions("qwen2.5:1.5b"), Some(1.5));
        assert_eq!(params_billions("gpt-4-1106-preview"), None);
        assert_eq!(params_billions("llama3-chatqa-1.5-8b"), Some(8.0));
    }

    #[test]
    fn an_unknown_model_stands_on_the_nearest_known_ones() {
        let c = artifact();
        let mix9: Vec<&str> = c.names[..9].iter().map(String::as_str).collect();
        let near = c.nearest("my-org/llama-3.3-70b", None, true, &mix9);
        assert_eq!(near[0].model, "llama3-chatqa-1.5-70b");
        assert!(
            near.iter()
                .all(|s| s.size_gap_log2.is_some_and(|g| g.abs() < 1.0)),
            "{near:?}"
        );
        let weights: f64 = near.iter().map(|s| s.weight).sum();
        assert!((weights - 1.0).abs() < 1e-12);
        let tiny = c.nearest("smollm2-135m-instruct", None, false, &mix9);
        assert_eq!(tiny.len(), 3);
        assert!(
            tiny.iter()
                .all(|s| s.size_gap_log2.is_some_and(|g| g > 5.0)),
            "{tiny:?}"
        );
        // Without a size, the tier: a large model of unknown size stands on large models.
        let large = c.nearest("my-frontier-model", None, true, &mix9);
        assert!(large.iter().all(|s| {
            c.params[c.names.iter().position(|n| *n == s.model).unwrap()].unwrap() > 20.0
        }));
        // Family counts: a Qwen 7B leans on the Qwen 7B.
        let qwen = c.nearest("qwen2-7b", None, false, &mix9);
        assert_eq!(qwen[0].model, "qwen2.5-7b-instruct");
        assert!(c.nearest("x", None, false, &[]).is_empty());
    }
}
