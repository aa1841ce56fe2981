//! `routemesh router ...`: train, evaluate, score and calibrate routers from the command line.
//!
//! One module per command (`train`, `eval`, `score` with `predict`, `calibrate` with its `--cascade`
//! mode in `cascade`, `verify` with `train-verifier`), the predictor specs they
//! parse (`spec`) and what they read (`inputs`).

use std::path::PathBuf;

mod calibrate;
mod cascade;
mod eval;
mod inputs;
mod onboard;
mod score;
mod spec;
mod train;
mod verify;

pub use calibrate::{CalibrateArgs, STRONG_SHARES, calibrate, calibrate_to};
pub use eval::{EvalArgs, write_predictions};
pub use inputs::{EncoderArgs, default_artifact_dir, load_embedded, prices_path};
pub use onboard::{OnboardArgs, parse_onboard_config};
pub use score::{PredictArgs, ScoreArgs};
pub use spec::{DEFAULT_PREDICTOR, PREVIOUS_PREDICTOR, parse_candidate};
pub use train::{TrainArgs, train_savable};
pub use verify::{TrainVerifierArgs, VerifierOpts, VerifyArgs, auc, parse_verifier_spec};

#[derive(Debug, clap::Subcommand)]
pub enum RouterCommand {
    /// Embed prompts of JSONL files into the embedding cache (train/eval do this on demand).
    Embed {
        #[arg(required = true)]
        data: Vec<PathBuf>,
        #[command(flatten)]
        enc: EncoderArgs,
    },
    /// Train a router on JSONL files and write the artifact directory.
    Train(TrainArgs),
    /// Write route_eval.py predictions (`{"id", "scores"}` per line) of a router for data rows.
    Score(ScoreArgs),
    /// Recompute a router's strong/weak thresholds and default λ on (held-out) data; rewrites the manifest
    /// (`--cascade`: the gateway cascade's acceptance threshold instead, printed, nothing written).
    ///
    /// With --cascade: the acceptance threshold for a target escalation share or cost per request, from
    /// the artifact verifier's scores of the weak model's recorded answers. The verifier's own training
    /// rows score in-sample, so the share, cost and quality it reports on them are optimistic.
    Calibrate(CalibrateArgs),
    /// Predicted quality per model for prompts given as arguments (a quick look, and a latency check).
    Predict(PredictArgs),
    /// Evaluate a router artifact on data, or cross-validate predictors (`--cv K`) next to baselines;
    /// rows with recorded `responses` also get the cascade table (answer verifier vs routing).
    Eval(EvalArgs),
    /// Write the answer verifier's `{"id", "accept": {model: P(recorded answer is good)}}` per data row.
    Verify(VerifyArgs),
    /// Add a model to a router artifact (root predictor and fast path) from rows scored for it, without
    /// retraining the others: per-task means, residual memory and MF vector shrunk towards the most
    /// similar known models; writes a new artifact directory and records the model as onboarded.
    Onboard(OnboardArgs),
    /// Train only the answer verifier of an existing artifact (writes `DIR/verifier/`, nothing else).
    TrainVerifier(TrainVerifierArgs),
}

pub fn run(cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::Embed { data, enc } => {
            let enc = enc.load()?;
            let (_, e) = load_embedded(&enc, &data)?;
            eprintln!("{} embeddings ready", e.nrows());
            Ok(())
        }
        RouterCommand::Train(args) => train::run(args),
        RouterCommand::Score(args) => score::score(args),
        RouterCommand::Calibrate(args) => calibrate::run(args),
        RouterCommand::Predict(args) => score::predict(args),
        RouterCommand::Eval(args) => eval::run(args),
        RouterCommand::Verify(args) => verify::verify(args),
        RouterCommand::TrainVerifier(args) => verify::train_verifier_cmd(args),
        RouterCommand::Onboard(args) => onboard::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::RouterCommand;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: RouterCommand,
    }

    #[test]
    fn the_command_line_is_consistent() {
        // Duplicate flags (e.g. from flattened option groups) only show up at parse time otherwise.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
