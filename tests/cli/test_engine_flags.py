"""``grm serve``'s remote-engine flags: what they build, and the clear refusals."""

from __future__ import annotations

import pytest

from grm_cli.engine_flags import engine_passes, remote_config
from grm_cli.main import build_parser


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_engine_urls_become_a_remote_config():
    config = remote_config(serve_args("--engine-url", "http://a:8000/,http://b:8000", "--revision", "w2",
                                      "--engine-model", "grm"))
    assert config.urls == ("http://a:8000", "http://b:8000") and config.revision == "w2" and config.model == "grm"
    assert remote_config(serve_args()) is None  # in-process, as before


def test_the_v1_base_url_the_read_timeout_and_the_passes():
    args = serve_args("--engine-url", "http://a:8000/v1", "--engine-read-timeout", "5", "--engine-passes", "8")
    config = remote_config(args)
    assert config.urls == ("http://a:8000",) and config.read_timeout_s == 5.0 and engine_passes(args) == 8
    assert engine_passes(serve_args("--engine-passes", "8")) == 1  # the in-process engine runs one pass at a time


@pytest.mark.parametrize("argv, message", [
    (("--revision", "w2"), "--revision needs --engine-url"),
    (("--text-prompts",), "--text-prompts needs --engine-url"),
    (("--engine-url", "a:8000"), "must start with http:// or https://"),
    (("--engine-url", "http://a:8000", "--engine-read-timeout", "0"), "read_timeout_s must be > 0, got 0.0"),
])
def test_bad_engine_flags_are_refused_by_name(argv, message):
    with pytest.raises(ValueError, match=message):
        remote_config(serve_args(*argv))


def test_engine_passes_below_one_are_refused():
    with pytest.raises(ValueError, match="--engine-passes must be >= 1, got 0"):
        engine_passes(serve_args("--engine-url", "http://a:8000", "--engine-passes", "0"))
