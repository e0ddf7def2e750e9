"""The config mechanism: YAML + key=value overrides, nested keys, unknown keys, help, validation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from prefixvalue.config import (
    ConfigError,
    RawMapping,
    field,
    format_help,
    parse_config,
    save_resolved_config,
    unescape,
)
from prefixvalue.tasks import ArithConfig


@dataclass
class Inner:
    depth: int = field(2, help="how deep")


@dataclass
class Demo:
    """A demo config."""

    name: str = field("run", help="run name")
    lr: float = field(1e-3, help="learning rate")
    steps: int = field(10, help="optimisation steps")
    use_lora: bool = field(True, help="train LoRA adapters")
    targets: list[str] = field(default_factory=lambda: ["q", "v"], help="LoRA targets")
    modulus: int | None = field(10, help="modulus or None")
    inner: Inner = field(default_factory=Inner, help="nested options")

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError("steps must be >= 0")


def test_defaults_yaml_then_command_line(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.5\nsteps: 3\ninner:\n  depth: 7\n")
    cfg = parse_config(Demo, ["--config", str(cfg_file), "steps=4", "--name=x", "--use-lora=false"])
    assert cfg.lr == 0.5 and cfg.steps == 4 and cfg.name == "x" and cfg.use_lora is False
    assert cfg.inner.depth == 7
    cfg = parse_config(Demo, ["inner.depth=9", "targets=a,b,c", "modulus=None"])
    assert cfg.inner.depth == 9 and cfg.targets == ["a", "b", "c"] and cfg.modulus is None
    assert parse_config(Demo, ["targets=[x, y]"]).targets == ["x", "y"]


def test_space_separated_form_fails_with_a_hint():
    with pytest.raises(ConfigError, match=r"write name=x \(key=value\)"):
        parse_config(Demo, ["--name", "x"])
    assert parse_config(Demo, ["--name=a=b"]).name == "a=b"  # the value may hold '='


@dataclass
class Texts:
    text: str = field("", help="plain text")
    flag: bool = field(False, help="a boolean")
    opts: RawMapping = field(default_factory=RawMapping, help="typed later")
    free: dict = field(default_factory=dict, help="free-form mapping")


def test_values_are_read_by_the_field_type():
    cfg = parse_config(Texts, ["text={prompt}"])
    assert cfg.text == "{prompt}"
    assert parse_config(Texts, ["text=yes"]).text == "yes"
    assert parse_config(Texts, ["text=\\n"]).text == "\\n"  # escapes are read only by fields marked escapes=True
    assert parse_config(Texts, ["text=12"]).text == "12"
    assert parse_config(Texts, ["flag=yes"]).flag is True
    cfg = parse_config(Texts, ["opts.template={prompt}", "opts.n=5", "free.n=5", "free.s=yes"])
    assert cfg.opts == {"template": "{prompt}", "n": "5"}  # text until the component types it
    assert cfg.free == {"n": 5, "s": True}  # no field types: YAML rules


@dataclass
class Escaped:
    sep: str = field("\n", help="a separator", escapes=True)
    stops: list[str] = field(default_factory=list, help="stop strings", escapes=True)
    path: str | None = field(None, help="a file")


def test_unescape_reads_backslash_escapes_left_to_right():
    assert unescape(r"a\nb\tc\rd") == "a\nb\tc\rd"
    assert unescape(r"\\n") == "\\n"  # an escaped backslash, then n
    assert unescape(r"\\\n") == "\\\n"
    assert unescape(r"\frac{1}{2} \d") == r"\frac{1}{2} \d"  # other backslashes stay


def test_escapes_are_read_on_the_command_line_of_marked_fields_only(tmp_path):
    cfg = parse_config(Escaped, [r"sep=\n\n", r"stops=\n,\\n", r"path=C:\new\table"])
    assert cfg.sep == "\n\n" and cfg.stops == ["\n", "\\n"] and cfg.path == r"C:\new\table"
    assert parse_config(Escaped, [r"stops=['\t', x]"]).stops == ["\t", "x"]
    yml = tmp_path / "c.yaml"
    yml.write_text("sep: '\\n'\nstops: ['\\t', \"\\t\"]\n")
    cfg = parse_config(Escaped, ["--config", str(yml)])
    assert cfg.sep == "\\n" and cfg.stops == ["\\t", "\t"]  # YAML as YAML reads it
    text = format_help(Escaped)
    assert text.count("are escapes") == 2


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        parse_config(Demo, ["step=3"])
    with pytest.raises(ConfigError, match="did you mean 'inner.depth'"):
        parse_config(Demo, ["inner.deph=3"])


def test_wrong_type_and_validation():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        parse_config(Demo, ["steps=abc"])
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        parse_config(Demo, ["steps=-1"])
    with pytest.raises(ConfigError, match="min_steps"):
        ArithConfig(min_steps=4, max_steps=2)


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Demo, ["--help"], prog="demo")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("usage: demo", "lr (float, default: 0.001)", "learning rate", "inner.depth", "how deep"):
        assert text in out
    assert "A demo config." in format_help(Demo)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_config(Demo, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(Demo, [f"--config={bad}"])


def test_resolved_config_is_logged_with_version(tmp_path):
    import yaml

    from prefixvalue import __version__

    path = save_resolved_config(parse_config(Demo, ["lr=0.25"]), tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["prefixvalue_version"] == __version__ and data["lr"] == 0.25 and data["inner"] == {"depth": 2}
