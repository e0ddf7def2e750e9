"""``prefixvalue serve`` (docs/design.md, "Reward interfaces"): the reward server answers OpenRLHF's /get_reward,
/score and /health over real HTTP on 127.0.0.1, scores bursts of concurrent requests in shared batches, refuses
bad requests with a 4xx and keeps answering, and a user mistake on the command line is one line and exit code 2.

pytest tests/test_serve.py
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prefixvalue import cli, value
from prefixvalue.serving import RewardServer, ServeOptions

PAIRS = [("Q:3+5*2=", "3+5=8\n8*2=6\n"), ("Q:1+2=", "1+2=3\nA:3"), ("Q:4-1*3=", "4-1=3\n3*3=9\nA:9"), ("Q:2+2=", "")]


@pytest.fixture(scope="module")
def checkpoint(random_head_checkpoint):
    return random_head_checkpoint


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The model the expected values come from: not the server's (only the server's worker touches that one)."""
    return value.load_value_model(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    options = ServeOptions(port=0, max_request_bytes=4096, max_items=50, max_batch=64, batch_wait_ms=20.0)
    srv = RewardServer(value.load_value_model(checkpoint), options).start()
    yield srv
    srv.shutdown()


def call(server, method, path, body=None, raw=None, headers=None):
    """(status, parsed JSON) of one request over a fresh HTTP connection."""
    port = server.httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_health(server):
    status, out = call(server, "GET", "/health")
    assert status == 200 and out["status"] == "ok" and out["kind"] == "head" and out["score"] == "final"


def test_get_reward_is_the_value_at_the_end_of_each_response(server, reference):
    prompts = [p for p, _ in PAIRS]
    # OpenRLHF decodes prompt + response tokens with special tokens: a trailing <eos> is not part of the response
    queries = [p + c + ("<eos>" if i == 1 else "") for i, (p, c) in enumerate(PAIRS)]
    status, out = call(server, "POST", "/get_reward", {"query": queries, "prompts": prompts, "labels": ["?"] * 4})
    assert status == 200, out
    want = [reference.score(p, c)[-1] for p, c in PAIRS]
    assert len(out["rewards"]) == len(queries)
    assert out["rewards"] == pytest.approx(want, abs=1e-5)
    assert out["scores"] == out["rewards"] and out["extra_logs"] == {}
    assert call(server, "POST", "/get_reward", {"query": [], "prompts": []}) == (
        200,
        {"rewards": [], "scores": [], "extra_logs": {}},
    )


def test_score_gives_token_values_and_step_readings(server, reference):
    prompts, completions = zip(*PAIRS)
    status, out = call(server, "POST", "/score", {"prompts": list(prompts), "completions": list(completions)})
    assert status == 200, out
    assert len(out["results"]) == len(PAIRS)
    for (p, c), r in zip(PAIRS, out["results"]):
        values = reference.score(p, c)
        assert len(r["token_values"]) == len(reference.encode(p, c)[1]) + 1 == len(c) + 1
        assert r["token_values"] == pytest.approx(list(values), abs=1e-5)
        assert "".join(r["tokens"]) == c
        assert r["reward"] == pytest.approx(values[-1], abs=1e-5)
        assert len(r["step_values"]) == len(r["step_td"]) == len(r["step_ends"])
        if c:
            assert r["step_ends"][-1] == len(c)
            assert sum(r["step_td"]) == pytest.approx(values[-1] - values[0], abs=1e-5)
    first = out["results"][0]
    assert first["step_ends"] == [6, 12]
    values = reference.score(*PAIRS[0])
    assert first["step_values"] == pytest.approx([values[6], values[12]], abs=1e-5)
    assert first["step_td"] == pytest.approx([values[6] - values[0], values[12] - values[6]], abs=1e-5)


def test_a_burst_of_100_concurrent_requests_is_answered_in_shared_batches(server, reference, monkeypatch):
    pairs = [(f"Q:{i % 10}+{i // 10}=", f"{i % 10}+{i // 10}={(i % 10 + i // 10) % 10}\n") for i in range(100)]
    want = [reference.score(p, c)[-1] for p, c in pairs]
    before = call(server, "GET", "/health")[1]
    predict, held = server.model.predict, threading.Event()

    def first_batch_waits(prompt_ids, completion_ids, batch_size=32):
        # the first forward pass waits until every other request of the burst is queued behind it, so that what
        # arrived together is batched together however slowly this machine runs the clients
        deadline = time.monotonic() + 60
        while not held.is_set() and server._queue.qsize() + len(prompt_ids) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        held.set()
        return predict(prompt_ids, completion_ids, batch_size=batch_size)

    monkeypatch.setattr(server.model, "predict", first_batch_waits)

    def one(i):
        p, c = pairs[i]
        return call(server, "POST", "/get_reward", {"query": [p + c], "prompts": [p]})

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(one, range(100)))
    assert [s for s, _ in answers] == [200] * 100
    assert [out["rewards"][0] for _, out in answers] == pytest.approx(want, abs=1e-5)
    after = call(server, "GET", "/health")[1]
    assert after["requests"] - before["requests"] == 100 and after["items"] - before["items"] == 100
    # the 99 requests queued behind the first batch share forward passes of up to max_batch = 64 sequences
    assert after["batches"] - before["batches"] <= 3 and after["largest_batch"] >= 36


def test_bad_requests_get_a_4xx_and_the_server_keeps_answering(server):
    ok = {"query": ["Q:1+2=1+2=3"], "prompts": ["Q:1+2="]}
    cases = [
        ("malformed JSON", "POST", "/get_reward", b'{"query": [', 400, "malformed JSON"),
        ("not an object", "POST", "/get_reward", b"[1, 2]", 400, "JSON object"),
        ("missing field", "POST", "/get_reward", {"query": ["Q:1+2=3"]}, 400, "prompts"),
        ("wrong type", "POST", "/get_reward", {"query": "Q:1+2=3", "prompts": ["Q:1+2="]}, 400, "list of strings"),
        ("item of wrong type", "POST", "/score", {"prompts": ["Q:"], "completions": [3]}, 400, "completions"),
        ("lengths differ", "POST", "/get_reward", {"query": ok["query"] * 2, "prompts": ok["prompts"]}, 400, "items"),
        ("query without its prompt", "POST", "/get_reward", {"query": ["A:3"], "prompts": ["Q:1+2="]}, 400, "start"),
        ("too many items", "POST", "/score", {"prompts": ["Q:"] * 51, "completions": ["1"] * 51}, 413, "max_items"),
        ("too large a body", "POST", "/get_reward", b" " * 10_000, 413, "max_request_bytes"),
        (
            "longer than the model",
            "POST",
            "/score",
            {"prompts": ["Q:1="], "completions": ["1" * 200]},
            400,
            "positions",
        ),
        ("unknown route", "POST", "/reward", ok, 404, "/get_reward"),
        ("wrong method", "GET", "/get_reward", None, 405, "POST"),
    ]
    for name, method, path, body, status, words in cases:
        raw = body if isinstance(body, bytes) else None
        got, out = call(server, method, path, body=None if raw else body, raw=raw)
        assert got == status, (name, out)
        assert words in out["error"], (name, out)
        assert call(server, "GET", "/health")[0] == 200, name
    # a Content-Length far over the limit is refused from the header alone
    port = server.httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/get_reward")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "max_request_bytes" in json.loads(resp.read())["error"]
    conn.close()
    assert call(server, "POST", "/get_reward", ok)[0] == 200


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "checkpoint={root}/no_ckpt"], "no_ckpt"),
        (["serve", "checkpoint={root}"], "not a value checkpoint"),
        (["serve", "checkpoint={ckpt}", "port=70000"], "port"),
        (["serve", "checkpoint={ckpt}", "score=mean"], "score"),
        (["serve"], "checkpoint"),
    ],
    ids=["missing checkpoint", "folder without a checkpoint", "bad port", "bad score", "no checkpoint"],
)
def test_a_serve_mistake_is_one_line_and_exit_code_2(argv, words, checkpoint, tmp_path, capsys):
    args = [a.format(root=tmp_path, ckpt=checkpoint) for a in argv]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("prefixvalue serve:") and words in err, err


def test_a_port_in_use_is_one_line_and_exit_code_2(checkpoint, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        capsys.readouterr()
        assert cli.main(["serve", f"checkpoint={checkpoint}", f"port={port}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    # model loading may draw a progress bar before it; the error is the last line, and the only one
    errors = [x for x in err.splitlines() if x.startswith("prefixvalue")]
    assert "Traceback" not in err and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "cannot listen" in errors[0], err
