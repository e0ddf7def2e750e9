"""An HTTP reward server over a value model, speaking OpenRLHF's remote reward-model protocol (docs/design.md,
"Reward interfaces"); ``prefixvalue serve`` (`prefixvalue.tools.serve`) runs it.

Routes (JSON in, JSON out; every error is ``{"error": "..."}`` with a 4xx or 5xx status):

- ``POST /get_reward``: ``{"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [...]}`` (labels
  ignored) → ``{"rewards": [...], "scores": [...], "extra_logs": {}}``, one float per query (scores = rewards);
- ``POST /score``: ``{"prompts": [...], "completions": [...]}`` → ``{"results": [{"reward", "token_values",
  "tokens", "step_ends", "step_values", "step_td"}, ...]}``: P̂ at every prefix and per-step readings;
- ``GET /health``: ``{"status": "ok", ...}`` with the checkpoint, the score and counters.

Only the standard library: `http.server.ThreadingHTTPServer` reads requests in threads, and one worker thread owns
the model (it is not thread-safe, nor is its tokenizer): it drains the queue of validated requests, waiting up to
``batch_wait_ms`` for up to ``max_batch`` items, and scores them with one `ValueModel.predict` call. A request over
``max_request_bytes`` or ``max_items`` is refused with 413; a malformed one with 400 naming what is wrong; no
request takes the server down.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .config import ConfigError, field
from .value.base import ValueModel
from .value.ensemble import ValueEnsemble
from .value.rewards import SCORES, EncodedItem, encode_item, item_scores, model_step_end

#: the routes and the method each answers
ROUTES = {"/get_reward": "POST", "/score": "POST", "/health": "GET"}
#: largest over-limit body read and dropped before answering 413 (a client still sending a body the server never
#: read may see its connection reset instead of the answer); a larger one is refused from its Content-Length alone
DRAIN_LIMIT = 64 * 2**20


@dataclass
class ServeOptions:
    """How the reward server listens, batches and refuses (`prefixvalue serve` extends it with the checkpoint)."""

    host: str = field("127.0.0.1", help="address to listen on (0.0.0.0: every interface; the server has no auth)")
    port: int = field(8000, help="TCP port (0: any free port, printed at start)")
    score: str = field("final", help="reward of /get_reward: final | min_step | td_sum (probability units)")
    step_separator: str | None = field(
        None,
        escapes=True,
        help="steps end after this text (min_step, td_sum, /score); default the checkpoint's step end "
        "(step_format.json: ';' for arith), a newline for a checkpoint that records none",
    )
    rendered_prompts: bool = field(
        False,
        help="prompts arrive already formatted for the model (OpenRLHF with --apply_chat_template): tokenise them as "
        "sent instead of through the checkpoint's prompt format",
    )
    max_batch: int = field(
        64, help="most sequences scored in one forward pass (requests that arrive together share it)"
    )
    batch_wait_ms: float = field(5.0, help="how long the model worker waits for more requests to fill a batch")
    max_request_bytes: int = field(16 * 2**20, help="largest request body; larger ones get 413")
    max_items: int = field(1024, help="most queries or completions in one request; more get 413")
    max_queue: int = field(4096, help="requests waiting for the model; more get 503 (busy)")
    request_timeout_s: float = field(600.0, help="a request waiting longer for the model gets 503")
    log_requests: bool = field(False, help="log every request on stderr (errors are always logged)")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve: port must be in 0..65535, got {self.port}")
        if self.score not in SCORES:
            raise ConfigError(f"serve: score must be one of {', '.join(SCORES)}, got {self.score!r}")
        for name in ("max_batch", "max_request_bytes", "max_items", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ConfigError("serve: batch_wait_ms must be >= 0 and request_timeout_s > 0")


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Job:
    """One request's items on their way through the model worker."""

    items: list[tuple[str, str]]  # (prompt, completion)
    details: bool  # /score: token values and step readings; /get_reward: the reward only
    done: threading.Event = dc_field(default_factory=threading.Event)
    result: list[Any] | None = None
    error: RequestError | None = None


def _max_positions(model: ValueModel | ValueEnsemble) -> int | None:
    """The longest sequence the backbone takes (its config's position count), None when it has no limit; for an
    ensemble, its shortest member's."""
    if isinstance(model, ValueEnsemble):
        limits = [n for n in (_max_positions(m) for m in model.members) if n is not None]
        return min(limits) if limits else None
    lm = model.lm.get_base_model() if hasattr(model.lm, "get_base_model") else model.lm
    cfg = getattr(lm, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n - model.num_virtual_tokens
    return None


def _strip_tail(text: str, tails: tuple[str, ...]) -> str:
    """`text` without trailing end-of-sequence or padding tokens (OpenRLHF decodes queries with them)."""
    stripped = True
    while stripped:
        stripped = False
        for t in tails:
            if t and text.endswith(t):
                text, stripped = text[: -len(t)], True
    return text


class RewardServer:
    """The reward server over `model` (see the module docstring). ``serve_forever()`` blocks until
    ``shutdown()``; ``start()`` serves in a background thread. ``url`` is where it listens (a port of 0 is
    resolved when the socket is bound, at construction)."""

    def __init__(self, model: ValueModel, options: ServeOptions | None = None) -> None:
        self.model = model
        self.options = options or ServeOptions()
        #: where steps end: the option, else the checkpoint's step end (`model_step_end`)
        self.step_separator = (
            self.options.step_separator if self.options.step_separator is not None else model_step_end(model)
        )
        self.max_positions = _max_positions(model)
        tok = model.tokenizer
        self._tails = tuple(t for t in (tok.eos_token, tok.pad_token) if isinstance(t, str) and t)
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="prefixvalue-reward-model", daemon=True)
        self._thread: threading.Thread | None = None
        self._served = False
        self.counts = {"requests": 0, "items": 0, "batches": 0, "largest_batch": 0, "errors": 0}
        self._counts_lock = threading.Lock()
        self.httpd = _HTTPServer((self.options.host, self.options.port), _Handler)
        self.httpd.app = self

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Start the model worker and answer requests until `shutdown` (or an interrupt)."""
        if not self._worker.is_alive():
            self._worker.start()
        self._served = True
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> RewardServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="prefixvalue-reward-http", daemon=True)
        self._served = True
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop answering, stop the worker and close the socket."""
        if self._served:  # socketserver's shutdown waits for a serve_forever that never ran otherwise
            self.httpd.shutdown()
        self.httpd.server_close()
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=30)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _count(self, **inc: int) -> None:
        with self._counts_lock:
            for k, v in inc.items():
                self.counts[k] = max(self.counts[k], v) if k == "largest_batch" else self.counts[k] + v

    # ----- the routes (request threads) --------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self.counts)
        return {
            "status": "ok",
            "checkpoint": str(self.model.source) if self.model.source is not None else None,
            "kind": self.model.kind,
            "score": self.options.score,
            "queued": self._queue.qsize(),
            **counts,
        }

    def get_reward(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenRLHF's ``/get_reward``: each query is its prompt followed by the response."""
        queries = self._strings(body, "query")
        prompts = self._strings(body, "prompts")
        if len(queries) != len(prompts):
            raise RequestError(400, f"'query' has {len(queries)} items but 'prompts' has {len(prompts)}")
        items = []
        for i, (q, p) in enumerate(zip(queries, prompts)):
            if not q.startswith(p):
                raise RequestError(400, f"query {i} does not start with its prompt (prompts[{i}])")
            items.append((p, _strip_tail(q[len(p) :], self._tails)))
        rewards = self.submit(items, details=False)
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/score``: token values, step readings and the reward of each (prompt, completion)."""
        prompts = self._strings(body, "prompts")
        completions = self._strings(body, "completions")
        if len(prompts) != len(completions):
            raise RequestError(400, f"'prompts' has {len(prompts)} items but 'completions' has {len(completions)}")
        return {"results": self.submit(list(zip(prompts, completions)), details=True)}

    def _strings(self, body: dict[str, Any], key: str) -> list[str]:
        if key not in body:
            raise RequestError(400, f"missing field {key!r}")
        value = body[key]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise RequestError(400, f"field {key!r} must be a list of strings")
        if len(value) > self.options.max_items:
            raise RequestError(413, f"{len(value)} items in {key!r}; at most {self.options.max_items} (max_items)")
        return value

    def submit(self, items: list[tuple[str, str]], details: bool) -> list[Any]:
        """Queue `items` for the model worker and wait for their results (RequestError on refusal)."""
        self._count(requests=1, items=len(items))
        if not items:
            return []
        if self._queue.qsize() >= self.options.max_queue:
            raise RequestError(503, f"busy: {self._queue.qsize()} requests wait for the model (max_queue)")
        job = _Job(items, details)
        self._queue.put(job)
        if not job.done.wait(self.options.request_timeout_s):
            raise RequestError(503, f"no answer from the model within {self.options.request_timeout_s} s")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    # ----- the model worker (the only thread that touches the model) ---------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            n = len(jobs[0].items)
            deadline = time.monotonic() + self.options.batch_wait_ms / 1000
            while n < self.options.max_batch:
                left = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                n += len(job.items)
            try:
                self._run(jobs)
            except Exception as exc:  # noqa: BLE001 - the worker outlives any batch
                for job in jobs:
                    if not job.done.is_set():
                        job.error = RequestError(500, f"scoring failed: {type(exc).__name__}: {exc}")
                        job.done.set()

    def _encode(self, job: _Job) -> list[EncodedItem]:
        opts = self.options
        sep = self.step_separator if job.details or opts.score != "final" else None
        encoded = []
        for i, (prompt, completion) in enumerate(job.items):
            try:
                item = encode_item(self.model, prompt, completion, sep, opts.rendered_prompts)
            except (ValueError, TypeError) as exc:
                raise RequestError(400, f"item {i}: {exc}") from None
            length = len(item.prompt_ids) + len(item.completion_ids)
            if self.max_positions is not None and length > self.max_positions:
                raise RequestError(
                    400, f"item {i}: {length} tokens; the model takes at most {self.max_positions} positions"
                )
            encoded.append(item)
        return encoded

    def _run(self, jobs: list[_Job]) -> None:
        """Encode each job (a bad one fails alone), score all of them in one predict call, answer each."""
        live: list[tuple[_Job, list[EncodedItem]]] = []
        for job in jobs:
            try:
                live.append((job, self._encode(job)))
            except RequestError as exc:
                job.error = exc
                job.done.set()
        if not live:
            return
        try:
            self._score(live)
        except Exception:
            if len(live) == 1:
                raise
            for pair in live:  # one request may have broken the batch: each alone, so it fails alone
                try:
                    self._score([pair])
                except Exception as exc:  # noqa: BLE001 - answered as a 500 to its own request
                    pair[0].error = RequestError(500, f"scoring failed: {type(exc).__name__}: {exc}")
                    pair[0].done.set()

    def _score(self, live: list[tuple[_Job, list[EncodedItem]]]) -> None:
        rows = [item for _, items in live for item in items]
        values = self.model.predict(
            [r.prompt_ids for r in rows], [r.completion_ids for r in rows], batch_size=self.options.max_batch
        )
        self._count(batches=1, largest_batch=len(rows))
        at = 0
        for job, items in live:
            job.result = [self._answer(job, item, values[at + k]) for k, item in enumerate(items)]
            at += len(items)
            job.done.set()

    def _answer(self, job: _Job, item: EncodedItem, values: Any) -> Any:
        if not job.details and self.options.score == "final":
            return float(values[-1])
        s = item_scores(values, item.step_ends)
        if not job.details:
            return s[self.options.score]
        return {
            "reward": s[self.options.score],
            "token_values": [float(v) for v in values],
            "tokens": self.model.tokenizer.convert_ids_to_tokens(item.completion_ids),
            "step_ends": item.step_ends,
            "step_values": [float(v) for v in s["step_values"]],
            "step_td": [float(v) for v in s["step_td"]],
        }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # a burst of clients connects before the accept loop reaches them
    app: RewardServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing of a refused body can leak into the next
    timeout = 60  # seconds a client may take to send its request

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        app = self.server.app
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path not in ROUTES:
                raise RequestError(404, f"no route {path}; routes: {', '.join(f'{m} {r}' for r, m in ROUTES.items())}")
            if ROUTES[path] != method:
                raise RequestError(405, f"{path} answers {ROUTES[path]}, not {method}")
            if path == "/health":
                self._send(200, app.health())
                return
            body = self._json_body(app.options.max_request_bytes)
            self._send(200, app.get_reward(body) if path == "/get_reward" else app.score(body))
        except RequestError as exc:
            app._count(errors=1)
            headers = {"Allow": ROUTES[path]} if exc.status == 405 else {}
            self._send(exc.status, {"error": exc.message}, headers)
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            app._count(errors=1)
            self.log_error("error on %s: %s: %s", path, type(exc).__name__, exc)
            self._send(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _json_body(self, limit: int) -> dict[str, Any]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or self.headers.get("Content-Length") is None:
            raise RequestError(411, "send the body with a Content-Length header")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            raise RequestError(400, "Content-Length is not a number") from None
        if length < 0:
            raise RequestError(400, "Content-Length is negative")
        if length > limit:
            self._drain(length)
            raise RequestError(413, f"request body of {length} bytes; at most {limit} (max_request_bytes)")
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {self.timeout} s") from None
        if len(raw) < length:
            raise RequestError(400, f"request body ended after {len(raw)} of {length} bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    def _drain(self, length: int) -> None:
        """Read and drop a refused body that is arriving (up to `DRAIN_LIMIT`), so that the client reads the 413
        rather than a reset connection; a larger one, or one that stops arriving for a moment, is left unread."""
        if length > DRAIN_LIMIT:
            return
        left = length
        self.connection.settimeout(0.5)
        try:
            while left > 0:
                chunk = self.rfile.read1(min(left, 2**16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:  # a timeout too: the connection closes after the answer anyway
            pass
        finally:
            self.connection.settimeout(self.timeout)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away; nothing to answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.app.options.log_requests:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        super().log_message(format, *args)


__all__ = ["DRAIN_LIMIT", "ROUTES", "RequestError", "RewardServer", "ServeOptions"]
