//! The model's tokenizer and chat template, both from the GGUF metadata: a
//! GPT-2 style byte-level BPE (built with the `tokenizers` crate the router
//! already uses) and the ChatML template SmolLM2 and many others use.

use std::collections::HashMap;

use routemesh_proto::v1::ChatMessage;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{PreTokenizerWrapper, Tokenizer};

use super::gguf::{Gguf, Value};

/// Text ↔ tokens for one model.
pub struct ModelTokenizer {
    bpe: Tokenizer,
    /// Each token's bytes (empty for control tokens, which are never shown).
    bytes: Vec<Vec<u8>>,
    /// Tokens that end a turn.
    pub end_of_turn: Vec<u32>,
    im_start: u32,
    im_end: u32,
    /// Said as the system turn when a conversation brings none (from the template).
    default_system: Option<String>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab", &self.bytes.len())
            .field("end_of_turn", &self.end_of_turn)
            .finish()
    }
}

/// GPT-2's map from bytes to printable characters, inverted: the
/// characters a byte-level BPE token is spelled with, back to bytes.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::new();
    let mut extra = 0;
    for b in 0u32..=255 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let (Some(c), Ok(b)) = (char::from_u32(c), u8::try_from(b)) {
            map.insert(c, b);
        }
    }
    map
}

fn string_list<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>, String> {
    match g.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format!("metadata {key}: not strings"))
            })
            .collect(),
        _ => Err(format!("metadata {key} is missing")),
    }
}

impl ModelTokenizer {
    pub fn load(g: &Gguf) -> Result<Self, String> {
        let kind = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if kind != "gpt2" {
            return Err(format!(
                "tokenizer {kind:?} is not supported (byte-level BPE, \"gpt2\", is)"
            ));
        }
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        // The pre-tokenizers whose rules are GPT-2's, optionally with digits
        // split one by one first (SmolLM's); others split text differently
        // and would tokenize wrongly, so they are refused.
        let split_digits = match pre {
            "smollm" => true,
            "gpt2" | "gpt-2" | "default" => false,
            other => {
                return Err(format!(
                    "pre-tokenizer {other:?} is not supported (smollm, gpt2)"
                ));
            }
        };
        let tokens = string_list(g, "tokenizer.ggml.tokens")?;
        let merges = string_list(g, "tokenizer.ggml.merges")?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| format!("merge {m:?} is not two tokens"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| format!("tokenizer: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = if split_digits {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        let to_byte = unicode_to_byte();
        let bytes = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .map(|(t, &ty)| match ty {
                // Control tokens (<|im_end|>, ...) are structure, not text.
                3 => Vec::new(),
                // User-defined tokens are spelled as plain text.
                4 => t.as_bytes().to_vec(),
                _ => t.chars().filter_map(|c| to_byte.get(&c).copied()).collect(),
            })
            .collect();
        let find = |s: &str| tokens.iter().position(|t| *t == s).map(|i| i as u32);
        let (Some(im_start), Some(im_end)) = (find("<|im_start|>"), find("<|im_end|>")) else {
            return Err(
                "chat template: only ChatML models (<|im_start|>, <|im_end|>) are supported".into(),
            );
        };
        let template = g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !template.is_empty() && !template.contains("<|im_start|>") {
            return Err("chat template: only ChatML templates are supported".into());
        }
        let mut end_of_turn = vec![im_end];
        if let Some(eos) = g.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64) {
            end_of_turn.push(eos as u32);
        }
        end_of_turn.extend(find("<|endoftext|>"));
        end_of_turn.sort_unstable();
        end_of_turn.dedup();
        Ok(Self {
            bpe: tokenizer,
            bytes,
            end_of_turn,
            im_start,
            im_end,
            default_system: default_system(template),
        })
    }

    /// Tokens of plain text; special-token spellings in it stay plain text,
    /// so a user cannot close a turn by typing `<|im_end|>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.bpe
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenizer: {e}"))
    }

    /// The conversation in ChatML, ending with an open assistant turn:
    /// `<|im_start|>role\ncontent<|im_end|>\n` per message.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut turn = |role: &str, content: Option<&str>| -> Result<(), String> {
            out.push(self.im_start);
            match content {
                Some(content) => {
                    out.extend(self.encode(&format!("{role}\n{content}"))?);
                    out.push(self.im_end);
                    out.extend(self.encode("\n")?);
                }
                None => out.extend(self.encode(&format!("{role}\n"))?),
            }
            Ok(())
        };
        if messages.first().is_none_or(|m| m.role != "system")
            && let Some(system) = &self.default_system
        {
            turn("system", Some(system))?;
        }
        for m in messages {
            turn(&m.role, Some(&m.text_content()))?;
        }
        turn("assistant", None)?;
        Ok(out)
    }

    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.bytes.get(token as usize).map_or(&[], Vec::as_slice)
    }

    pub fn is_end_of_turn(&self, token: u32) -> bool {
        self.end_of_turn.contains(&token)
    }
}

/// The system prompt a ChatML template inserts when the conversation has
/// none, e.g. SmolLM2's `'<|im_start|>system\nYou are a helpful AI assistant
/// named SmolLM, trained by Hugging Face<|im_end|>\n'`.
fn default_system(template: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system";
    if !template.contains("!= 'system'") && !template.contains("!= \"system\"") {
        return None;
    }
    let rest = &template[template.find(OPEN)? + OPEN.len()..];
    // The newline is a real one in SmolLM2's file, an escape in others.
    let rest = rest
        .strip_prefix('\n')
        .or_else(|| rest.strip_prefix("\\n"))?;
    let len = rest.find("<|im_end|>")?;
    Some(rest[..len].to_owned())
}

/// Turns token bytes into text as they arrive, holding back an incomplete
/// UTF-8 sequence until its last byte comes.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An invalid (not merely unfinished) sequence is
                        // replaced so it cannot block the stream.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end, lossily.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_covers_every_byte() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn default_system_from_smollm_template() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}";
        assert_eq!(
            default_system(t).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(default_system("{{'<|im_start|>' + message['role']}}"), None);
    }

    #[test]
    fn utf8_stream_waits_for_whole_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(s.push(&[0xe2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
