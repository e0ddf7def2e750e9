"""Checkpoints that travel: where a checkpoint's base model is, loading by Hub id, pushing to the Hub
(docs/design.md, "Checkpoints that travel").

A value checkpoint names its base (reference) policy in ``value_config.json``. A Hub id is stored as is;
a local base model is stored as an absolute path, with its path relative to the checkpoint folder
(``base_model_relative``) beside it. Loading looks for a local base in this order (`find_base_model`):

1. the recorded path as written (absolute; or, for checkpoints written before this rule, relative to the
   working directory);
2. ``base_model_relative`` joined to the checkpoint folder (the checkpoint moved together with its base);
3. the recorded relative path joined to every folder above the checkpoint (an old checkpoint read from
   another working directory of the same repository);
4. the folder named by the environment variable ``PREFIXVALUE_BASE_MODEL``.

An explicit ``base_model=`` of `load_value_model` / ``from_pretrained`` bypasses the search. When nothing
is found, one line names the recorded base, the places searched and how to point at the model.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..loading import hub_errors, is_local_reference
from .card import CARD_FILE, render_model_card
from .checkpoint import CONFIG_NAME

#: environment variable naming the base model of a checkpoint whose recorded base cannot be found
BASE_MODEL_ENV = "PREFIXVALUE_BASE_MODEL"


def portable_base_model(name: str, checkpoint: str | Path) -> tuple[str, str]:
    """``(base_model, base_model_relative)`` to record in a checkpoint written to `checkpoint`: an
    existing local path becomes absolute, with its path relative to the checkpoint folder; a Hub id (or a
    path that does not exist here) is kept as is, with no relative path."""
    if not name:
        return name, ""
    path = Path(name).expanduser()
    if not path.exists():
        return name, ""
    absolute = os.path.abspath(path)  # symbolic links kept: the path the user gave, made absolute
    try:
        relative = os.path.relpath(absolute, os.path.abspath(Path(checkpoint).expanduser()))
    except ValueError:  # another drive (Windows): no relative path
        relative = ""
    return absolute, relative


def base_model_candidates(recorded: str, relative: str, checkpoint: str | Path) -> list[Path]:
    """The places `find_base_model` looks for a local base model, in order (duplicates removed)."""
    ckpt = Path(checkpoint).expanduser().absolute()
    rec = Path(recorded).expanduser()
    out: list[Path] = [rec]
    if relative:
        out.append(ckpt / relative)
    if not rec.is_absolute():
        out += [parent / rec for parent in [ckpt, *ckpt.parents]]
    env = os.environ.get(BASE_MODEL_ENV)
    if env:
        out.append(Path(env).expanduser())
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.normpath(str(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def find_base_model(recorded: str, relative: str, checkpoint: str | Path) -> str:
    """The base model to load for a checkpoint: a Hub id as recorded, or the first existing local
    candidate (`base_model_candidates`). ConfigError, in one line, when a local base is nowhere."""
    env = os.environ.get(BASE_MODEL_ENV)
    if not recorded:
        if env:
            return env
        raise ConfigError(
            f"checkpoint {checkpoint} records no base model; pass base_model=NAME_OR_PATH or set {BASE_MODEL_ENV}"
        )
    if not is_local_reference(recorded) and not relative:
        return recorded  # a Hub id: transformers finds it (or says why not)
    found, looked = _first_existing(recorded, relative, checkpoint)
    if found is not None:
        return found
    raise ConfigError(
        f"base model {recorded} of checkpoint {checkpoint} not found (looked in {looked}); pass "
        f"base_model=PATH (load_value_model(..., base_model=PATH)) or set {BASE_MODEL_ENV}=PATH"
    )


def find_checker(recorded: str, relative: str, checkpoint: str | Path) -> str:
    """The checker model of a checkpoint (``checker``, docs/design.md "Checker features"), found as the base model
    is (`base_model_candidates`): a Hub id as recorded, else the first existing local candidate. ConfigError, in
    one line, when a local checker is nowhere."""
    if not is_local_reference(recorded) and not relative:
        return recorded
    found, looked = _first_existing(recorded, relative, checkpoint)
    if found is not None:
        return found
    raise ConfigError(
        f"checker {recorded} of checkpoint {checkpoint} not found (looked in {looked}); put the checker model back "
        "there (the values read its log-probabilities)"
    )


def _first_existing(recorded: str, relative: str, checkpoint: str | Path) -> tuple[str | None, str]:
    """(the first existing local candidate or None, the places looked in, in words)."""
    candidates = base_model_candidates(recorded, relative, checkpoint)
    for cand in candidates:
        if cand.exists():
            return str(cand), ""
    return None, ", ".join(str(c) for c in candidates[:4]) + (", ..." if len(candidates) > 4 else "")


# ------------------------------------------------------------------------------------------ Hub
def resolve_checkpoint(path_or_id: str | Path, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local checkpoint folder for `path_or_id`: the folder itself when it exists here, else the Hub
    repo's snapshot (``huggingface_hub.snapshot_download``; offline, HF_HUB_OFFLINE=1, it is read from the
    cache). ConfigError, in one line, for a local-looking path that does not exist."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if is_local_reference(text):
        raise ConfigError(f"value checkpoint {text} not found (no such folder; a Hub repo is named 'owner/name')")
    from huggingface_hub import snapshot_download

    with hub_errors(text, "value checkpoint"):
        return Path(snapshot_download(repo_id=text, revision=revision, token=token))


@dataclass
class PushResult:
    """What `push_to_hub` uploaded: the repo, its URL as the Hub returned it, and the files sent."""

    repo_id: str
    url: str
    files: list[str]


def upload_files(
    files: dict[str, str | Path | bytes],
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload",
    api: Any = None,
) -> PushResult:
    """Upload `files` (path in the repo → a local file or the bytes) to the Hub repo `repo_id` of
    `repo_type` (model, dataset), created when missing, in one commit: what push-model and push-data
    send. `api`: an ``huggingface_hub.HfApi`` (default: a new one; tests pass a stand-in). Failures are
    huggingface_hub's; the commands make them one line with `prefixvalue.loading.hub_errors`."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # a malformed id is refused before anything is sent
    api = api or HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token)
    ops = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=src if isinstance(src, bytes) else str(src))
        for name, src in sorted(files.items())
    ]
    api.create_commit(
        repo_id=repo_id,
        repo_type=repo_type,
        operations=ops,
        commit_message=commit_message,
        revision=revision,
        token=token,
    )
    return PushResult(repo_id=repo_id, url=str(repo), files=sorted(files))


def push_to_hub(
    checkpoint: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload prefixvalue value checkpoint",
    api: Any = None,
) -> PushResult:
    """Upload a value checkpoint folder to the Hub repo `repo_id` (created when missing) in one commit
    (`upload_files`).

    The model card (README.md) is rendered for the repo (its usage snippet names `repo_id`); the local
    folder is not changed. `api`: an ``huggingface_hub.HfApi`` (default: a new one; tests pass a stand-in).
    """
    folder = Path(checkpoint)
    if not (folder / CONFIG_NAME).is_file():
        raise ConfigError(f"{folder} is not a value checkpoint (no value_config.json)")
    files: dict[str, str | Path | bytes] = {
        p.relative_to(folder).as_posix(): p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }
    files[CARD_FILE] = render_model_card(folder, name=repo_id).encode()
    return upload_files(
        files, repo_id, private=private, token=token, revision=revision, commit_message=commit_message, api=api
    )


def push_model_to_hub(model: Any, repo_id: str, **kwargs: Any) -> PushResult:
    """Save a `ValueModel` to a temporary folder (with the split, training and evaluation records of the
    folder it was loaded from) and `push_to_hub` it."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, copy_records=True)
        return push_to_hub(tmp, repo_id, **kwargs)


__all__ = [
    "BASE_MODEL_ENV",
    "PushResult",
    "base_model_candidates",
    "find_base_model",
    "find_checker",
    "is_local_reference",
    "portable_base_model",
    "push_model_to_hub",
    "push_to_hub",
    "resolve_checkpoint",
    "upload_files",
]
