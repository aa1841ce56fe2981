#!/usr/bin/env python3
"""A tiny, fast OpenAI-compatible upstream for benchmarks: answers
POST /v1/chat/completions at once with a fixed completion (plain JSON, or SSE
when the request says "stream": true). Raw asyncio HTTP/1.1 with keep-alive,
no framework, so the mock costs little CPU beside the proxies it serves.

usage: mock_openai.py PORT_FILE   (binds 127.0.0.1:0, writes the port to PORT_FILE)
"""
import asyncio
import json
import os
import sys
import time

WORDS = ["Paris", " is", " the", " capital", " of", " France", "."] + [" ok"] * 9


def plain_body():
    return json.dumps({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
        "model": "mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": len(WORDS), "total_tokens": 8 + len(WORDS)},
    }, separators=(",", ":")).encode()


def stream_body():
    def chunk(delta, finish=None, usage=None):
        c = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": "mock", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            c["choices"] = []
            c["usage"] = usage
        return b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": w}) for w in WORDS]
    out.append(chunk({}, finish="stop"))
    out.append(chunk({}, usage={"prompt_tokens": 8, "completion_tokens": len(WORDS),
                                "total_tokens": 8 + len(WORDS)}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


# Built once: the mock's job is to be as cheap as possible per request.
PLAIN = plain_body()
STREAM = stream_body()


def response(status, ctype, body):
    head = (f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n").encode()
    return head + body


PLAIN_RESP = response("200 OK", "application/json", PLAIN)
STREAM_RESP = response("200 OK", "text/event-stream", STREAM)
MODELS_RESP = response("200 OK", "application/json",
                       b'{"object":"list","data":[{"id":"mock","object":"model"}]}')
NOT_FOUND = response("404 Not Found", "application/json", b'{"error":{"message":"not found"}}')


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            method, path = head.split(" ", 2)[:2]
            if method == "POST" and path.endswith("/chat/completions"):
                stream = b'"stream":true' in body.replace(b" ", b"")
                self.t.write(STREAM_RESP if stream else PLAIN_RESP)
            elif method == "GET" and path.endswith("/models"):
                self.t.write(MODELS_RESP)
            else:
                self.t.write(NOT_FOUND)


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, sys.argv[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
