"""``prefixvalue push-model``: upload a value checkpoint folder to a Hugging Face Hub model repo.

    prefixvalue push-model checkpoint=runs/quickstart/train_head/final repo_id=you/arith-tiny-value private=true

One commit with every file of the folder and the model card rendered for the repo
(`prefixvalue.value.hub.push_to_hub`). Loading it back: ``ValueModel.from_pretrained("you/arith-tiny-value")``.
Needs the network and a token (``huggingface-cli login`` or HF_TOKEN); nothing else in prefixvalue does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import ConfigError, field, parse_config
from ..loading import hub_errors


@dataclass
class PushModelConfig:
    """Upload a value checkpoint folder to the Hub."""

    checkpoint: str = field("", help="value checkpoint folder (e.g. runs/train/final)")
    repo_id: str = field("", help="Hub model repo, owner/name (created when missing)")
    private: bool | None = field(None, help="create the repo private (None: the Hub's default)")
    revision: str | None = field(None, help="branch to commit to (None: main)")
    commit_message: str = field("Upload prefixvalue value checkpoint", help="commit message")


def run(cfg: PushModelConfig) -> dict:
    """Push as `cfg` says; returns ``{"repo_id", "url", "files"}``."""
    if not cfg.checkpoint or not cfg.repo_id:
        raise ConfigError("push-model: give checkpoint=DIR and repo_id=owner/name")
    from ..value.hub import push_to_hub

    with hub_errors(cfg.repo_id, "Hub repo", push=True):  # offline, unreachable, a malformed id: one line
        res = push_to_hub(
            cfg.checkpoint, cfg.repo_id, private=cfg.private, revision=cfg.revision, commit_message=cfg.commit_message
        )
    print(f"push-model: uploaded {len(res.files)} files to {res.url}")
    return {"repo_id": res.repo_id, "url": res.url, "files": res.files}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue push-model``; returns the exit status."""
    run(parse_config(PushModelConfig, list(argv) if argv is not None else None, prog="prefixvalue push-model"))
    return 0
