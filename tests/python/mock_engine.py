"""A small OpenAI-compatible inference engine for the agent tests: it speaks
`POST /v1/chat/completions` (plain and SSE), records every body it receives,
and answers by a script, so tests can check what routemesh forwarded and
what it made of the answer:

- tools offered and the last turn is the user's: one tool call of the first
  tool (or the one `tool_choice` names), arguments `{"city": "Paris"}`,
  finish_reason `tool_calls` (streamed as `delta.tool_calls` pieces: id and
  name first, the arguments in two fragments);
- the last turn is a tool result: `The tool said: <result>`;
- `response_format` json_object / json_schema: `{"answer": "42"}`;
- `logprobs: true`: each answer token with a log-probability (and
  `top_logprobs` alternatives when asked);
- a prompt longer than the engine's context (`context` tokens, counting a
  token per 4 characters plus max_tokens): HTTP 400 with OpenAI's
  `context_length_exceeded` error, as vLLM answers;
- otherwise `Hello from <name>.` with usage (cached prompt tokens included).

Each completion gets its own id (`chatcmpl-<name>-<n>`), and the W3C
`traceparent` header of every request is recorded beside its body, so a
trace test can check the engine's call joined the request's trace under
the agent's span.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MockEngine:
    def __init__(self, name: str, context: int | None = None):
        self.name = name
        self.context = context
        self.requests: list[dict] = []
        # The `traceparent` header each request came with (None: none).
        self.traceparents: list[str | None] = []
        # The id each completion was answered with, in request order.
        self.response_ids: list[str] = []
        self._lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                # The worker agent's health probe.
                if self.path.rstrip("/").endswith("/models"):
                    return engine.send_json(self, 200, {"object": "list", "data": [{"id": engine.name, "object": "model"}]})
                engine.send_json(self, 404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with engine._lock:
                    engine.requests.append(body)
                    engine.traceparents.append(self.headers.get("traceparent"))
                    response_id = f"chatcmpl-{engine.name}-{len(engine.requests)}"
                    engine.response_ids.append(response_id)
                engine.answer(self, body, response_id)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def last(self) -> dict:
        with self._lock:
            return self.requests[-1]

    # -- the script -------------------------------------------------------

    def prompt_tokens(self, body) -> int:
        chars = 0
        for m in body.get("messages", []):
            content = m.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(p.get("text", "")) for p in content)
        return (chars + 3) // 4

    def answer(self, handler, body, response_id):
        prompt = self.prompt_tokens(body)
        if self.context is not None and prompt + body.get("max_tokens", 0) > self.context:
            error = {
                "error": {
                    "message": f"This model's maximum context length is {self.context} tokens. However, you requested "
                    f"{prompt + body.get('max_tokens', 0)} tokens ({prompt} in the messages, {body.get('max_tokens', 0)} "
                    "in the completion). Please reduce the length of the messages or completion.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
            return self.send_json(handler, 400, error)
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        text, calls = None, []
        if last.get("role") == "tool":
            text = f"The tool said: {last.get('content')}"
        elif tools and choice != "none":
            name = tools[0]["function"]["name"]
            if isinstance(choice, dict):
                name = choice["function"]["name"]
            calls = [{"id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}]
        elif (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            text = '{"answer": "42"}'
        else:
            text = f"Hello from {self.name}."
        pieces = [] if text is None else [text[i : i + 6] for i in range(0, len(text), 6)]
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": max(1, len(pieces)),
            "total_tokens": prompt + max(1, len(pieces)),
            "prompt_tokens_details": {"cached_tokens": prompt // 2},
        }
        finish = "tool_calls" if calls else "stop"
        if body.get("stream"):
            return self.stream(handler, body, pieces, calls, finish, usage, response_id)
        message = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        choice_out = {"index": 0, "message": message, "finish_reason": finish, "logprobs": self.logprobs(body, pieces)}
        self.send_json(handler, 200, {"id": response_id, "object": "chat.completion", "model": self.name, "choices": [choice_out], "usage": usage})

    def logprobs(self, body, pieces):
        if not body.get("logprobs") or not pieces:
            return None
        top = body.get("top_logprobs") or 0
        return {
            "content": [
                {
                    "token": p,
                    "logprob": -0.25,
                    "bytes": list(p.encode()),
                    "top_logprobs": [{"token": p, "logprob": -0.25, "bytes": list(p.encode())}][:top]
                    + [{"token": "x", "logprob": -3.0, "bytes": [120]} for _ in range(max(0, top - 1))],
                }
                for p in pieces
            ]
        }

    def send_json(self, handler, status, value):
        data = json.dumps(value).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def stream(self, handler, body, pieces, calls, finish, usage, response_id):
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()

        def send(chunk):
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            handler.wfile.flush()

        base = {"id": response_id, "object": "chat.completion.chunk", "model": self.name}
        send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for p in pieces:
            lp = self.logprobs(body, [p])
            send({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None, "logprobs": lp}]})
        for i, call in enumerate(calls):
            head = {"index": i, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
            send({**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]})
            args = call["function"]["arguments"]
            for frag in (args[: len(args) // 2], args[len(args) // 2 :]):
                send({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": frag}}]}, "finish_reason": None}]})
        send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        send({**base, "choices": [], "usage": usage})
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()
        handler.close_connection = True
