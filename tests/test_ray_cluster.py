"""`collect` and `label` with ``executor=ray`` on a real Ray cluster on this machine (``make test-ray``).

A head (no CPUs) and three worker nodes of one CPU each, started with ``ray start`` on 127.0.0.1 only (Ray
would otherwise announce the machine's outward address: the head runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
which keeps it on the loopback, and the worker nodes keep the 127.0.0.1 they are given), in a temp folder of
their own; every process is ended by its process group at teardown, even when a test fails. Where mount
namespaces are allowed (``unshare -m``), every node sees an empty folder over `HIDDEN`: a model placed there is
on the driver's disk only, as on a worker machine without the model.

    pytest -m ray tests/test_ray_cluster.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_collect_label import model_dir  # noqa: F401 - the tiny policy fixture, re-used

pytest.importorskip("ray")

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
WORKER_NODES = 3
#: `ray start` with the address it is given kept as is (Ray replaces 127.0.0.1 by the machine's address)
KEEP_LOOPBACK = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)
DATASET_FILES = ("data-00000-of-00001.arrow", "dataset_info.json", "state.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_hide() -> bool:
    """Whether a process may mount a private tmpfs here (`unshare -m`: root)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


class Cluster:
    """The head and worker nodes: their `ray start --block` processes, each the leader of its own session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.hidden = root / "hidden"
        self.hidden.mkdir()
        self.hide = _can_hide()
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # a test cluster on the loopback, its own temp folder
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", KEEP_LOOPBACK, "start", "--block", "--node-ip-address=127.0.0.1", *args]
        if self.hide:  # the node's own mount namespace, with an empty folder over `hidden`
            cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{self.hidden}" && exec "$0" "$@"', *cmd]
        with open(self.root / log, "w") as f:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=f, stderr=subprocess.STDOUT)
        self.nodes.append(proc)
        return proc

    def alive_nodes(self) -> int:
        code = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        res = subprocess.run([sys.executable, "-c", code], env=self.driver_env(), capture_output=True, text=True)
        return int(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else 0

    def start(self) -> None:
        head_env = {**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self._start(
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                f"--temp-dir={self.root / 'ray'}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            head_env,
            "head.log",
        )
        # one node at a time: on a small machine, nodes starting together time out registering with the head
        for k in range(WORKER_NODES):
            self.wait_for(k + 1)
            self._start([f"--address={self.address}", "--num-cpus=1"], self.env, f"worker{k}.log")
        self.wait_for(WORKER_NODES + 1)

    def wait_for(self, nodes: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.nodes):
                raise RuntimeError(f"a Ray node exited; logs in {self.root}")
            if self.alive_nodes() >= nodes:
                return
            time.sleep(1.0)
        raise RuntimeError(f"the Ray cluster did not reach {nodes} nodes; logs in {self.root}")

    def driver_env(self) -> dict[str, str]:
        """What a driver on this machine needs: the address, and Ray kept on the loopback."""
        return {**self.env, "RAY_ADDRESS": self.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    @staticmethod
    def is_worker(pid: int) -> bool:
        """Whether `pid` is a Ray worker process (Ray titles them ``ray::...``)."""
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
        except OSError:
            return False

    def stop(self) -> None:
        for p in self.nodes:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.nodes:
            p.wait(timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def cli(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "prefixvalue.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = cli(args, env)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def collect_args(model, out, **kw) -> list[str]:
    args = {"task": "arith", "model": model, "num_prompts": 12, "traces_per_prompt": 3, "seed": 0}
    args.update({"max_new_tokens": 24, "chunk_prompts": 2, "out": out, "progress": "false", **kw})
    return [f"{k}={v}" for k, v in args.items()]


def label_args(traces, model, out, **kw) -> list[str]:
    args = {"traces": traces, "model": model, "positions": "stride:2", "samples": 8, "seed": 0}
    args.update({"chunk_traces": 1, "prompts": "all", "out": out, "progress": "false", **kw})
    return [f"{k}={v}" for k, v in args.items()]


def same_files(a: Path, b: Path) -> None:
    for name in DATASET_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_dir, cluster):  # noqa: F811
    """collect and label in one plain process (1 torch thread, as each 1-CPU Ray worker): the reference."""
    root = tmp_path_factory.mktemp("one")
    env = {**cluster.env}
    res = run_cli(["collect", *collect_args(model_dir, root / "traces")], env)
    assert res.returncode == 0, res.stderr
    res = run_cli(["label", *label_args(root / "traces", model_dir, root / "labels")], env)
    assert res.returncode == 0, res.stderr
    return root


def test_collect_and_label_on_the_cluster_match_one_process_with_a_worker_killed(
    cluster,
    model_dir,  # noqa: F811
    one_process,
    tmp_path,
):
    env = cluster.driver_env()
    res = run_cli(["collect", *collect_args(model_dir, tmp_path / "traces"), "executor=ray"], env)
    assert res.returncode == 0, res.stderr
    same_files(tmp_path / "traces", one_process / "traces")
    # label, and SIGKILL one shard worker once the first shards are written and the run goes on
    out = tmp_path / "labels"
    proc = cli(["label", *label_args(one_process / "traces", model_dir, out), "executor=ray"], env)
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        done = sorted((out / "shards").glob("shard-*/done.json")) if (out / "shards").exists() else []
        if done:  # the worker that wrote the first shard is running its next ones
            pid = int(json.loads(done[0].read_text())["ray"]["pid"])
            if cluster.is_worker(pid):
                os.kill(pid, signal.SIGKILL)
                killed, shards_at_kill = pid, len(done)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert killed is not None and shards_at_kill < 36, "no worker was killed mid-run"
    same_files(out, one_process / "labels")
    pids = {json.loads(p.read_text())["ray"]["pid"] for p in (out / "shards").glob("shard-*/done.json")}
    assert len(list((out / "shards").glob("shard-*"))) == 36 and len(pids) > WORKER_NODES  # a worker was replaced


def test_a_killed_driver_resumes_from_the_finished_shards(cluster, model_dir, one_process, tmp_path):  # noqa: F811
    env = cluster.driver_env()
    out = tmp_path / "labels"
    proc = cli(["label", *label_args(one_process / "traces", model_dir, out), "executor=ray"], env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "shards").exists() and len(list((out / "shards").glob("shard-*"))) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = {p.name: (p / "done.json").read_text() for p in (out / "shards").glob("shard-*")}
    assert 0 < len(before) < 36, "the driver was not killed part-way"
    res = run_cli(["label", *label_args(one_process / "traces", model_dir, out), "executor=ray"], env)
    assert res.returncode == 0, res.stderr
    same_files(out, one_process / "labels")
    for name, text in before.items():  # the shards written before the kill were kept, not redone
        assert (out / "shards" / name / "done.json").read_text() == text


def test_a_worker_without_the_model_fails_in_one_line(cluster, model_dir, one_process, tmp_path):  # noqa: F811
    if not cluster.hide:
        pytest.skip("mount namespaces (unshare -m) are not allowed here: no node can lack a path")
    model = cluster.hidden / "tiny"  # on the driver's disk; the nodes see an empty folder there
    shutil.copytree(model_dir, model)
    env = cluster.driver_env()
    out = tmp_path / "traces"
    res = run_cli(["collect", *collect_args(model, out), "executor=ray"], env)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prefixvalue collect: "), res.stderr
    assert "on the Ray worker" in lines[0] and "Traceback" not in res.stderr
    assert not (out / "run.json").exists()  # the corrected command is not refused as another run
