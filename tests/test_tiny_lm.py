"""The offline causal-LM base model (make_tiny_lm.py) and its task (make_instructions.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPTS = ROOT / "studies" / "data"


def build_small(out: Path) -> Path:
    """The generator as a user runs it, with the tests' small size."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_tiny_lm.py"), str(out), "--small"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_tiny_lm_loads_generates_and_shows_its_licence(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.model_facts import describe_folder

    folder = build_small(tmp_path / "tiny-lm")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    inputs = tokenizer("Review: the battery is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]

    # Chat data renders, and TRL's assistant-only loss can find the assistant's tokens.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the sound"}]
    rendered = tokenizer.apply_chat_template(
        chat, return_assistant_tokens_mask=True, return_dict=True
    )
    pairs = zip(rendered["input_ids"], rendered["assistant_masks"], strict=True)
    answer = [t for t, m in pairs if m]
    assert tokenizer.decode(answer) == "the sound<|eos|>"

    facts = describe_folder("tiny-lm", folder, "local")
    assert (facts.architecture, facts.license, facts.max_seq_length) == ("llama", "mit", 256)
    assert (folder / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.slow
def test_tiny_lm_rebuilds_the_same_weights(tmp_path: Path) -> None:
    first = build_small(tmp_path / "a") / "model.safetensors"
    second = build_small(tmp_path / "b") / "model.safetensors"
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.fast
def test_instructions_rebuild_byte_for_byte(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import make_instructions
    finally:
        sys.path.remove(str(SCRIPTS))
    first = make_instructions.write(tmp_path / "a.jsonl").read_bytes()
    second = make_instructions.write(tmp_path / "b.jsonl").read_bytes()
    assert first == second == (SCRIPTS / "instructions.jsonl").read_bytes()
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert len(rows) == 1200
    assert all(r["prompt"].endswith("\nForm:") for r in rows)
    counts = {c: sum(r["completion"] == f" {c}" for r in rows) for c in make_instructions.FORMS}
    assert sum(counts.values()) == len(rows) and min(counts.values()) > 150, counts
