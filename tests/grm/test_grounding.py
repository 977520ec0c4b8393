"""Quote grounding: fragments a critique quotes must be in the response its line names."""

from grm.eval.grounding import QuoteCheck, check_quotes, grounding_report, named_answer, quotes
from grm.eval.records import EvalItem
from grm.templates import load_template
from grm.types import Judgment, ScoreInput, ScoreResult


def test_a_named_line_is_checked_against_its_own_answer_only():
    shown = ["Boil it for 8 minutes.", "Fry it in a pan."]
    assert check_quotes('Answer 1: it says "boil it".', shown) == QuoteCheck(1, 1)
    assert check_quotes('Answer 2: it says "boil it".', shown) == QuoteCheck(0, 1)  # in answer 1, not 2
    assert check_quotes('Response 2 says "fry it in a pan."', shown) == QuoteCheck(1, 1)


def test_case_spacing_curly_quotes_and_edge_punctuation_do_not_matter():
    shown = ["I can't help   with\nthat request."]
    assert check_quotes("Answer 1: \u201cI CAN'T help with that\u201d is a refusal.", shown) == QuoteCheck(1, 1)
    assert check_quotes('Answer 1: "that request." ends it.', shown) == QuoteCheck(1, 1)


def test_invented_quotes_and_unshown_answers_count_as_ungrounded():
    shown = ["CARROT?"]
    assert check_quotes('Answer 1: the words "toat" and "shee" are wrong.', shown) == QuoteCheck(0, 2)
    assert check_quotes('Answer 3: "CARROT?"', shown) == QuoteCheck(0, 1)  # there is no answer 3


def test_a_line_naming_no_answer_may_quote_any_answer_or_the_conversation():
    shown = ["Paris.", "Lyon."]
    assert check_quotes('Both mention a city; "lyon" is wrong and "capital of France" was asked.', shown,
                        context="What is the capital of France?") == QuoteCheck(2, 2)


def test_short_fragments_and_lines_without_quotes_are_not_counted():
    assert quotes('It says "a" and "ok".') == ["ok"]
    assert check_quotes("Answer 1: good.\nAnswer 2: bad.", ["x", "y"]) == QuoteCheck(0, 0)
    assert named_answer("**Answer 2**: fine") == 2 and named_answer("The answer is fine") is None


def _result(critique: str, permutation: tuple[int, ...]) -> ScoreResult:
    j = Judgment(text="", principles="", critique=critique, scores=(5, 3), permutation=permutation)
    return ScoreResult((5.0, 3.0), (5, 3), (0.0, 0.0), 1, 1, 0, (j,))


def test_the_report_maps_shown_positions_back_through_the_permutation():
    item = EvalItem(ScoreInput("q?", ["alpha beta", "gamma delta"]), best=0, line=1, source="hh:x")
    # shown order (1, 0): position 1 is "gamma delta"
    good = _result('Answer 1: "gamma delta"\nAnswer 2: "alpha beta"', (1, 0))
    bad = _result('Answer 1: "alpha beta"', (1, 0))
    report = grounding_report([item, item], [good, bad], load_template("grm-english-v1"))
    assert (report["quotes"], report["grounded"]) == (3, 2)
    assert report["judgments_quoting"] == 1.0
    assert report["by_source"]["hh"]["share"] == 2 / 3
