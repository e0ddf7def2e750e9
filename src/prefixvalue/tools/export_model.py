"""``prefixvalue export-model``: a value checkpoint of any kind as a two-label token classifier.

    prefixvalue export-model checkpoint=runs/quickstart/train_head/final out=runs/export/head-tc

The exported folder loads with ``transformers.AutoModelForTokenClassification.from_pretrained`` without
prefixvalue (labels 0 "wrong", 1 "correct"; ``softmax(logits, -1)[..., i, 1]`` is P̂ of the prefix ending at
token i), so tools that load token-classification reward models read it: a plain head as a standard class,
every other kind with ``trust_remote_code=True`` through the ``modeling_prefixvalue.py`` it carries
(`prefixvalue.value.export`; docs/design.md, "Checkpoints that travel"). ``prefixvalue export`` is another
command: it writes data formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import runfolder
from ..config import ConfigError, field, parse_config
from ..loading import ModelLoadConfig

#: what export-model writes into out (transformers' model and tokenizer files, README.md, prompt_format.json):
#: the names a folder without a run record may hold (`prefixvalue.runfolder`)
OUTPUTS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "chat_template*",
    "*.model",
    "README.md",
    "prompt_format.json",
    "modeling_prefixvalue.py",
)
#: keys that may differ when the same export runs again into out (the check writes nothing)
RERUN_KEYS = runfolder.RERUN_KEYS | {"check"}
#: keys naming files or folders, compared as resolved paths
PATH_KEYS = ("checkpoint", "base_model")


@dataclass
class ExportModelConfig(ModelLoadConfig):
    """Export a value checkpoint to a two-label token classifier (P̂ = softmax(logits)[..., 1])."""

    checkpoint: str = field("", help="value checkpoint folder or Hub id (any kind, without a soft prompt)")
    out: str = field("", help="output folder of the token-classification model")
    base_model: str | None = field(None, help="base model path or Hub id (default: the checkpoint's, searched)")
    dtype: str = field("float32", help="dtype of the exported weights: float32 | bfloat16 | float16")
    overwrite: bool = field(
        False, help="replace an export with other options in out (the files it wrote, never any other file)"
    )
    check: bool = field(True, help="reload the export with plain transformers and compare its values (max |Δ|)")

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"export-model: dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


def run(cfg: ExportModelConfig) -> dict:
    """Export as `cfg` says; returns ``{"out", "max_abs_diff"}`` (the check's largest difference of P̂
    on the checkpoint's example, or None without a check)."""
    if not cfg.checkpoint or not cfg.out:
        raise ConfigError("export-model: give checkpoint=DIR_OR_HUB_ID and out=DIR")
    out = Path(cfg.out)
    rules = {"outputs": OUTPUTS, "rerun_keys": RERUN_KEYS, "path_keys": PATH_KEYS, "overwrite": cfg.overwrite}
    runfolder.check(out, "export-model", cfg, **rules)  # refuse another run's folder before loading anything
    from ..value import load_value_model
    from ..value.export import check_exportable, export_token_classification, is_standard

    vm = load_value_model(cfg.checkpoint, base_model=cfg.base_model, options=cfg.load_options())
    check_exportable(vm)
    folder = runfolder.claim(out, "export-model", cfg, **rules)
    # built in a temp folder, then moved in: a killed export leaves no half-written model; files of an
    # earlier export that this one does not write again (another tokenizer's) are removed
    name = str(out.resolve())  # the README's usage snippet names the folder, not the temp one
    folder.install(lambda tmp: export_token_classification(vm, tmp, cfg.dtype, name=name), stale=("*",))
    diff = compare_export(vm, out) if cfg.check else None
    folder.finish()
    standard = is_standard(vm)
    note = (
        ""
        if standard
        else f"; this {vm.config.kind} export loads only with trust_remote_code=True (it carries modeling_prefixvalue.py)"
    )
    print(f"export-model: wrote {out}" + ("" if diff is None else f" (max |ΔP̂| vs prefixvalue: {diff:.2e})") + note)
    return {"out": str(out), "max_abs_diff": diff, "trust_remote_code": not standard}


def compare_export(vm, out: Path, prompt: str = "", completion: str = "") -> float:
    """Largest |P̂ (prefixvalue) − softmax(logits)[..., 1] (the export)| over the prefixes of one example (the
    checkpoint's, else a short text). A standard export is loaded with plain transformers; one that carries
    ``modeling_prefixvalue.py`` with prefixvalue's copy of that file (the command runs no code from out)."""
    import json

    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification

    from ..value.export import REMOTE_CODE_FILE
    from ..value.modeling_prefixvalue import PrefixValueForTokenClassification

    if not prompt and vm.source is not None and (vm.source / "training.json").is_file():
        ex = json.loads((vm.source / "training.json").read_text()).get("example") or {}
        prompt, completion = ex.get("prompt", ""), ex.get("completion", "")
    prompt, completion = prompt or "Q:1+2=", completion or "1+2=3;A:3"
    prompt_ids, completion_ids = vm.encode(prompt, completion)
    ours = vm.predict([prompt_ids], [completion_ids])[0]
    remote = (out / REMOTE_CODE_FILE).is_file()
    loader = PrefixValueForTokenClassification if remote else AutoModelForTokenClassification
    tc = loader.from_pretrained(str(out), dtype=torch.float32).eval()
    kwargs = {"prompt_lengths": torch.tensor([len(prompt_ids)])} if remote else {}
    with torch.no_grad():
        logits = tc(input_ids=torch.tensor([prompt_ids + completion_ids]), **kwargs).logits[0].double()
    theirs = logits.softmax(-1)[len(prompt_ids) - 1 :, 1].numpy()
    return float(np.abs(ours - theirs).max())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue export-model``; returns the exit status."""
    run(parse_config(ExportModelConfig, list(argv) if argv is not None else None, prog="prefixvalue export-model"))
    return 0
