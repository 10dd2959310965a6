"""The reasoning/answer format parser: every off-format case is flagged, never guessed."""

import pytest

from rayalign.rollout.format import join_completion, split_completion


@pytest.mark.parametrize(
    "text, finish, reasoning, answer, malformed",
    [
        ("<think>general.P4 applies</think>Use kill -9.", "stop", "general.P4 applies", "Use kill -9.", None),
        ("  \n<think>\n r \n</think>\n\n a \n", "stop", "r", "a", None),
        ("<think>r</think>", "stop", "r", "", "no_answer"),
        ("<think>r</think>   \n", "stop", "r", "", "no_answer"),
        ("<think></think>answer", "stop", "", "answer", "empty_reasoning"),
        ("<think>still thinking", "stop", "still thinking", "", "unclosed_reasoning"),
        ("Just an answer.", "stop", "", "Just an answer.", "no_reasoning"),
        ("Preamble <think>r</think>a", "stop", "", "Preamble <think>r</think>a", "no_reasoning"),
        ("", "stop", "", "", "empty"),
        ("   ", "stop", "", "", "empty"),
        ("<think>a</think>b<think>c</think>d", "stop", "a", "b<think>c</think>d", "repeated_reasoning"),
        ("<think>r</think>partial answ", "length", "r", "partial answ", "truncated"),
        ("<think>cut off mid-thought", "length", "cut off mid-thought", "", "truncated"),
    ],
)
def test_split_completion(text, finish, reasoning, answer, malformed):
    c = split_completion(text, finish)
    assert (c.reasoning, c.answer, c.malformed) == (reasoning, answer, malformed)


def test_join_then_split_round_trips():
    text = join_completion(" self_harm.S1 applies; style.S1. ", " I'm sorry you're hurting. ")
    c = split_completion(text)
    assert (c.reasoning, c.answer, c.malformed) == (
        "self_harm.S1 applies; style.S1.",
        "I'm sorry you're hurting.",
        None,
    )
