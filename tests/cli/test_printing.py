"""The terminal printers escape control characters: a response or a judgment cannot rewrite
the user's terminal (clear it, retitle it, forge a link, reverse the text after it)."""

from __future__ import annotations

from grm.types import Judgment, ScoreInput, ScoreResult
from grm_cli.common import format_result, printable

HOSTILE = "ok\x1b[2J\x1b]0;owned\x07 \u202eevil\x9b1m"


def test_printable_escapes_controls_and_keeps_text():
    assert printable(HOSTILE) == "ok\\x1b[2J\\x1b]0;owned\\x07 \\u202eevil\\x9b1m"
    assert printable("line one\n\ttabbed, déjà vu, 日本") == "line one\n\ttabbed, déjà vu, 日本"
    assert printable("a\nb", keep_newlines=False) == "a\\x0ab"


def test_score_printout_has_no_raw_control_character():
    judgment = Judgment(text=HOSTILE, principles="be " + HOSTILE, critique="bad " + HOSTILE, scores=(7, 3),
                        permutation=(0, 1), reason=None, num_tokens=5)
    result = ScoreResult(rewards=(7.0, 3.0), vote_sums=(7, 3), spread=(0.0, 0.0), num_valid=1, num_used=1,
                         judgments=(judgment,), aggregation="voting", best=0, invalid_reasons={})
    text = format_result(ScoreInput("q" + HOSTILE, [HOSTILE, "b"]), result, show=True)
    assert "owned" in text and "\\x1b" in text and "\\u202e" in text
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in text)


def test_score_printout_shows_the_expected_rewards_when_read():
    judgment = Judgment(text="t", principles="", critique="", scores=(9, 9), permutation=(0, 1),
                        expected_scores=(7.5, 8.25))
    result = ScoreResult(rewards=(9.0, 9.0), vote_sums=(9, 9), spread=(0.0, 0.0), num_valid=1, num_used=1,
                         judgments=(judgment,), best=1, expected_rewards=(7.5, 8.25))
    lines = format_result(ScoreInput("q", ["a", "b"]), result, show=False).splitlines()
    assert "votes 9  expected 7.50  |" in lines[1] and "votes 9  expected 8.25 <- best" in lines[2]
    plain = format_result(ScoreInput("q", ["a", "b"]), ScoreResult(
        rewards=(9.0, 8.0), vote_sums=(9, 8), spread=(0.0, 0.0), num_valid=1, num_used=1, judgments=(), best=0), False)
    assert "expected" not in plain
