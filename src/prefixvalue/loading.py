"""Model loading options shared by every stage, and which policy a stage uses for a traces dataset.

Light on purpose (no torch or datasets import), so stage configs can inherit `ModelLoadConfig` and still
parse ``--help`` quickly; the loaders themselves, and `check_vocabulary` (a tokenizer against traces), are
in `prefixvalue.policies`. `hub_errors` is the one place where a loader's (or an upload's) failure to find a
model, on disk or on the Hugging Face Hub, becomes one line naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import disk_error, error_chain
from .config import ConfigError, field

#: the loading options recorded with a run's outputs (revision and the GGUF file pick the weights;
#: attn_implementation changes numerics); trust_remote_code and device_map are the user's call each time
RECORDED_LOAD_OPTIONS: tuple[str, ...] = ("revision", "gguf_file", "attn_implementation")


@dataclass
class ModelLoadConfig:
    """How a stage loads its model: the options of ``from_pretrained`` that every stage shares."""

    revision: str | None = field(None, help="model revision on the hub: branch, tag or commit (None: the default)")
    trust_remote_code: bool = field(
        False, help="allow custom model code from the model folder or hub repo (off unless asked for)"
    )
    attn_implementation: str | None = field(
        None, help="attention kernel: eager | sdpa | flash_attention_2 (None: transformers' default)"
    )
    device_map: str | None = field(
        None, help="device_map for from_pretrained, e.g. auto to spread a large model over GPUs (None: one device)"
    )
    gguf_file: str | None = field(
        None,
        help="GGUF file inside the model folder (needs the gguf package; weights are de-quantised on load); "
        "model=path/to/file.gguf sets it too",
    )

    def load_options(self) -> LoadOptions:
        """These options as a `LoadOptions` (the same fields)."""
        return LoadOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoadOptions)})


@dataclass(frozen=True)
class LoadOptions:
    """Keyword options of ``from_pretrained`` for a model and its tokenizer (None: not passed)."""

    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    device_map: str | None = None
    gguf_file: str | None = None

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``AutoModelForCausalLM.from_pretrained``."""
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        for name in ("revision", "attn_implementation", "device_map", "gguf_file"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw

    def tokenizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``AutoTokenizer.from_pretrained`` (a GGUF file holds the tokenizer too)."""
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        for name in ("revision", "gguf_file"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw

    def record(self) -> dict[str, Any]:
        """The options written beside a run's outputs (`RECORDED_LOAD_OPTIONS`, set ones only)."""
        return {k: getattr(self, k) for k in RECORDED_LOAD_OPTIONS if getattr(self, k) is not None}

    def with_recorded(self, recorded: dict[str, Any] | None) -> LoadOptions:
        """These options, with every one left unset here taken from `recorded` (an upstream run's record)."""
        fill = {k: v for k, v in (recorded or {}).items() if k in RECORDED_LOAD_OPTIONS and getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


def resolve_model_path(name_or_path: str, options: LoadOptions | None = None) -> tuple[str, LoadOptions]:
    """``(folder or hub name, options)``: a path to a ``.gguf`` file becomes its folder plus ``gguf_file``."""
    opts = options or LoadOptions()
    path = Path(str(name_or_path)).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {name_or_path}")
        if opts.gguf_file not in (None, path.name):
            raise ConfigError(f"model={name_or_path} names a GGUF file but gguf_file={opts.gguf_file!r}")
        return str(path.parent), dataclasses.replace(opts, gguf_file=path.name)
    if looks_like_path(str(name_or_path)) and not path.exists():
        raise ConfigError(
            f"model path {name_or_path} does not exist (looked for the local folder {path.absolute()}; a hub "
            "model is named 'name' or 'owner/name')"
        )
    return str(name_or_path), opts


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (``name`` or ``owner/name``): it
    starts with ``.``, ``/`` or ``~``, has more than two parts, or its first part exists here."""
    if name.startswith((".", "/", "~", os.sep)):
        return True
    parts = [p for p in name.replace(os.sep, "/").split("/") if p]
    return len(parts) > 2 or (len(parts) > 1 and Path(parts[0]).exists())


def is_local_reference(name: str) -> bool:
    """Whether a model name (given or recorded) is meant as a local path rather than a Hub id: it looks like one
    (`looks_like_path`) or exists here."""
    return looks_like_path(name) or Path(name).expanduser().exists()


def recorded_model(name: str) -> str:
    """`name` as a run records it (the traces' ``model``): a local path (`is_local_reference`) made absolute,
    symbolic links kept (as a checkpoint records its base model), so a later stage run from another folder
    finds it and compares it (`same_model`); a Hub name as given."""
    return os.path.abspath(Path(name).expanduser()) if is_local_reference(name) else name


def same_model(a: str, b: str) -> bool:
    """Whether two model names denote the same model: equal text, or local paths to the same place."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def traces_policy(
    traces: Any, given: str | None, options: LoadOptions, allow_other: bool, stage: str
) -> tuple[str, LoadOptions]:
    """``(policy, options)`` for a stage that reads traces: the traces' own model (column ``model``) and its
    recorded loading options (column ``model_load``) unless `given`.

    ConfigError, in one line, when `given` differs from the model that wrote the traces and `allow_other`
    is false (values of another policy's traces are a different quantity), or when nothing names a policy.
    """
    recorded = traces[0]["model"] if "model" in traces.column_names and len(traces) else None
    load = json.loads(traces[0]["model_load"] or "{}") if "model_load" in traces.column_names and len(traces) else {}
    if given is None:
        if not recorded:
            raise ConfigError(f"{stage}: the traces record no model; pass the policy that wrote them")
        return str(recorded), options.with_recorded(load)
    if recorded and not same_model(str(given), str(recorded)):
        if not allow_other:
            rec = Path(str(recorded)).expanduser()
            elsewhere = looks_like_path(str(recorded)) and not rec.is_absolute() and not rec.exists()
            hint = ", a relative path not found from here: run from the folder that wrote them" if elsewhere else ""
            raise ConfigError(
                f"{stage}: policy {given!r} is not the model that wrote the traces ({recorded!r}{hint}); leave the "
                "policy unset to use the traces' model, or pass allow_other_policy=true for another policy's values"
            )
        return str(given), options
    return str(given), options.with_recorded(load)


#: top-level packages of the HTTP clients under huggingface_hub and transformers: their errors mean the Hub
#: could not be reached
_HTTP_PACKAGES = frozenset({"httpx", "httpx2", "requests", "urllib3"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hub_error(exc: BaseException, name: str, what: str, push: bool = False) -> ConfigError | None:
    """The one-line ConfigError for `exc`, raised while loading the `what` (model, tokenizer, value
    checkpoint) `name` from a local folder or the Hugging Face Hub, or, with `push`, while uploading to the
    Hub repo `name`: a folder transformers cannot load, a repo that is missing, gated or misspelt, a revision
    that is missing, downloads switched off (``HF_HUB_OFFLINE``) or a Hub that cannot be reached (the errors
    of huggingface_hub, of its HTTP client, and transformers' OSError around them, the whole chain read).
    None for anything else (a full or read-only disk, which the command line reports itself; a bug)."""
    from huggingface_hub import constants, errors  # here, not at the top: only a failed load pays for the import

    if disk_error(exc) is not None:
        return None
    chain = error_chain(exc)

    def found(*types: type) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    target = f"Hub repo {name!r}" if push else f"{what} {name!r}"
    if not push and Path(name).expanduser().is_dir():
        if not isinstance(exc, OSError):
            return None
        return ConfigError(f"cannot load the {what} from the local folder {name}: {_first_line(exc)}")
    login = "log in with `hf auth login` or set HF_TOKEN"
    if found(errors.GatedRepoError):
        return ConfigError(f"{target} is gated on the Hugging Face Hub: accept its terms on its page and {login}")
    if found(errors.RepositoryNotFoundError):
        where = "" if push else "no such local folder and "
        return ConfigError(f"{target} not found: {where}no such Hugging Face Hub repo (a private one: {login})")
    if e := found(errors.RevisionNotFoundError):
        return ConfigError(f"{target}: revision not found on the Hugging Face Hub ({_first_line(e)})")
    if e := found(errors.HFValidationError, errors.HfUriError):
        local = "" if push else "not a local folder, and "
        return ConfigError(f"{target}: {local}not a valid Hub repo id (owner/name): {_first_line(e)}")
    offline = bool(constants.HF_HUB_OFFLINE)  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub read it
    if offline and (push or found(errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        if push:
            return ConfigError(f"cannot push to {target}: HF_HUB_OFFLINE is set (no network use)")
        return ConfigError(
            f"{target} is not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set (no "
            "downloads): give a local folder, or download it while online"
        )
    transport = next(
        (
            e
            for e in chain
            if not isinstance(e, errors.HfHubHTTPError)
            and (isinstance(e, (ConnectionError, TimeoutError)) or type(e).__module__.split(".")[0] in _HTTP_PACKAGES)
        ),
        None,
    )
    if transport is not None or (not push and found(errors.LocalEntryNotFoundError)):
        why = f" ({type(transport).__name__}: {_first_line(transport)})" if transport is not None else ""
        cached = "" if push else " and it is not in the local Hugging Face cache"
        return ConfigError(
            f"{target}: the Hugging Face Hub cannot be reached{why}{cached}; check the connection"
            + ("" if push else ", give a local folder, or set HF_HUB_OFFLINE=1 to use the cache only")
        )
    if e := found(errors.HfHubHTTPError):
        return ConfigError(f"{target}: the Hugging Face Hub refused the request: {_first_line(e)}")
    if not push and isinstance(exc, OSError):  # transformers: no such file in the repo, not a model ...
        return ConfigError(f"cannot load the {what} {name!r}: {_first_line(exc)}")
    return None


@contextlib.contextmanager
def hub_errors(name: str, what: str, push: bool = False) -> Iterator[None]:
    """Run a load of the `what` `name` (a local folder or a Hub id), or with `push` an upload to the Hub
    repo `name`; its failures `hub_error` knows become that one-line ConfigError, others pass unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub_error picks the ones it knows; the rest are re-raised
        error = hub_error(exc, name, what, push)
        if error is None:
            raise
        raise error from None


__all__ = [
    "RECORDED_LOAD_OPTIONS",
    "LoadOptions",
    "ModelLoadConfig",
    "hub_error",
    "hub_errors",
    "looks_like_path",
    "recorded_model",
    "resolve_model_path",
    "same_model",
    "traces_policy",
]
