//! Prompt encoder: all-MiniLM-L6-v2 (int8 ONNX) through ONNX Runtime, mean pooling + L2 norm.
//!
//! Every `ort` call of the crate lives in this module: the ort 2.0 release candidates move their API
//! between versions, so an upgrade touches one file. The runtime library is loaded at run time
//! (`load-dynamic`) from the PyPI onnxruntime wheel that `scripts/fetch-router-assets.sh` extracts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use ndarray::Array2;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

/// Embedding width of all-MiniLM-L6-v2.
pub const EMBED_DIM: usize = 384;
/// Identifier recorded in router artifacts: a router only works with the encoder it was trained on.
pub const ENCODER_ID: &str = "sentence-transformers/all-MiniLM-L6-v2@onnx-int8";
/// Word pieces per prompt. all-MiniLM-L6-v2 takes up to 256, but the encoder's cost is linear in them, and
/// for routing 128 (head and tail, below) did as well as 256 in cross-validation at 40% of the worst-case
/// latency (docs/BENCHMARKS.md, section 6).
pub const DEFAULT_MAX_LEN: usize = 128;
/// Of those, the word pieces a truncated prompt keeps from its end: instructions and few-shot examples tend
/// to come first and the question last.
pub const DEFAULT_KEEP_TAIL: usize = 64;
/// The runtime library file name inside the onnxruntime 1.32.0 wheel.
pub const ORT_LIB_FILE: &str = "libonnxruntime.so.1.32.0";
/// What to run when an asset is missing.
pub const FETCH_HINT: &str =
    "run scripts/fetch-router-assets.sh (and set ROUTEMESH_ASSETS to its assets dir)";

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("missing {what} at {path}: {FETCH_HINT}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("loading the ONNX Runtime library {path}: {msg}")]
    Runtime { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("onnx runtime: {0}")]
    Ort(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected model output: {0}")]
    Output(String),
}

impl From<ort::Error> for EncoderError {
    fn from(e: ort::Error) -> Self {
        Self::Ort(e.to_string())
    }
}

/// Where the three encoder assets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPaths {
    pub ort_lib: PathBuf,
    pub model: PathBuf,
    pub tokenizer: PathBuf,
}

impl AssetPaths {
    /// The layout `scripts/fetch-router-assets.sh` writes. `ORT_DYLIB_PATH`, ort's own variable, overrides
    /// the runtime library path.
    pub fn in_dir(dir: &Path) -> Self {
        let ort_lib = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join(ORT_LIB_FILE));
        Self {
            ort_lib,
            model: dir.join("model.onnx"),
            tokenizer: dir.join("tokenizer.json"),
        }
    }

    /// `$ROUTEMESH_ASSETS`, else `.cache/routemesh/assets` under the current directory, else under the
    /// workspace this crate was built in (so tests and `cargo run` find the fetched assets).
    pub fn from_env() -> Self {
        Self::in_dir(&default_assets_dir())
    }

    /// Errors naming the first missing file and the command that fetches it.
    pub fn check(&self) -> Result<(), EncoderError> {
        for (what, path) in [
            ("ONNX Runtime library", &self.ort_lib),
            ("encoder model.onnx", &self.model),
            ("tokenizer.json", &self.tokenizer),
        ] {
            if !path.is_file() {
                return Err(EncoderError::Missing {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

pub fn default_assets_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ROUTEMESH_ASSETS") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from(".cache/routemesh/assets");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/routemesh/assets")
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let bytes = std::fs::read(path)?;
    Ok(hex(&Sha256::digest(&bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// ONNX Runtime allows one environment per process (a second `build` fails), so it is created once and
/// kept alive for the process; the first library path wins.
static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(lib: &Path) -> Result<&'static ort::environment::Environment, EncoderError> {
    // Check first: ort panics inside the loader when the file is absent.
    if !lib.is_file() {
        return Err(EncoderError::Missing {
            what: "ONNX Runtime library",
            path: lib.into(),
        });
    }
    let env = ENV.get_or_init(|| {
        ort::init_from(lib)
            .map_err(|e| e.to_string())?
            .with_name("routemesh-router")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|msg| EncoderError::Runtime {
        path: lib.into(),
        msg: msg.clone(),
    })
}

/// The word pieces the model sees: all of them up to `max_len`, else the first `max_len - keep_tail` and
/// the last `keep_tail` (`[CLS]` and `[SEP]` stay at the ends either way).
fn kept_pieces(ids: &[u32], max_len: usize, keep_tail: usize) -> impl Iterator<Item = u32> + '_ {
    let (head, tail) = if ids.len() <= max_len {
        (ids.len(), 0)
    } else if keep_tail == 0 {
        // Head only: the last kept piece is [SEP], as the tokenizer's own truncation gives.
        (max_len - 1, 1)
    } else {
        (max_len - keep_tail, keep_tail)
    };
    ids[..head].iter().chain(&ids[ids.len() - tail..]).copied()
}

/// A prompt's word pieces as the encoder sees them, truncated (see [`Encoder::tokenize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces(Vec<u32>);

impl Pieces {
    /// Word pieces, `[CLS]` and `[SEP]` included: what one row of a batch is padded to.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Configuration of the encoder.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub assets: AssetPaths,
    /// Word pieces per prompt (special tokens included); longer prompts are truncated.
    pub max_len: usize,
    /// Of those, how many a truncated prompt keeps from its end (the rest from its start): long prompts
    /// often put instructions or few-shot examples first and the question last. 0 keeps the start only.
    pub keep_tail: usize,
    /// ONNX Runtime intra-op threads; the gateway runs the encoder on blocking threads, so keep it small.
    pub threads: usize,
    /// Independent ONNX sessions: concurrent `encode` calls run in parallel up to this many (ort's `run`
    /// needs exclusive access to a session). Each costs one copy of the model (~23 MB).
    pub sessions: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            assets: AssetPaths::from_env(),
            max_len: DEFAULT_MAX_LEN,
            keep_tail: DEFAULT_KEEP_TAIL,
            threads: 1,
            sessions: 1,
        }
    }
}

/// A loaded encoder. `Send + Sync`: sessions sit behind mutexes because ort's `run` takes `&mut self`;
/// a call takes the first free one (or waits for one), so `sessions` bounds the parallelism.
pub struct Encoder {
    tokenizer: Tokenizer,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    model_sha256: String,
    max_len: usize,
    keep_tail: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("model_sha256", &self.model_sha256)
            .field("max_len", &self.max_len)
            .field("keep_tail", &self.keep_tail)
            .finish()
    }
}

impl Encoder {
    pub fn load(cfg: &EncoderConfig) -> Result<Self, EncoderError> {
        cfg.assets.check()?;
        let env = environment(&cfg.assets.ort_lib)?;
        let mut tokenizer = Tokenizer::from_file(&cfg.assets.tokenizer)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        // The file pads and truncates to a fixed 128; `encode` truncates (head, or head and tail) and pads
        // to the longest prompt of a batch itself.
        tokenizer
            .with_truncation(None)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        if cfg.max_len < 2 || cfg.keep_tail >= cfg.max_len {
            return Err(EncoderError::Tokenizer(format!(
                "max_len {} must be at least 2 and above keep_tail {}",
                cfg.max_len, cfg.keep_tail
            )));
        }
        let model_sha256 = sha256_file(&cfg.assets.model).map_err(|source| EncoderError::Io {
            path: cfg.assets.model.clone(),
            source,
        })?;
        let mut sessions = Vec::new();
        for _ in 0..cfg.sessions.max(1) {
            let session = Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(ort::Error::from)?
                .with_intra_threads(cfg.threads.max(1))
                .map_err(ort::Error::from)?
                .commit_from_file(&cfg.assets.model)?;
            sessions.push(Mutex::new(session));
        }
        Ok(Self {
            tokenizer,
            sessions,
            next: AtomicUsize::new(0),
            model_sha256,
            max_len: cfg.max_len,
            keep_tail: cfg.keep_tail,
        })
    }

    /// A free session if there is one, else wait on the next in turn (spreads waiters evenly).
    fn session(&self) -> Result<MutexGuard<'_, Session>, EncoderError> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for k in 0..n {
            if let Ok(s) = self.sessions[(start + k) % n].try_lock() {
                return Ok(s);
            }
        }
        self.sessions[start]
            .lock()
            .map_err(|_| EncoderError::Ort("encoder session poisoned".into()))
    }

    /// sha256 of the loaded model.onnx (artifacts record it to refuse a different encoder).
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn keep_tail(&self) -> usize {
        self.keep_tail
    }

    /// Embeds a batch of prompts: `[n, 384]`, each row L2-normalised. One ONNX run for the whole batch,
    /// padded to its longest prompt; sort big inputs by length first (see [`Encoder::encode_all`]).
    pub fn encode(&self, texts: &[&str]) -> Result<Array2<f32>, EncoderError> {
        if texts.is_empty() {
            return Ok(Array2::zeros((0, EMBED_DIM)));
        }
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        let pieces: Vec<Pieces> = enc.iter().map(|e| self.kept(e.get_ids())).collect();
        self.encode_pieces(&pieces.iter().collect::<Vec<_>>())
    }

    /// The word pieces the model sees for `text` (truncated as configured): tokenize once, then bucket
    /// prompts by length and run each bucket as one batch with [`Encoder::encode_pieces`].
    pub fn tokenize(&self, text: &str) -> Result<Pieces, EncoderError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(self.kept(enc.get_ids()))
    }

    fn kept(&self, ids: &[u32]) -> Pieces {
        Pieces(kept_pieces(ids, self.max_len, self.keep_tail).collect())
    }

    /// Embeds prompts tokenized by [`Encoder::tokenize`]: one ONNX run, padded to the longest.
    pub fn encode_pieces(&self, batch: &[&Pieces]) -> Result<Array2<f32>, EncoderError> {
        if batch.is_empty() {
            return Ok(Array2::zeros((0, EMBED_DIM)));
        }
        let b = batch.len();
        let s = batch.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
        let mut ids = Array2::<i64>::zeros((b, s));
        let mut mask = Array2::<i64>::zeros((b, s));
        // One segment: token type ids stay 0.
        let types = Array2::<i64>::zeros((b, s));
        for (i, p) in batch.iter().enumerate() {
            for (j, &id) in p.0.iter().enumerate() {
                ids[[i, j]] = i64::from(id);
                mask[[i, j]] = 1;
            }
        }
        self.embed_ids(&ids, &mask, &types)
    }

    /// Embeds each word piece of the vocabulary alone (`[CLS] piece [SEP]`): `[vocab, 384]`, rows
    /// L2-normalised. The starting point of the fast path's static table (see [`crate::fast`]).
    pub fn embed_vocabulary(&self, batch: usize) -> Result<Array2<f32>, EncoderError> {
        let vocab = self.tokenizer.get_vocab_size(true);
        let id_of = |t: &str| {
            self.tokenizer
                .token_to_id(t)
                .map(i64::from)
                .ok_or_else(|| EncoderError::Tokenizer(format!("no {t} token")))
        };
        let (cls, sep) = (id_of("[CLS]")?, id_of("[SEP]")?);
        let mut out = Array2::<f32>::zeros((vocab, EMBED_DIM));
        let batch = batch.max(1);
        for start in (0..vocab).step_by(batch) {
            let n = batch.min(vocab - start);
            let mut ids = Array2::<i64>::zeros((n, 3));
            for i in 0..n {
                ids[[i, 0]] = cls;
                ids[[i, 1]] = (start + i) as i64;
                ids[[i, 2]] = sep;
            }
            let mask = Array2::<i64>::ones((n, 3));
            let types = Array2::<i64>::zeros((n, 3));
            let e = self.embed_ids(&ids, &mask, &types)?;
            for (i, row) in e.rows().into_iter().enumerate() {
                out.row_mut(start + i).assign(&row);
            }
        }
        Ok(out)
    }

    /// One ONNX run over padded `[b, s]` inputs, then masked mean pooling and L2 norm.
    fn embed_ids(
        &self,
        ids: &Array2<i64>,
        mask: &Array2<i64>,
        types: &Array2<i64>,
    ) -> Result<Array2<f32>, EncoderError> {
        let (b, s) = ids.dim();
        let mut session = self.session()?;
        let outputs = session.run(ort::inputs![
            "input_ids" => TensorRef::from_array_view(ids)?,
            "attention_mask" => TensorRef::from_array_view(mask)?,
            "token_type_ids" => TensorRef::from_array_view(types)?,
        ])?;
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or_else(|| EncoderError::Output("no last_hidden_state".into()))?
            .try_extract_array::<f32>()?;
        let shape = hidden.shape().to_vec();
        if shape.len() != 3 || shape[0] != b || shape[1] != s || shape[2] != EMBED_DIM {
            return Err(EncoderError::Output(format!(
                "last_hidden_state shape {shape:?}, expected [{b}, {s}, {EMBED_DIM}]"
            )));
        }
        let mut out = Array2::<f32>::zeros((b, EMBED_DIM));
        for i in 0..b {
            let mut count = 0.0f32;
            let mut row = out.row_mut(i);
            for j in 0..s {
                if mask[[i, j]] == 0 {
                    continue;
                }
                count += 1.0;
                for k in 0..EMBED_DIM {
                    row[k] += hidden[[i, j, k]];
                }
            }
            row.mapv_inplace(|v| v / count.max(1.0));
            let norm = row.dot(&row).sqrt().max(1e-12);
            row.mapv_inplace(|v| v / norm);
        }
        Ok(out)
    }

    /// Embeds many prompts in batches of similar length (less padding), results in input order.
    /// `progress` is called with the number done so far.
    pub fn encode_all(
        &self,
        texts: &[&str],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Array2<f32>, EncoderError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = Array2::<f32>::zeros((texts.len(), EMBED_DIM));
        for (done, chunk) in order.chunks(batch.max(1)).enumerate() {
            let part: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let emb = self.encode(&part)?;
            for (r, &i) in chunk.iter().enumerate() {
                out.row_mut(i).assign(&emb.row(r));
            }
            progress((done * batch.max(1) + chunk.len()).min(texts.len()));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn loaded() -> Option<Encoder> {
        let cfg = EncoderConfig::default();
        if let Err(e) = cfg.assets.check() {
            eprintln!("skipping encoder test: {e}");
            return None;
        }
        Some(Encoder::load(&cfg).unwrap())
    }

    #[test]
    fn truncation_keeps_the_head_or_the_head_and_tail() {
        let ids: Vec<u32> = (0..10).collect(); // 0 = [CLS], 9 = [SEP]
        let kept = |max, tail| kept_pieces(&ids, max, tail).collect::<Vec<_>>();
        assert_eq!(kept(10, 0), ids);
        assert_eq!(kept(16, 4), ids);
        assert_eq!(kept(5, 0), [0, 1, 2, 3, 9]);
        assert_eq!(kept(5, 2), [0, 1, 2, 8, 9]);
        assert_eq!(kept(5, 1), [0, 1, 2, 3, 9]);
    }

    #[test]
    fn missing_runtime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = EncoderConfig {
            assets: AssetPaths {
                ort_lib: dir.path().join("nope.so"),
                model: dir.path().join("model.onnx"),
                tokenizer: dir.path().join("tokenizer.json"),
            },
            ..EncoderConfig::default()
        };
        let err = Encoder::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("ONNX Runtime library") && err.contains("fetch-router-assets.sh"),
            "{err}"
        );
        assert!(environment(&dir.path().join("nope.so")).is_err());
    }

    #[test]
    fn tokenized_once_then_batched_matches_encoding_each_alone() {
        let Some(enc) = loaded() else { return };
        let texts = [
            "How do I bake bread?",
            "Prove that sqrt(2) is irrational, step by step.",
        ];
        let pieces: Vec<Pieces> = texts.iter().map(|t| enc.tokenize(t).unwrap()).collect();
        assert!(pieces[0].len() < pieces[1].len());
        let long = enc.tokenize(&"word ".repeat(2000)).unwrap();
        assert_eq!(long.len(), enc.max_len());
        let batched = enc
            .encode_pieces(&pieces.iter().collect::<Vec<_>>())
            .unwrap();
        for (i, t) in texts.iter().enumerate() {
            let alone = enc.encode(&[t]).unwrap();
            assert!((alone.row(0).dot(&batched.row(i)) - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn embeddings_are_unit_norm_and_semantic() {
        let Some(enc) = loaded() else { return };
        let e = enc
            .encode(&[
                "How do I bake bread?",
                "What is a good recipe for baking bread at home?",
                "Prove that sqrt(2) is irrational.",
            ])
            .unwrap();
        assert_eq!(e.shape(), &[3, EMBED_DIM]);
        for r in e.rows() {
            assert!((r.dot(&r) - 1.0).abs() < 1e-4);
        }
        let near = e.row(0).dot(&e.row(1));
        let far = e.row(0).dot(&e.row(2));
        assert!(near > far + 0.3, "near {near} far {far}");
        // Batching (padding) must not change a prompt's embedding.
        let alone = enc.encode(&["Prove that sqrt(2) is irrational."]).unwrap();
        assert!((alone.row(0).dot(&e.row(2)) - 1.0).abs() < 1e-4);
        // Long prompts are truncated, not rejected.
        // Concurrent callers on a multi-session encoder get the same vectors.
        let multi = Encoder::load(&EncoderConfig {
            sessions: 2,
            ..EncoderConfig::default()
        })
        .unwrap();
        let prompts = ["How do I bake bread?", "Prove that sqrt(2) is irrational."];
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| multi.encode(&prompts).unwrap()))
                .collect();
            for h in hs {
                let v = h.join().unwrap();
                assert!((v.row(1).dot(&e.row(2)) - 1.0).abs() < 1e-4);
            }
        });
        let long = "word ".repeat(2000);
        assert_eq!(
            enc.encode(&[long.as_str()]).unwrap().shape(),
            &[1, EMBED_DIM]
        );
        // With keep_tail, a long prompt's ending counts; a short prompt is embedded as before.
        let tailed = Encoder::load(&EncoderConfig {
            max_len: 16,
            keep_tail: 8,
            ..EncoderConfig::default()
        })
        .unwrap();
        let head_only = Encoder::load(&EncoderConfig {
            max_len: 16,
            keep_tail: 0,
            ..EncoderConfig::default()
        })
        .unwrap();
        let story = format!("{} Prove that sqrt(2) is irrational.", "bread ".repeat(40));
        let cos = |a: &Encoder| {
            let v = a
                .encode(&[story.as_str(), "Prove that sqrt(2) is irrational."])
                .unwrap();
            v.row(0).dot(&v.row(1))
        };
        assert!(
            cos(&tailed) > cos(&head_only) + 0.2,
            "{} {}",
            cos(&tailed),
            cos(&head_only)
        );
        let short = tailed
            .encode(&["Prove that sqrt(2) is irrational."])
            .unwrap();
        assert!((short.row(0).dot(&e.row(2)) - 1.0).abs() < 1e-4);
    }
}
