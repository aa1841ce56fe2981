//! Predictor specs on the command line (`--predictor task:alpha=0.5,k=50`, baselines, …) and the default
//! artifact's predictor.

use anyhow::Context;
use routemesh_router::predict::KnnConfig;

use crate::eval::Candidate;
use crate::fit::{MfConfig, MlpConfig, PredictorSpec, TaskConfig};

/// The predictor cross-validation picked for the default artifact (see its MODEL_CARD.md).
pub const DEFAULT_PREDICTOR: &str =
    "task:alpha=0.5,k=50,tau=0.2,shrink=5,pca=128,w=0.2,dim=64,epochs=30";

/// The default artifact's predictor before the task mixture (kept as a reference in evaluations).
pub const PREVIOUS_PREDICTOR: &str =
    "blend:k=50,tau=0.2,shrink=2,smooth=0.3,pca=128,w=0.6,dim=64,epochs=30";

/// Predictor specs on the command line: `prior`, `source`, `knn[:k=32,tau=0.05,shrink=1]`,
/// `knn-plain[:k=32]`, `mf[:dim=64,epochs=30,lr=0.002]`, `ridge[:lambda=1]`,
/// `blend[:w=0.5,k=..,tau=..,dim=..,epochs=..]`.
pub fn parse_candidate(s: &str) -> anyhow::Result<Candidate> {
    let (name, args) = s.split_once(':').unwrap_or((s, ""));
    let mut kv = std::collections::HashMap::new();
    for part in args.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("expected key=value in {part:?}"))?;
        let v: f64 = v
            .parse()
            .with_context(|| format!("{k}={v} is not a number"))?;
        kv.insert(k.to_string(), v);
    }
    let get = |k: &str, d: f64| kv.get(k).copied().unwrap_or(d);
    let knn = |d: KnnConfig| KnnConfig {
        k: get("k", d.k as f64) as usize,
        tau: d.tau.map(|t| get("tau", t)),
        shrink: get("shrink", d.shrink),
        smooth: get("smooth", d.smooth),
        pca: get("pca", d.pca as f64) as usize,
    };
    let mf = || {
        let d = MfConfig::default();
        MfConfig {
            dim: get("dim", d.dim as f64) as usize,
            epochs: get("epochs", d.epochs as f64) as usize,
            lr: get("lr", d.lr),
            weight_decay: get("wd", d.weight_decay),
            seed: get("seed", d.seed as f64) as u64,
            smooth: get("msmooth", d.smooth),
            ..d
        }
    };
    Ok(match name {
        "prior" => Candidate::Spec(PredictorSpec::Prior),
        "source" => Candidate::SourceMean,
        "knn" => Candidate::Spec(PredictorSpec::Knn(knn(KnnConfig::default()))),
        "knn-plain" => Candidate::Spec(PredictorSpec::Knn(knn(KnnConfig {
            k: 32,
            tau: None,
            shrink: 0.0,
            smooth: 0.0,
            pca: 0,
        }))),
        "mf" => Candidate::Spec(PredictorSpec::Mf(mf())),
        "ridge" => Candidate::Spec(PredictorSpec::Ridge {
            lambda: get("lambda", 1.0),
        }),
        "blend" => Candidate::Spec(PredictorSpec::Blend {
            knn: knn(KnnConfig::default()),
            mf: mf(),
            weight: get("w", 0.5),
        }),
        "mlp" => {
            let d = MlpConfig::default();
            Candidate::Spec(PredictorSpec::Mlp(MlpConfig {
                hidden: get("hidden", d.hidden as f64) as usize,
                epochs: get("epochs", d.epochs as f64) as usize,
                lr: get("lr", d.lr),
                weight_decay: get("wd", d.weight_decay),
                ..d
            }))
        }
        "task" => {
            let d = TaskConfig::default();
            Candidate::Spec(PredictorSpec::Task(TaskConfig {
                epochs: get("cepochs", d.epochs as f64) as usize,
                lr: get("clr", d.lr),
                weight_decay: get("cwd", d.weight_decay),
                mean_shrink: get("mshrink", d.mean_shrink),
                alpha: get("alpha", d.alpha),
                knn: knn(d.knn.clone()),
                mf_weight: get("w", d.mf_weight),
                mf: mf(),
                ..d
            }))
        }
        other => anyhow::bail!(
            "unknown predictor {other:?} (prior, source, knn, knn-plain, mf, ridge, blend, mlp, task)"
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn predictor_specs_parse() {
        assert_eq!(parse_candidate("source").unwrap(), Candidate::SourceMean);
        let Candidate::Spec(PredictorSpec::Knn(c)) = parse_candidate("knn:k=7,tau=0.2").unwrap()
        else {
            panic!()
        };
        assert_eq!((c.k, c.tau), (7, Some(0.2)));
        let Candidate::Spec(PredictorSpec::Knn(c)) = parse_candidate("knn-plain").unwrap() else {
            panic!()
        };
        assert_eq!(c.tau, None);
        let Candidate::Spec(PredictorSpec::Blend { weight, mf, .. }) =
            parse_candidate("blend:w=0.3,dim=8").unwrap()
        else {
            panic!()
        };
        assert_eq!((weight, mf.dim), (0.3, 8));
        let Candidate::Spec(PredictorSpec::Task(t)) = parse_candidate(DEFAULT_PREDICTOR).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.alpha, t.knn.k, t.knn.pca, t.mf_weight),
            (0.5, 50, 128, 0.2)
        );
        assert_eq!(t.knn.shrink, 5.0);
        assert!(matches!(
            parse_candidate("mlp:hidden=16").unwrap(),
            Candidate::Spec(PredictorSpec::Mlp(MlpConfig { hidden: 16, .. }))
        ));
        assert!(parse_candidate("nope").is_err());
        assert!(parse_candidate("knn:k").is_err());
    }
}
