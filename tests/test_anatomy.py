"""labkit.prompting.anatomy: the four parts of a prompt as chat messages, both example styles, the travel
planner template through SmolLM2's chat template (slow), and the errors."""
import pytest

from labkit.prompting.anatomy import TRAVEL_PLANNER, build_messages


def test_all_parts_in_order():
    m = build_messages("Q?", identity="You are X.", context="facts", examples=[("a", "b")], constraints="short")
    assert m[0] == {"role": "system", "content": "You are X."}
    assert m[1] == {"role": "user", "content": "### Context\nfacts\n\n### Examples\nExample 1\nRequest: a\nAnswer:\nb"
                                               "\n\n### Output\nshort\n\n### Request\nQ?"}
    assert len(m) == 2


def test_examples_as_turns_and_bare_query():
    m = build_messages("Q?", examples=[("a", "b"), ("c", "d")], examples_as="turns")
    assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant", "user"]
    assert m[-1]["content"] == "Q?"  # nothing else: the request needs no heading
    assert build_messages("  Q?  ") == [{"role": "user", "content": "Q?"}]


def test_errors():
    with pytest.raises(ValueError, match="query is empty"):
        build_messages("   ")
    with pytest.raises(TypeError, match="context must be a string, got int"):
        build_messages("Q", context=3)
    with pytest.raises(ValueError, match="examples_as must be one of"):
        build_messages("Q", examples_as="json")
    with pytest.raises(ValueError, match=r"list of \(input, output\) pairs"):
        build_messages("Q", examples=[("only input",)])
    with pytest.raises(ValueError, match=r"list of \(input, output\) pairs"):
        build_messages("Q", examples="ab")


@pytest.mark.slow
def test_travel_planner_through_the_chat_template():
    from labkit.llm.local import LocalLLM

    text = LocalLLM.smollm2().format(build_messages(**TRAVEL_PLANNER))
    assert text.startswith("<|im_start|>system\nYou are an experienced travel planner")
    assert text.endswith("### Request\nPlan my trip to Paris.<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 3
