"""inference.py: streamed answers split into labelled thinking and final response."""

import io

import torch

from huatuo_o1.chat import SectionPrinter, answer, load

TEXT = "## Thinking\n\nFever and cough point to pneumonia.\n\n## Final Response\n\nCommunity-acquired pneumonia."


def run_printer(chunks):
    out = io.StringIO()
    printer = SectionPrinter(out)
    for chunk in chunks:
        printer.feed(chunk)
    return printer.close(), out.getvalue()


def test_headings_split_across_chunks_become_labels():
    for size in (1, 2, 3, 7, len(TEXT)):
        parts, shown = run_printer([TEXT[i : i + size] for i in range(0, len(TEXT), size)])
        assert parts == {
            "thinking": "Fever and cough point to pneumonia.",
            "final_response": "Community-acquired pneumonia.",
            "unlabelled": "",
            "well_formed": True,
        }
        assert shown == (
            "[Thinking]\n\nFever and cough point to pneumonia.\n\n\n[Final Response]\n\n"
            "Community-acquired pneumonia.\n"
        )


def test_text_without_the_layout_is_kept_unlabelled():
    parts, shown = run_printer(["Just ", "an answer #", "# not a heading"])
    assert parts == {
        "thinking": "",
        "final_response": "",
        "unlabelled": "Just an answer ## not a heading",
        "well_formed": False,
    }
    assert shown == "Just an answer ## not a heading\n"


def test_answer_streams_from_a_real_model(tiny_models):
    tokenizer, model = load(tiny_models["tiny-llama"])
    out = io.StringIO()
    torch.manual_seed(0)  # sampled, so the random tiny model says more than newlines
    parts = answer(tokenizer, model, "What causes fever?", max_new_tokens=12, temperature=1.0, top_p=1.0, out=out)
    # A random tiny model writes no headings: all it says is unlabelled, and all of it was printed.
    assert parts["thinking"] == parts["final_response"] == ""
    assert parts["unlabelled"] and out.getvalue().strip() == parts["unlabelled"]
