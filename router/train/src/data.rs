//! Routing data: JSONL rows of per-model outcomes, the `models.json` price list, and the cost model.
//!
//! The cost model is the one the evaluation uses (shared/data/README.md), so that a router tuned here is
//! scored in the same currency: `cost = (in_price * in_tok + out_price * out_tok) / 1e6` with
//! `in_tok = ceil(chars(prompt) / 4)` and `out_tok = ceil(chars(response) / 4)` when a response is
//! recorded, else 256.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Output tokens assumed when a row records no response for a model.
pub const DEFAULT_OUT_TOKENS: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Json {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("no price for model {0:?} in models.json")]
    Unpriced(String),
}

/// One routing example: a prompt and how well each model answered it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub id: String,
    #[serde(default)]
    pub source: String,
    pub prompt: String,
    /// Quality in [0, 1] per model name.
    pub scores: BTreeMap<String, f64>,
    /// Recorded answers (GSM8K only); they set the output-token count of the cost model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<BTreeMap<String, Option<String>>>,
}

/// List prices of one model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelPrice {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    #[serde(default)]
    pub params_b: Option<f64>,
    #[serde(default)]
    pub source: Option<String>,
}

/// `models.json`: model name -> price.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Prices(pub HashMap<String, ModelPrice>);

impl Prices {
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| DataError::Json {
            path: path.into(),
            line: 0,
            source,
        })
    }

    pub fn get(&self, model: &str) -> Result<&ModelPrice, DataError> {
        self.0
            .get(model)
            .ok_or_else(|| DataError::Unpriced(model.to_string()))
    }

    /// Input plus output price, the ordering used to call a model of a pair "strong".
    pub fn total_per_mtok(&self, model: &str) -> Result<f64, DataError> {
        let p = self.get(model)?;
        Ok(p.input_usd_per_mtok + p.output_usd_per_mtok)
    }
}

/// `ceil(chars / 4)`: Python's `len` counts code points, so count chars, not bytes.
pub fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Cost in USD of sending `prompt` to a model with `price`, given the recorded response if any.
pub fn query_cost(price: &ModelPrice, prompt: &str, response: Option<&str>) -> f64 {
    let in_tok = approx_tokens(prompt) as f64;
    let out_tok = response.map_or(DEFAULT_OUT_TOKENS, approx_tokens) as f64;
    (price.input_usd_per_mtok * in_tok + price.output_usd_per_mtok * out_tok) / 1e6
}

impl Row {
    pub fn response(&self, model: &str) -> Option<&str> {
        self.responses.as_ref()?.get(model)?.as_deref()
    }

    pub fn cost(&self, model: &str, prices: &Prices) -> Result<f64, DataError> {
        Ok(query_cost(
            prices.get(model)?,
            &self.prompt,
            self.response(model),
        ))
    }
}

/// Reads one JSONL file (blank lines skipped).
pub fn load_jsonl(path: &Path) -> Result<Vec<Row>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).map_err(|source| DataError::Json {
            path: path.into(),
            line: i + 1,
            source,
        })?;
        if let Some((m, q)) = row.scores.iter().find(|(_, q)| !q.is_finite()) {
            return Err(DataError::Invalid {
                path: path.into(),
                msg: format!("row {}: score of {m} is {q}", row.id),
            });
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(DataError::Invalid {
            path: path.into(),
            msg: "no rows".into(),
        });
    }
    Ok(rows)
}

/// Rows from several files as one dense table over a fixed model list: `quality[i][j]` is `None` where
/// row `i` has no score for model `j` (files may cover different model pools).
#[derive(Debug, Clone)]
pub struct Table {
    pub models: Vec<String>,
    pub rows: Vec<Row>,
    pub quality: Vec<Vec<Option<f64>>>,
    /// USD per query, `[row][model]`; needs a price for every model.
    pub cost: Vec<Vec<f64>>,
}

impl Table {
    /// Models in first-seen order across the rows.
    pub fn new(rows: Vec<Row>, prices: &Prices) -> Result<Self, DataError> {
        let mut models: Vec<String> = Vec::new();
        for r in &rows {
            for m in r.scores.keys() {
                if !models.contains(m) {
                    models.push(m.clone());
                }
            }
        }
        Self::with_models(rows, models, prices)
    }

    pub fn with_models(
        rows: Vec<Row>,
        models: Vec<String>,
        prices: &Prices,
    ) -> Result<Self, DataError> {
        let quality = rows
            .iter()
            .map(|r| models.iter().map(|m| r.scores.get(m).copied()).collect())
            .collect();
        let cost = rows
            .iter()
            .map(|r| {
                models
                    .iter()
                    .map(|m| r.cost(m, prices))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            models,
            rows,
            quality,
            cost,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Index of a model name.
    pub fn model_index(&self, model: &str) -> Option<usize> {
        self.models.iter().position(|m| m == model)
    }

    /// The rows (by index) scored for every one of `models`, and the dense quality matrix over them.
    pub fn complete_for(&self, models: &[usize]) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| models.iter().all(|&j| self.quality[i][j].is_some()))
            .collect()
    }
}

/// Loads and concatenates JSONL files.
pub fn load_many(paths: &[PathBuf]) -> Result<Vec<Row>, DataError> {
    let mut rows = Vec::new();
    for p in paths {
        rows.extend(load_jsonl(p)?);
    }
    Ok(rows)
}

/// The shared data folder if present: `$ROUTEMESH_DATA`, else `../shared/data/routing` from the
/// workspace root (this crate is `router/train` in it). Tests use it to skip (with a message) when the data is absent.
pub fn shared_data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ROUTEMESH_DATA") {
        return Some(PathBuf::from(d)).filter(|p| p.is_dir());
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        here.join("../../../shared/data/routing"),
        PathBuf::from("/work/shared/data/routing"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        let mut p = HashMap::new();
        p.insert(
            "a".into(),
            ModelPrice {
                input_usd_per_mtok: 1.0,
                output_usd_per_mtok: 2.0,
                params_b: None,
                source: None,
            },
        );
        Prices(p)
    }

    #[test]
    fn cost_model_matches_readme() {
        // 5 chars -> 2 input tokens; no response -> 256 output tokens.
        let row: Row =
            serde_json::from_str(r#"{"id":"x","source":"s","prompt":"héllo","scores":{"a":1.0}}"#)
                .unwrap();
        let c = row.cost("a", &prices()).unwrap();
        assert!((c - (2.0 + 512.0) / 1e6).abs() < 1e-15);
        // A recorded 9-char response -> 3 output tokens.
        let row: Row = serde_json::from_str(
            r#"{"id":"x","source":"s","prompt":"héllo","scores":{"a":1.0},"responses":{"a":"123456789"}}"#,
        )
        .unwrap();
        let c = row.cost("a", &prices()).unwrap();
        assert!((c - (2.0 + 6.0) / 1e6).abs() < 1e-15);
        assert!(matches!(
            row.cost("zz", &prices()),
            Err(DataError::Unpriced(_))
        ));
    }

    #[test]
    fn table_marks_missing_scores() {
        let a: Row = serde_json::from_str(r#"{"id":"1","prompt":"p","scores":{"a":1.0}}"#).unwrap();
        let mut b = a.clone();
        b.scores.clear();
        let t = Table::with_models(vec![a, b], vec!["a".into()], &prices()).unwrap();
        assert_eq!(t.quality, vec![vec![Some(1.0)], vec![None]]);
        assert_eq!(t.complete_for(&[0]), vec![0]);
    }
}
