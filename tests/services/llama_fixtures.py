"""Fixtures over real llama.cpp servers (``services.testing.llama_server``) for the remote
engine tests: ``tokenizer``, ``gguf`` and ``llama`` (one server per test module);
``connect`` opens a remote engine on URLs; ``other_tokenizer_copy`` makes a checkpoint
whose tokenizer differs.

Fails (never skips) when the build or the conversion fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grm.default_model import PACKAGED
from services.remote_engine import RemoteConfig, RemoteEngine
from services.testing.llama_server import LlamaServer, gguf_of, llama_cpp_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(PACKAGED)


@pytest.fixture(scope="module")
def gguf():
    return gguf_of(PACKAGED, llama_cpp_dir() / "src" / "convert_hf_to_gguf.py")


@pytest.fixture(scope="module")
def llama(gguf):
    server = LlamaServer(gguf, parallel=4).start()
    yield server
    server.stop()


def connect(urls, tokenizer, **options) -> RemoteEngine:
    return RemoteEngine.connect(RemoteConfig(tuple(urls), **options), tokenizer, eos_token_ids=[5])


def other_tokenizer_copy(checkpoint: Path, dest: Path) -> Path:
    """A copy of ``checkpoint`` whose SentencePiece vocabulary has two word pieces swapped: the
    same weights and names, a different tokenizer (what a wrong model behind a URL looks like
    to the tokenizer check)."""
    import shutil

    from sentencepiece import sentencepiece_model_pb2

    shutil.copytree(checkpoint, dest, ignore=shutil.ignore_patterns("tokenizer.json"))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((dest / "tokenizer.model").read_bytes())
    a, b = (i for i, p in enumerate(proto.pieces) if p.piece in ("▁Response", "▁to"))
    proto.pieces[a].piece, proto.pieces[b].piece = proto.pieces[b].piece, proto.pieces[a].piece
    (dest / "tokenizer.model").write_bytes(proto.SerializeToString())
    return dest
