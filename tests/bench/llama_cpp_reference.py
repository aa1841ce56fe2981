"""llama.cpp reference figures for the local backend (docs/BENCHMARKS.md).

Runs the same GGUF through llama-cpp-python (PyPI 0.3.36, built as DESIGN.md
says, in a throwaway venv outside the repo) and prints JSON: the prompt's
tokens, the greedy completion of the golden prompt, time to first token for a
32-token prompt and single-stream decode speed.

    python tests/bench/llama_cpp_reference.py MODEL.gguf [THREADS] [DECODE_TOKENS]
"""

import json
import statistics
import sys
import time

from llama_cpp import Llama

model = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
decode_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128

llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)

# The golden prompt of the local backend's tests, through the model's own
# chat template (jinja, as llama-cpp-python applies it), decoded greedily.
messages = [{"role": "user", "content": "What is the capital of France?"}]
out = llm.create_chat_completion(messages, temperature=0.0, max_tokens=48, repeat_penalty=1.0, seed=1)
golden = out["choices"][0]["message"]["content"]
prompt_text = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)
prompt_tokens = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)


def timed_run(tokens, n_decode):
    """Prefill `tokens`, then decode greedily; returns (ttft_s, decode tok/s)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    tok = int(llm.scores[llm.n_tokens - 1].argmax())
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([tok])
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
    return ttft, n_decode / (time.perf_counter() - t1)


# A 32-token prompt (the same conversation as the local backend's bench,
# through the same ChatML template), as in DESIGN.md's figures.
timing_text = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nPlease tell me a short story about a quick brown fox.<|im_end|>\n<|im_start|>assistant\n"
)
prompt32 = llm.tokenize(timing_text.encode(), add_bos=False, special=True)
timed_run(prompt32, 8)  # warm-up
runs = [timed_run(prompt32, decode_tokens) for _ in range(5)]
print(json.dumps({
    "engine": "llama.cpp (llama-cpp-python 0.3.36)",
    "threads": threads,
    "golden_prompt_tokens": prompt_tokens,
    "golden_greedy": golden,
    "timing_prompt_tokens": len(prompt32),
    "ttft_ms_median": round(statistics.median(r[0] for r in runs) * 1000, 1),
    "decode_tokens_per_s_median": round(statistics.median(r[1] for r in runs), 1),
    "ttft_ms_best": round(min(r[0] for r in runs) * 1000, 1),
    "decode_tokens_per_s_best": round(max(r[1] for r in runs), 1),
    "runs": [[round(a * 1000, 1), round(b, 1)] for a, b in runs],
}, indent=1))
