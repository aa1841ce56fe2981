//! `routemesh router calibrate --cascade`: the gateway cascade's acceptance threshold for a target
//! escalation share or cost per request, from the artifact verifier's scores of the weak model's recorded
//! answers. Prints the YAML to paste and writes nothing: the threshold belongs to the gateway's config,
//! not to the artifact.

use std::path::{Path, PathBuf};

use anyhow::Context;
use routemesh_router::artifact;
use routemesh_router::verify::{AnswerVerifier, VERIFIER_DIR, VerifyInput};

use super::inputs::{EncoderArgs, default_artifact_dir, load_router, prices_path};
use crate::cascade_threshold::{self, CascadeRow, OperatingPoint, Target};
use crate::data::{self, Prices, Row};

/// The `calibrate` arguments `--cascade` reads.
#[derive(Debug)]
pub(super) struct CascadeOpts {
    pub router: Option<PathBuf>,
    pub data: Vec<PathBuf>,
    pub models: Option<PathBuf>,
    pub escalation_share: Option<f64>,
    pub target_cost: Option<f64>,
    pub weak: Option<String>,
    pub strong: Option<String>,
    pub enc: EncoderArgs,
}

pub(super) fn run(opts: CascadeOpts) -> anyhow::Result<()> {
    let report = calibrate_cascade(opts)?;
    print!("{report}");
    Ok(())
}

/// The report `run` prints (its last line is the YAML to paste).
fn calibrate_cascade(opts: CascadeOpts) -> anyhow::Result<String> {
    let CascadeOpts {
        router,
        data,
        models,
        escalation_share,
        target_cost,
        weak,
        strong,
        enc,
    } = opts;
    let target = match (escalation_share, target_cost) {
        (Some(s), None) => Target::EscalationShare(s),
        (None, Some(c)) => Target::CostPerRequest(c),
        _ => anyhow::bail!(
            "--cascade needs one target: --escalation-share S (0..1) or --target-cost USD (per request)"
        ),
    };
    let dir = router.unwrap_or_else(default_artifact_dir);
    let vdir = dir.join(VERIFIER_DIR);
    anyhow::ensure!(
        vdir.join(artifact::MANIFEST).is_file(),
        "{} has no verifier (no {VERIFIER_DIR}/): add one with `routemesh router train-verifier --router {} DATA.jsonl`",
        dir.display(),
        dir.display()
    );
    // The verifier alone: a hand-feature verifier needs neither the encoder nor the tokenizer.
    let v = AnswerVerifier::load(&vdir, None, &enc.asset_paths())
        .with_context(|| format!("loading the verifier of {}", dir.display()))?;
    // A verifier stacking the router's predicted quality gets it as the gateway gives it: from the
    // router's fast path.
    let r = if v.manifest().features.predicted_quality {
        Some(load_router(&dir, &enc, true)?)
    } else {
        None
    };
    let prices = Prices::load(&prices_path(models.as_deref(), &data)?)?;
    let rows = data::load_many(&data)?;
    let files = data
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let (weak, strong) = pair(&rows, weak, strong, &prices, &files)?;
    let mut cal = Vec::new();
    for row in &rows {
        let (Some(answer), Some(_), Some(&q_weak), Some(&q_strong)) = (
            row.response(&weak),
            row.response(&strong),
            row.scores.get(&weak),
            row.scores.get(&strong),
        ) else {
            continue;
        };
        let pq = match &r {
            Some(r) => r
                .predict(&row.prompt)?
                .into_iter()
                .find(|(m, _)| *m == weak)
                .map(|(_, q)| q),
            None => None,
        };
        let score = v
            .score(&VerifyInput {
                model: &weak,
                prompt: &row.prompt,
                answer,
                predicted_quality: pq,
            })
            .with_context(|| format!("scoring the answer of row {}", row.id))?;
        cal.push(CascadeRow {
            score,
            q_weak,
            q_strong,
            cost_weak: row.cost(&weak, &prices)?,
            cost_strong: row.cost(&strong, &prices)?,
        });
    }
    anyhow::ensure!(
        !cal.is_empty(),
        "{files}: no row records `responses` and scores for both {weak} and {strong}; the cascade \
         calibration scores the weak model's recorded answers (rows with `responses`, such as \
         shared/data/routing/gsm8k.jsonl)"
    );
    let skipped = rows.len() - cal.len();
    let point = cascade_threshold::calibrate(&cal, target)?;
    Ok(report(
        &dir, &files, &v, &weak, &strong, &cal, skipped, target, &point,
    ))
}

/// The weak and strong model: as given, else the two models with recorded answers and scores in the
/// rows, the cheaper one (input + output list price) answering first.
fn pair(
    rows: &[Row],
    weak: Option<String>,
    strong: Option<String>,
    prices: &Prices,
    files: &str,
) -> anyhow::Result<(String, String)> {
    let mut answered: Vec<&str> = Vec::new();
    for r in rows {
        for (m, a) in r.responses.iter().flatten() {
            if a.is_some() && r.scores.contains_key(m) && !answered.contains(&m.as_str()) {
                answered.push(m);
            }
        }
    }
    anyhow::ensure!(
        !answered.is_empty(),
        "{files}: no row records `responses` (with scores); the cascade calibration scores the weak \
         model's recorded answers (rows with `responses`, such as shared/data/routing/gsm8k.jsonl)"
    );
    let other = |than: &str| -> anyhow::Result<String> {
        let rest: Vec<&&str> = answered.iter().filter(|m| **m != than).collect();
        match rest.as_slice() {
            [one] => Ok((**one).to_string()),
            _ => anyhow::bail!(
                "name the cascade's models with --weak and --strong (models with recorded answers: {})",
                answered.join(", ")
            ),
        }
    };
    let (w, s) = match (weak, strong) {
        (Some(w), Some(s)) => (w, s),
        (Some(w), None) => {
            let s = other(&w)?;
            (w, s)
        }
        (None, Some(s)) => (other(&s)?, s),
        (None, None) => {
            let [a, b] = answered.as_slice() else {
                anyhow::bail!(
                    "name the cascade's models with --weak and --strong (models with recorded answers: {})",
                    answered.join(", ")
                );
            };
            if prices.total_per_mtok(b)? < prices.total_per_mtok(a)? {
                (b.to_string(), a.to_string())
            } else {
                (a.to_string(), b.to_string())
            }
        }
    };
    anyhow::ensure!(w != s, "--weak and --strong are the same model ({w})");
    // Unpriced models would only fail later, row by row.
    prices.get(&w)?;
    prices.get(&s)?;
    Ok((w, s))
}

/// What the threshold does, next to the single models for scale, the in-sample caveat and the YAML.
#[allow(clippy::too_many_arguments)]
fn report(
    dir: &Path,
    files: &str,
    v: &AnswerVerifier,
    weak: &str,
    strong: &str,
    rows: &[CascadeRow],
    skipped: usize,
    target: Target,
    p: &OperatingPoint,
) -> String {
    use std::fmt::Write;
    let n = rows.len() as f64;
    let mean = |f: &dyn Fn(&CascadeRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let m = v.manifest();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cascade {weak} -> {strong}, verifier {} ({}) of {}, on {} rows of {files}{}",
        v.id(),
        m.features.name(),
        dir.display(),
        rows.len(),
        if skipped > 0 {
            format!(" ({skipped} rows without both models' answers and scores skipped)")
        } else {
            String::new()
        }
    );
    let _ = match target {
        Target::EscalationShare(s) => {
            writeln!(o, "target: {:.1}% of requests escalated", 100.0 * s)
        }
        Target::CostPerRequest(c) => writeln!(o, "target: at most ${c:.6} per request"),
    };
    let _ = writeln!(
        o,
        "accept_threshold {}: {} of {} requests escalated ({:.1}%), ${:.6} per request, quality {:.4}",
        p.threshold,
        p.escalated,
        p.rows,
        100.0 * p.share,
        p.cost,
        p.quality
    );
    let _ = writeln!(
        o,
        "for scale, on these rows: weak only ${:.6}, quality {:.4}; strong only ${:.6}, quality {:.4}; \
         everything escalated ${:.6}",
        mean(&|r| r.cost_weak),
        mean(&|r| r.q_weak),
        mean(&|r| r.cost_strong),
        mean(&|r| r.q_strong),
        mean(&|r| r.cost_weak + r.cost_strong)
    );
    let trained_rows = m.training.get("rows").and_then(serde_json::Value::as_u64);
    let _ = writeln!(
        o,
        "note: scores of the verifier's own training rows are in-sample (optimistic: on new prompts expect \
         more escalations or lower quality at this threshold); {} was trained on {} rows. Its stored {} \
         score percentiles of {weak}'s answers put {:.1}% below {:.4} (what `target_escalation_share: {:.3}` \
         would use).",
        v.id(),
        trained_rows.map_or_else(|| "an unrecorded number of".to_string(), |r| r.to_string()),
        if m.calibration.out_of_fold {
            "out-of-fold"
        } else {
            "in-sample"
        },
        100.0 * p.share,
        v.threshold_for_escalation_share(weak, p.share),
        p.share
    );
    let _ = writeln!(
        o,
        "gateway: {{cascade: {{accept_threshold: {}}}}}",
        p.threshold
    );
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::data::ModelPrice;

    fn prices() -> Prices {
        let price = |p: f64| ModelPrice {
            input_usd_per_mtok: p,
            output_usd_per_mtok: p,
            params_b: None,
            source: None,
        };
        Prices(
            [("big", 10.0), ("small", 1.0), ("other", 2.0)]
                .into_iter()
                .map(|(m, p)| (m.to_string(), price(p)))
                .collect(),
        )
    }

    fn row(id: &str, responses: &[(&str, Option<&str>)]) -> Row {
        Row {
            id: id.into(),
            source: "gsm8k".into(),
            prompt: "2+2?".into(),
            scores: responses
                .iter()
                .map(|(m, _)| (m.to_string(), 1.0))
                .collect(),
            responses: Some(
                responses
                    .iter()
                    .map(|(m, a)| (m.to_string(), a.map(str::to_string)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn the_pair_defaults_to_the_two_answering_models_cheaper_first() {
        let rows = [row("a", &[("big", Some("4")), ("small", Some("4"))])];
        let p = prices();
        assert_eq!(
            pair(&rows, None, None, &p, "f").unwrap(),
            ("small".into(), "big".into())
        );
        assert_eq!(
            pair(&rows, None, Some("big".into()), &p, "f").unwrap(),
            ("small".into(), "big".into())
        );
        let three = [row(
            "a",
            &[
                ("big", Some("4")),
                ("small", Some("4")),
                ("other", Some("4")),
            ],
        )];
        let err = pair(&three, None, None, &p, "f").unwrap_err().to_string();
        assert!(err.contains("--weak and --strong"), "{err}");
        assert!(pair(&three, Some("small".into()), Some("other".into()), &p, "f").is_ok());
        let none = [Row {
            responses: None,
            ..row("a", &[("big", None)])
        }];
        let err = pair(&none, None, None, &p, "f.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.jsonl: no row records `responses`"), "{err}");
    }

    #[test]
    fn a_target_is_required_and_an_artifact_without_verifier_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = |share: Option<f64>| CascadeOpts {
            router: Some(tmp.path().to_path_buf()),
            data: vec![tmp.path().join("rows.jsonl")],
            models: None,
            escalation_share: share,
            target_cost: None,
            weak: None,
            strong: None,
            enc: EncoderArgs {
                assets: None,
                threads: 1,
                max_len: 128,
                keep_tail: 64,
            },
        };
        let err = calibrate_cascade(opts(None)).unwrap_err().to_string();
        assert!(err.contains("--escalation-share"), "{err}");
        let err = calibrate_cascade(opts(Some(0.2))).unwrap_err().to_string();
        assert!(err.contains("has no verifier"), "{err}");
    }

    /// The default artifact's verifier (hand features: no encoder or tokenizer needed) on a small file.
    #[test]
    fn the_report_ends_with_the_yaml_and_rows_without_answers_are_refused() {
        let dir = default_artifact_dir();
        if !dir.join(VERIFIER_DIR).join(artifact::MANIFEST).is_file() {
            eprintln!("skipping: the default artifact has no verifier");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("rows.jsonl");
        std::fs::write(
            tmp.path().join("models.json"),
            serde_json::to_string(&prices().0).unwrap(),
        )
        .unwrap();
        let opts = || CascadeOpts {
            router: None,
            data: vec![data.clone()],
            models: None,
            escalation_share: Some(0.5),
            target_cost: None,
            weak: None,
            strong: None,
            enc: EncoderArgs {
                assets: None,
                threads: 1,
                max_len: 128,
                keep_tail: 64,
            },
        };
        std::fs::write(
            &data,
            "{\"id\": \"a\", \"prompt\": \"2+2?\", \"scores\": {\"small\": 1.0, \"big\": 1.0}}\n",
        )
        .unwrap();
        let err = calibrate_cascade(opts()).unwrap_err().to_string();
        assert!(err.contains("no row records `responses`"), "{err}");
        let rows = [
            serde_json::json!({"id": "a", "prompt": "What is 3 * 60?", "scores": {"small": 1.0, "big": 1.0},
                "responses": {"small": "3 * 60 = <<3*60=180>>180\n#### 180", "big": "180"}}),
            serde_json::json!({"id": "b", "prompt": "What is 2 + 2?", "scores": {"small": 0.0, "big": 1.0},
                "responses": {"small": "<<2+2=5>>5 and so", "big": "4"}}),
            serde_json::json!({"id": "c", "prompt": "No answers", "scores": {"small": 0.0, "big": 1.0}}),
        ];
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&data, text).unwrap();
        let out = calibrate_cascade(opts()).unwrap();
        // The wrong annotation scores lower: it is the one escalated, so both answers returned are right.
        assert!(out.contains("cascade small -> big"), "{out}");
        assert!(
            out.contains("1 rows without both models' answers and scores skipped"),
            "{out}"
        );
        assert!(out.contains("1 of 2 requests escalated (50.0%)"), "{out}");
        assert!(out.contains("quality 1.0000"), "{out}");
        assert!(out.contains("in-sample"), "{out}");
        let yaml = out.lines().last().unwrap();
        assert!(
            yaml.starts_with("gateway: {cascade: {accept_threshold: "),
            "{yaml}"
        );
    }
}
