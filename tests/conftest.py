"""Shared fixtures: tiny, deterministically initialised causal LMs and a tiny tokenizer (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from prefixvalue.tokenizer import build_char_tokenizer

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs pytest-xdist workers (-n): the cores are shared between them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
SHIPPED_POLICY = REPO / "data" / "policies" / "arith-tiny"
ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Character-level tokenizer over printable ASCII (ids: <pad>=0, <eos>=1, <unk>=2)."""
    return build_char_tokenizer()


def make_tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def make_tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model_kind(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(tiny_model_kind, tiny_tokenizer):
    """A tiny random causal LM (GPT-2 or Llama style), hidden 32, 2 layers."""
    builder = make_tiny_gpt2 if tiny_model_kind == "gpt2" else make_tiny_llama
    return builder(len(tiny_tokenizer))


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    return make_tiny_gpt2(len(tiny_tokenizer))


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return make_tiny_llama(len(tiny_tokenizer))


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny GPT-2 and its tokenizer saved with save_pretrained (loadable by path)."""
    path = tmp_path / "tiny-gpt2"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shipped_head_checkpoint(tmp_path_factory) -> Path:
    """An untrained value head on the shipped policy (P̂ about its base rate, 0.5) at ``.../train_head/final``,
    with a split record whose test side holds about half the prompts (steering and genlm tests)."""
    from prefixvalue import value
    from prefixvalue.data import SplitRecord

    folder = tmp_path_factory.mktemp("ckpt") / "train_head" / "final"
    torch.manual_seed(0)
    cfg = value.ValueModelConfig(kind="head", base_model=str(SHIPPED_POLICY), base_rate=0.5, backbone="frozen")
    value.build_value_model(cfg).save_pretrained(folder)
    SplitRecord.from_prompts(["Q:1+1="], 0.5, 0).save(folder)
    return folder


@pytest.fixture(scope="session")
def random_head_checkpoint(tmp_path_factory) -> Path:
    """A head on the shipped policy with random head weights, so that values differ between prefixes (the reward
    function and reward server tests)."""
    from prefixvalue import value

    torch.manual_seed(0)
    cfg = value.ValueModelConfig(kind="head", base_model=str(SHIPPED_POLICY), base_rate=0.5, backbone="frozen")
    vm = value.build_value_model(cfg)
    with torch.no_grad():
        vm.head.weight.normal_(0.0, 0.5)
    return vm.save_pretrained(tmp_path_factory.mktemp("reward") / "head")
