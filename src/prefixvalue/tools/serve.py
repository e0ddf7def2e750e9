"""``prefixvalue serve``: a value checkpoint as an HTTP reward server for RL trainers (OpenRLHF's remote reward
model protocol, `prefixvalue.serving`; docs/design.md, "Reward interfaces").

    prefixvalue serve checkpoint=runs/quickstart/train_head/final host=127.0.0.1 port=8000
    # OpenRLHF: --remote_rm_url http://127.0.0.1:8000/get_reward
    curl -s localhost:8000/get_reward -d '{"query": ["Q:3+5*2=3+5=8;8*2=6;A:6"], "prompts": ["Q:3+5*2="]}'

Routes: ``POST /get_reward`` (OpenRLHF), ``POST /score`` (token values and step scores), ``GET /health``.
The server writes nothing; it runs until interrupted (Ctrl-C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, field, parse_config
from ..loading import ModelLoadConfig
from ..serving import ROUTES, RewardServer, ServeOptions


@dataclass
class ServeInputs(ModelLoadConfig):
    """The checkpoint the server loads and where."""

    checkpoint: str = field("", help="value checkpoint folder or Hub id")
    base_model: str | None = field(None, help="base model path or Hub id (default: the checkpoint's, searched)")
    device: str | None = field(None, help="torch device (default: cuda if present, else cpu)")
    dtype: str = field("float32", help="dtype of the value model: float32 | bfloat16 | float16 | auto")


@dataclass
class ServeConfig(ServeOptions, ServeInputs):
    """Serve a value checkpoint's rewards over HTTP (OpenRLHF's /get_reward, /score, /health)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ConfigError(f"serve: dtype must be float32, bfloat16, float16 or auto, got {self.dtype!r}")


def build_server(cfg: ServeConfig) -> RewardServer:
    """Load the checkpoint and bind the server (not yet serving); ConfigError, in one line, for a missing or
    foreign checkpoint and for an address it cannot listen on."""
    if not cfg.checkpoint:
        raise ConfigError("serve: give checkpoint=DIR_OR_HUB_ID")
    from ..policies import default_device
    from ..value import is_value_checkpoint, load_value_model

    folder = Path(cfg.checkpoint).expanduser()
    if folder.is_dir() and not is_value_checkpoint(folder):
        raise ConfigError(f"serve: {cfg.checkpoint} is not a value checkpoint (no value_config.json)")

    device = cfg.device or str(default_device())
    model = load_value_model(
        cfg.checkpoint, device=device, dtype=cfg.dtype, base_model=cfg.base_model, options=cfg.load_options()
    )
    try:
        return RewardServer(model, cfg)
    except OSError as exc:
        raise ConfigError(f"serve: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None


def run(cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    server = build_server(cfg)
    routes = ", ".join(f"{m} {r}" for r, m in ROUTES.items())
    print(f"serve: {cfg.checkpoint} ({server.model.kind}, score={cfg.score}) at {server.url} ({routes})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("serve: stopped", flush=True)
    finally:
        server.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue serve``; returns the exit status."""
    run(parse_config(ServeConfig, list(argv) if argv is not None else None, prog="prefixvalue serve"))
    return 0
