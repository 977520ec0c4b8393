"""``grm serve``'s remote-engine flags: what they build, and the clear refusals."""

from __future__ import annotations

import pytest

from grm_cli.engine_flags import remote_config
from grm_cli.main import build_parser


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_engine_urls_become_a_remote_config():
    config = remote_config(serve_args("--engine-url", "http://a:8000/,http://b:8000", "--revision", "w2",
                                      "--engine-model", "grm"))
    assert config.urls == ("http://a:8000", "http://b:8000") and config.revision == "w2" and config.model == "grm"
    assert remote_config(serve_args()) is None  # in-process, as before


@pytest.mark.parametrize("argv, message", [
    (("--revision", "w2"), "--revision needs --engine-url"),
    (("--text-prompts",), "--text-prompts needs --engine-url"),
    (("--engine-url", "a:8000"), "must start with http:// or https://"),
])
def test_bad_engine_flags_are_refused_by_name(argv, message):
    with pytest.raises(ValueError, match=message):
        remote_config(serve_args(*argv))
