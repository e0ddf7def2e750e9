"""One meaning per option name across commands; a renamed option's old name is refused, naming the new one.

Renamed (the old names are refused for one release):
collect ``samples`` → ``traces_per_prompt``, evaluate ``top_k`` → ``mellowmax_top_k``, advantages ``top_k`` →
``top_candidates``. ``samples`` now always counts Monte Carlo continuations per prefix and ``top_k`` is always
the sampling filter.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefixvalue import cli
from prefixvalue.config import ConfigError, field, format_help, parse_config, with_overrides
from prefixvalue.rl.anchor import AnchorConfig
from prefixvalue.rl.loop import DistRLConfig
from prefixvalue.stages.collect import CollectConfig
from prefixvalue.stages.evaluate import EvaluateConfig
from prefixvalue.stages.label import LabelConfig
from prefixvalue.stages.quickstart import QuickstartConfig
from prefixvalue.studies.actions import ActionsConfig
from prefixvalue.studies.advantages import AdvantagesConfig
from prefixvalue.studies.distance import DistanceConfig
from prefixvalue.tools.export import ExportConfig
from prefixvalue.tools.export_model import ExportModelConfig
from prefixvalue.tools.import_rollouts import ImportConfig
from prefixvalue.tools.push_model import PushModelConfig
from prefixvalue.tools.serve import ServeConfig
from prefixvalue.training import TrainConfig

#: the config of every command whose options are checked here (nested configs are walked)
CONFIGS = {
    "collect": CollectConfig,
    "label": LabelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "quickstart": QuickstartConfig,
    "actions": ActionsConfig,
    "advantages": AdvantagesConfig,
    "distance": DistanceConfig,
    "import": ImportConfig,
    "export": ExportConfig,
    "export-model": ExportModelConfig,
    "push-model": PushModelConfig,
    "serve": ServeConfig,
    "distrl": DistRLConfig,
    "distrl-trl": AnchorConfig,
}


def options(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every option of `cls`, nested configs included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += options(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f))
    return out


@pytest.mark.parametrize(
    ("cls", "argv", "message"),
    [
        (
            CollectConfig,
            ["samples=8"],
            "samples is now traces_per_prompt (completions sampled per prompt); use traces_per_prompt=8",
        ),
        (
            EvaluateConfig,
            ["top_k=[5]"],
            "top_k is now mellowmax_top_k (top-k sizes for top-k MellowMax); use mellowmax_top_k=[5]",
        ),
        (AdvantagesConfig, ["top_k=3"], "top_k is now top_candidates (the policy's most likely"),
        (
            QuickstartConfig,
            ["collect.samples=4"],
            "collect.samples is now collect.traces_per_prompt (completions sampled per prompt); "
            "use collect.traces_per_prompt=4",
        ),
        (QuickstartConfig, ["evaluate.top_k=[5]"], "evaluate.top_k is now evaluate.mellowmax_top_k"),
        (QuickstartConfig, ["advantages.top_k=2"], "advantages.top_k is now advantages.top_candidates"),
    ],
)
def test_an_old_name_on_the_command_line_is_refused_naming_the_new_one(cls, argv, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(cls, argv)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_an_old_name_in_yaml_is_refused_top_level_and_nested(tmp_path: Path):
    flat = tmp_path / "collect.yaml"
    flat.write_text("num_prompts: 4\nsamples: 8\n")
    with pytest.raises(ConfigError, match=r"^samples is now traces_per_prompt .*; rename the key to traces_per_prompt"):
        parse_config(CollectConfig, ["--config", str(flat)])
    nested = tmp_path / "quickstart.yaml"
    nested.write_text("collect:\n  samples: 8\nevaluate:\n  omegas: [1.0]\n")
    with pytest.raises(ConfigError, match=r"^collect\.samples is now collect\.traces_per_prompt"):
        parse_config(QuickstartConfig, ["--config", str(nested)])
    # the new names read as before
    ok = tmp_path / "ok.yaml"
    ok.write_text("policy: p\ncollect:\n  traces_per_prompt: 3\nevaluate:\n  mellowmax_top_k: [4]\n")
    cfg = parse_config(QuickstartConfig, ["--config", str(ok), "advantages.top_candidates=2"])
    assert (cfg.collect.traces_per_prompt, cfg.evaluate.mellowmax_top_k, cfg.advantages.top_candidates) == (3, [4], 2)


def test_with_overrides_refuses_an_old_name():
    with pytest.raises(ConfigError, match=r"^here: samples is now traces_per_prompt .*use traces_per_prompt=2$"):
        with_overrides(CollectConfig(), {"samples": "2"}, "here")
    assert with_overrides(CollectConfig(), {"traces_per_prompt": "2"}).traces_per_prompt == 2


def test_the_command_refuses_an_old_name_in_one_line_with_exit_2(tmp_path: Path, capsys):
    out = tmp_path / "traces"
    assert cli.main(["collect", "task=arith", "samples=8", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "prefixvalue collect: samples is now traces_per_prompt (completions sampled per prompt); use traces_per_prompt=8"
    )
    assert not out.exists()
    assert parse_config(LabelConfig, ["samples=8"]).samples == 8  # label keeps `samples` (MC continuations)


def test_help_names_the_old_key():
    text = format_help(CollectConfig, "prefixvalue collect")
    assert "traces_per_prompt (int, default: 8)" in text and "(formerly samples, now refused)" in text
    assert "collect.traces_per_prompt" in format_help(QuickstartConfig) and "formerly collect.samples" in format_help(
        QuickstartConfig
    )


@dataclass
class Inner:
    mc_samples: int = field(4, help="MC continuations per prefix; at least 1", renamed_from="samples")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner, help="nested")


def test_a_renamed_field_of_any_class_is_refused():
    """The mechanism is general: any config declares ``renamed_from`` on the field's new name."""
    with pytest.raises(ConfigError, match=r"^inner\.samples is now inner\.mc_samples \(MC continuations per prefix\)"):
        parse_config(Outer, ["inner.samples=3"])
    with pytest.raises(ConfigError, match="unknown config key 'inner.sample'"):
        parse_config(Outer, ["inner.sample=3"])
    assert parse_config(Outer, ["inner.mc_samples=3"]).inner.mc_samples == 3


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_an_old_name_is_never_a_current_option(command):
    """A refused alias never shadows a live option of the same config (it would be read, not refused)."""
    keys = options(CONFIGS[command])
    live = {k for k, _ in keys}
    for key, f in keys:
        old = f.metadata.get("renamed_from")
        if old:
            assert key.rsplit(".", 1)[0] + "." + old not in live and old not in live, (command, key, old)


def test_samples_and_top_k_have_one_meaning_across_commands():
    """``samples``: Monte Carlo continuations per prefix (label, actions, advantages, and the quickstart's nested
    label); ``top_k``: the top-k sampling filter (collect, label, actions, import). The other meanings were
    renamed (collect traces_per_prompt, evaluate mellowmax_top_k, advantages top_candidates)."""
    seen: dict[str, list[str]] = {"samples": [], "top_k": []}
    for command, cls in CONFIGS.items():
        for key, f in options(cls):
            name = key.rsplit(".", 1)[-1]
            if name == "samples":
                assert "continuations" in f.metadata["help"], (command, key, f.metadata["help"])
                seen["samples"].append(f"{command} {key}")
            if name == "top_k":
                assert "top-k" in f.metadata["help"] and "MellowMax" not in f.metadata["help"], (command, key)
                assert "candidates" not in f.metadata["help"], (command, key)
                seen["top_k"].append(f"{command} {key}")
    assert "label samples" in seen["samples"] and "collect samples" not in seen["samples"]
    assert "collect top_k" in seen["top_k"] and "evaluate top_k" not in seen["top_k"]
    assert "advantages top_k" not in seen["top_k"]


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_one_spelling_for_the_policy_and_the_output_folder(command):
    """Issue 34, item 8: every top-level option naming the policy takes both ``policy`` and ``model``, and the
    output folder both ``out`` and (train's old name) ``output_dir``; never two options for one thing."""
    top = {f.name: f for f in dataclasses.fields(CONFIGS[command]) if f.init}
    for name, other in (("policy", "model"), ("model", "policy")):
        if name in top:
            assert other not in top, (command, name, other)
            assert other in top[name].metadata.get("synonyms", ()), (command, name)
    assert "output_dir" not in top, command
    if command == "train":
        assert "output_dir" in top["out"].metadata.get("synonyms", ())
