"""vLLM's OpenAI-compatible server started with `--load-format shardstream` answers as it does with
its own loader: the server runs its usual processes (API server, engine core), each of which loads
the plugin from the entry point."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import MAX_TOKENS, PROMPT

START_TIMEOUT_S = 300  # two cores shared with other work: the first start imports a lot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _serve_and_complete(model: str, load_format: str, log_path: str) -> str:
    """Starts the server, asks for one greedy completion, stops the server; returns the text."""
    port = _free_port()
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server's usual process layout
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--load-format", load_format, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "128",
               "--max-num-seqs", "2", "--seed", "0"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise AssertionError(f"server exited with {server.returncode}:\n"
                                     + open(log_path).read()[-4000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not up after {START_TIMEOUT_S} s:\n"
                                         + open(log_path).read()[-4000:]) from None
                time.sleep(1)
        reply = _post(f"http://127.0.0.1:{port}/v1/completions",
                      {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                       "temperature": 0, "ignore_eos": True})
        assert reply["usage"]["completion_tokens"] == MAX_TOKENS, reply
        return reply["choices"][0]["text"]
    finally:
        server.send_signal(signal.SIGINT)  # as Ctrl-C: the server shuts its engine down
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise AssertionError("server did not stop within 60 s of SIGINT") from None


def test_openai_server_answers_as_with_vllms_loader(llama_dir: str, tmp_path) -> None:
    logs = {f: str(tmp_path / f"server-{f}.log") for f in ("shardstream", "safetensors")}
    text = _serve_and_complete(llama_dir, "shardstream", logs["shardstream"])
    want = _serve_and_complete(llama_dir, "safetensors", logs["safetensors"])
    assert text == want
    assert text  # 16 tokens of a byte-level BPE: never empty
    # The engine core loaded the weights with shardstream (its one log line), the other did not.
    assert "shardstream: loaded" in open(logs["shardstream"]).read()
    assert "shardstream: loaded" not in open(logs["safetensors"]).read()
