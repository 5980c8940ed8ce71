"""Construct and search against the stand-in teacher, through the real openai client."""

import json
import os
import re
import types

import pytest

from huatuo_o1 import construct, item_store, search
from huatuo_o1.construct import parse_verdict
from huatuo_o1.search import parse_trace, parse_true_false, trace_as_text
from huatuo_o1.teacher import Abandoned, ApiArguments, ItemFailed, ItemTrace, Teacher, api_base_url
from huatuo_o1.teacher_prompts import parse_json_object, parse_json_object_as_original, render
from tests.data_helpers import (
    CONSTRUCT,
    FAST,
    REPO_ROOT,
    SEARCH,
    SECRET_KEY,
    as_problems,
    make_items,
    outputs_of,
    read_json,
    run,
    write_json,
)

SFT_KEYS = {"Question", "Complex_CoT", "Response"}


# ---- parsing ----------------------------------------------------------------------------------


def test_json_is_found_in_fences_and_prose_and_garbage_is_rejected():
    obj = {"Ground-True Answer": "Bladder carcinoma", "n": [1, 2]}
    plain = json.dumps(obj)
    assert parse_json_object(plain) == obj
    assert parse_json_object(f"```json\n{plain}\n```") == obj
    assert parse_json_object(f"Sure! Here it is:\n```\n{plain}\n```\nAnything else?") == obj
    assert parse_json_object(f"The result is {plain} as requested.") == obj
    assert parse_json_object('{"NaturalReasoning": "line one\nline two"}') == {
        "NaturalReasoning": "line one\nline two"
    }
    for bad in ["", "Maybe.", plain[: len(plain) // 2], "[1, 2, 3]"]:
        with pytest.raises(ValueError):
            parse_json_object(bad)


def test_reply_parsers():
    assert parse_verdict("After reading it, my judgement is: Pass") == "Pass"
    assert parse_verdict("It is not Too Simple. Verdict: Ambiguous Answer.") == "Ambiguous Answer"
    with pytest.raises(ValueError):
        parse_verdict("It passes muster")  # "passes" is not the label Pass
    assert parse_true_false("True") is True and parse_true_false("false.") is False
    assert parse_true_false("**False**. It names X, not the true diagnosis.") is False
    assert parse_true_false("The response matches, so: True") is True
    for unusable in ["Maybe.", "It could be true or false.", ""]:
        with pytest.raises(ValueError):
            parse_true_false(unusable)
    good = {
        "CoT": [
            {"action": "Inner Thinking", "title": "t", "content": "c"},
            {"action": "Final Conclusion", "content": "X"},
            {"action": "Verification", "content": "ok"},
        ]
    }
    assert parse_trace(json.dumps(good)) == good["CoT"]
    with pytest.raises(ValueError):
        parse_trace(json.dumps({"CoT": good["CoT"][:2] + [good["CoT"][0]]}))
    assert trace_as_text(good["CoT"]) == "### t\nc\n\n### Conclusion\nX\n\n### Verification\nok"
    # the original's rendering to the letter: a title key is used even when empty, the whole is stripped
    odd = [{"action": "Inner Thinking", "title": "", "content": "c"}, {"action": "Verification", "content": "ok \n"}]
    assert trace_as_text(odd) == "### \nc\n\n### Verification\nok"
    assert render('{"a": "{x}"} {y} {z}', x="{y}", y=1) == '{"a": "{y}"} 1 {z}'
    assert api_base_url("http://h:1/v1/chat/completions") == api_base_url("http://h:1/v1/") == "http://h:1/v1"


def test_stored_texts_keep_the_teachers_whitespace():
    # Complex_CoT, Response and the constructed problem are stored as written (the original did not
    # strip them; SFT tokens depend on it); only emptiness is refused.
    assert search.parse_natural('{"NaturalReasoning": "\\nHmm, first.\\nThen.  "}') == "\nHmm, first.\nThen.  "
    assert search.parse_response("  The answer is B.\n\n") == "  The answer is B.\n\n"
    assert construct.parse_problem('{"Open-ended Verifiable Question": " Q? ", "Ground-True Answer": "A\\n"}') == (
        " Q? ",
        "A\n",
    )
    for empty in ["", " \n"]:
        with pytest.raises(ValueError):
            search.parse_response(empty)


def test_the_originals_reply_parsing_on_request():
    strict, original = search.PARSERS["strict"], search.PARSERS["original"]
    # verdicts: the original's substring tests
    assert construct.parse_verdict_as_original("It does not pass: Too Simple") == "Pass"
    assert parse_verdict("It does not pass: Too Simple") == "Too Simple"
    assert construct.parse_verdict_as_original("Verdict: Ambiguous Answer") == "Not Pass"
    assert original["verdict"]("False: it is not the true diagnosis.") is True
    assert strict["verdict"]("False: it is not the true diagnosis.") is False
    assert original["verdict"]("Maybe.") is False  # no "true" anywhere: False, never unusable
    # JSON: raw newlines deleted first, so a raw line break inside a string is lost (and lines join)
    raw = '{"NaturalReasoning": "Hmm, first.\nThen second."}'
    assert strict["natural"](raw) == "Hmm, first.\nThen second."
    assert parse_json_object_as_original(raw) == {"NaturalReasoning": "Hmm, first.Then second."}
    with pytest.raises(ValueError):
        original["natural"](raw)  # no line break left
    escaped = '```json\n{"NaturalReasoning": "Hmm, first.\\nThen second.  "}\n```'
    assert original["natural"](escaped) == strict["natural"](escaped) == "Hmm, first.\nThen second.  "
    with pytest.raises(ValueError):
        parse_json_object_as_original('{"a": 1} Hope this helps!')  # starts with "{": read whole, extra text fails
    assert parse_json_object('{"a": 1} Hope this helps!') == {"a": 1}
    # problems: exactly two keys, empty text allowed
    three = '{"Open-ended Verifiable Question": "Q?", "Ground-True Answer": "A", "Note": "n"}'
    assert construct.parse_problem(three) == ("Q?", "A")
    with pytest.raises(ValueError):
        construct.parse_problem_as_original(three)
    empty = '{"Open-ended Verifiable Question": "Q?", "Ground-True Answer": ""}'
    assert construct.parse_problem_as_original(empty) == ("Q?", "")
    with pytest.raises(ValueError):
        construct.parse_problem(empty)
    # traces: only the last three actions are looked at; responses: anything, even empty
    loose = {
        "CoT": [
            {"action": "Thinking aloud"},
            {"action": "Inner Thinking", "title": "t", "content": "c"},
            {"action": "Final Conclusion", "content": "X"},
            {"action": "Verification", "content": "ok"},
        ]
    }
    assert original["trace"](json.dumps(loose)) == loose["CoT"]
    with pytest.raises(ValueError):
        strict["trace"](json.dumps(loose))
    for bad in ['{"CoT": [{"action": "Final Conclusion"}]}', '{"CoT": ["a", "b", "c"]}', '{"CoT": "text"}', ""]:
        with pytest.raises(ValueError):
            original["trace"](bad)
    assert original["response"]("") == ""


def test_requests_carry_max_tokens_as_the_originals_did_unless_zero(monkeypatch):
    sent = []
    completion = types.SimpleNamespace(
        usage=None, choices=[types.SimpleNamespace(message=types.SimpleNamespace(content="True"))]
    )
    raw = types.SimpleNamespace(retries_taken=0, parse=lambda: completion)
    for flags, expected in [({}, 8192), ({"max_tokens": 0}, None), ({"max_tokens": 300}, 300)]:
        teacher = Teacher(ApiArguments(api_key="sk-test", **flags))
        monkeypatch.setattr(
            teacher.client.chat.completions.with_raw_response, "create", lambda **kw: sent.append(kw) or raw
        )
        assert teacher.complete("Is it? True or False", ItemTrace()) == "True"
        assert sent[-1].get("max_tokens") == expected and sent[-1]["messages"][0]["content"] == "Is it? True or False"


def test_every_http_attempt_is_counted_and_none_leaves_after_a_stop(start_teacher):
    server = start_teacher(answer_key=make_items(1), fault_rate=1.0, faults="429")
    teacher = Teacher(ApiArguments(api_key="sk-test", api_url=server.base_url, max_retries=2, timeout=20))
    trace = ItemTrace()
    with pytest.raises(ItemFailed, match=r"^verify: RateLimitError after 3 HTTP call\(s\)"):
        teacher.ask("verify", "Is it right? True or False", parse_true_false, trace)
    assert trace.calls == teacher.calls == server.stats()["total"] == 3  # the first try and two retries
    server.configure(fault_rate=0.0)
    teacher.complete("Is it right? True or False", trace)
    assert trace.calls == teacher.calls == server.stats()["total"] == 4
    assert trace.prompt_tokens > 0 and trace.completion_tokens > 0

    # Stopped between a try and its retry (set here when the 429 comes back): the retry never leaves.
    server.configure(fault_rate=1.0)
    hooks = teacher.http_client.event_hooks
    teacher.http_client.event_hooks = {**hooks, "response": [lambda response: teacher.stop.set()]}
    with pytest.raises(Abandoned):
        teacher.complete("Is it right? True or False", trace)
    assert server.stats()["total"] == 5 and trace.calls == 4  # an abandoned call counts nowhere
    with pytest.raises(Abandoned):
        teacher.complete("Is it right? True or False", trace)
    assert server.stats()["total"] == 5


# ---- construct ------------------------------------------------------------------------------


def test_construct_with_filter_keeps_judged_items_in_records_only(start_teacher, tmp_path):
    items = make_items(8)
    items[2]["question"] = "Which of the following is NOT a cause of microcytic anemia?"
    items[5]["standin_filter"] = "Too Simple"
    items[6]["standin_filter"] = "Not Reformulatable"
    teacher = start_teacher(answer_key=items, wrap="prose")
    main, records, summary = outputs_of(tmp_path, "problems")
    result = run(
        CONSTRUCT,
        [
            "--data_path",
            write_json(tmp_path / "mcq.json", items),
            "--filter_data",
            "--output_path",
            main,
            "--output_dir",
            tmp_path / "progress",
        ]
        + FAST,
        teacher,
    )

    problems, all_records, stats = read_json(main), read_json(records), read_json(summary)
    passed = [item for i, item in enumerate(items) if i not in (2, 5, 6)]
    assert [p["question"] for p in problems] == [item["question"] for item in passed]
    for problem, item in zip(problems, passed):  # the input fields plus the two keys, nothing else
        assert problem == dict(
            item, **{"Open-ended Verifiable Question": item["question"], "Ground-True Answer": item["answer"]}
        )
    assert [r["filter_verdict"] for r in all_records] == [
        "Pass",
        "Pass",
        "Ambiguous Answer",
        "Pass",
        "Pass",
        "Too Simple",
        "Not Reformulatable",
        "Pass",
    ]
    assert [r["outcome"] for r in all_records].count("filtered") == 3
    assert "Open-ended Verifiable Question" not in all_records[5]
    assert stats["by_outcome"] == {"filtered": 3, "verifiable": 5}
    server = teacher.stats()
    assert server["by_kind"] == {"filter": 8, "reformat": 5}
    assert stats["calls"] == server["total"] == 13 and stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    assert main in result.stdout and summary in result.stdout


def test_construct_without_filter_uses_the_original_file_name(start_teacher, tmp_path):
    items = make_items(4)
    items[1]["question"] = "Which of the following is NOT a cause of microcytic anemia?"
    teacher = start_teacher(answer_key=items)
    write_json(tmp_path / "exam.json", items)
    # cwd = tmp_path here: the default output names are relative to where the user runs the command.
    run(CONSTRUCT, ["--data_path", "exam.json"] + FAST, teacher, cwd=tmp_path)
    problems = read_json(tmp_path / "exam_final_4.json")
    assert len(problems) == 4 and all(p["Ground-True Answer"] == item["answer"] for p, item in zip(problems, items))
    assert teacher.stats()["by_kind"] == {"reformat": 4}
    assert len([name for name in os.listdir(tmp_path / "output_data" / "exam") if name.endswith(".json")]) == 4
    summary = read_json(tmp_path / "exam_final_4_summary.json")
    assert summary["by_outcome"] == {"verifiable": 4}
    assert "api_key" not in summary["settings"]


def test_unparsable_reformat_is_retried_then_recorded_and_a_rerun_retries_only_failures(start_teacher, tmp_path):
    items = make_items(3)
    teacher = start_teacher(answer_key=items, fault_rate=1.0, faults="malformed")
    main, records, summary = outputs_of(tmp_path, "problems")
    args = [
        "--data_path",
        write_json(tmp_path / "mcq.json", items),
        "--output_path",
        main,
        "--output_dir",
        tmp_path / "progress",
        "--parse_attempts",
        "3",
    ] + FAST
    # every item failed: one line, exit 1, no main file (there was none); the records hold the reasons
    result = run(CONSTRUCT, args, teacher, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "every item failed (3)" in error[0] and f"wrote no {main}" in error[0]
    assert not os.path.exists(main)
    failed = read_json(records)
    assert [r["outcome"] for r in failed] == ["failed"] * 3
    assert all(r["failure_reason"].startswith("reformat: no usable reply after 3 attempt(s)") for r in failed)
    assert all(len(r["llm_log"]) == 3 and not any(e["parsed"] for e in r["llm_log"]) for r in failed)
    assert teacher.stats()["by_kind"] == {"reformat": 9}  # 3 tries each, then given up
    assert read_json(summary)["failed_by_step"] == {"reformat": 3}

    teacher.configure(fault_rate=0.0)
    teacher.reset()
    run(CONSTRUCT, args, teacher)
    assert [r["outcome"] for r in read_json(records)] == ["verifiable"] * 3
    assert teacher.stats()["total"] == 3
    teacher.reset()
    run(CONSTRUCT, args, teacher)  # all finished: nothing is sent again
    assert teacher.stats()["total"] == 0 and len(read_json(main)) == 3


def test_a_progress_file_that_cannot_be_written_stops_the_run_with_one_line(start_teacher, tmp_path, monkeypatch):
    # Before: the worker thread died with the error and the run waited for its item forever.
    items = make_items(6)
    teacher = start_teacher(answer_key=items)
    main, _, _ = outputs_of(tmp_path, "problems")

    def disk_full(store, key, entry):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(item_store.ItemStore, "save", disk_full)
    args = ["--data_path", write_json(tmp_path / "mcq.json", items), "--output_path", main]
    result = run(
        CONSTRUCT, args + ["--output_dir", tmp_path / "p", "--num_process", "2"] + FAST[:-2], teacher, check=False
    )
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert lines == [
        "error: OSError: [Errno 28] No space left on device (--debug or HUATUO_DEBUG=1 shows the traceback)"
    ]
    assert not os.path.exists(main) and teacher.stats()["total"] <= 2 * 6


# ---- search ----------------------------------------------------------------------------------


def search_args(tmp_path, problems, name="sft", *extra):
    main, records, summary = outputs_of(tmp_path, name)
    return [
        "--data_path",
        write_json(tmp_path / f"{name}_in.json", problems),
        "--output_path",
        main,
        "--output_dir",
        tmp_path / f"{name}_progress",
        "--max_search_attempts",
        "1",
        "--max_search_depth",
        "2",
        *extra,
    ] + FAST, (main, records, summary)


def test_search_paths_right_at_once_fixed_by_a_strategy_and_fixed_by_the_label_round(start_teacher, tmp_path):
    items = make_items(4, rounds=[0, 1, 2, -1])
    teacher = start_teacher(answer_key=items, wrap="mixed")
    problems = as_problems(items) + [{"question": "no problem fields"}]  # skipped
    args, (main, records, summary) = search_args(tmp_path, problems, "sft", "--efficient_search", "True")
    run(SEARCH, args, teacher)
    rows, recs, stats = read_json(main), read_json(records), read_json(summary)

    first, one_fix, two_fixes, label = recs
    assert first["response_type"] == ["Init_CoT"] and first["verify"] == [True]
    assert one_fix["response_type"][0] == "Init_CoT" and one_fix["response_type"][1].startswith("Re_CoT_")
    assert one_fix["response_type"][1] != "Re_CoT_Backtracking"  # not allowed in an attempt's first round
    assert one_fix["verify"] == [False, True]
    assert two_fixes["verify"] == [False, False, True] and len(two_fixes["response_type"]) == 3
    assert label["response_type"][-1] == "Label_CoT" and label["verify"] == [False, False, False, True]
    assert [r["outcome"] for r in recs] == ["verified", "verified", "verified", "verified_with_label"]
    # The trace: each new round replaced the last Verification; it ends Inner Thinking, Final Conclusion, Verification.
    for rec, item in zip(recs, items):
        assert [a["action"] for a in rec["Long_CoT"][-3:]] == ["Inner Thinking", "Final Conclusion", "Verification"]
        assert rec["Long_CoT"][-2]["content"] == f"The answer is {item['answer']}."
        assert sum(a["action"] == "Final Conclusion" for a in rec["Long_CoT"]) == len(rec["response_type"])
        # every verdict is kept with what was judged and the reference: verifier training data
        assert [v["verdict"] for v in rec["verifications"]] == rec["verify"][: len(rec["verifications"])]
        assert all(v["reference_answer"] == item["answer"] and v["response"] for v in rec["verifications"])
    assert len(label["verifications"]) == 3  # the label round counts as verified without a check

    assert len(rows) == 4 and all(set(row) == SFT_KEYS and all(row[k].strip() for k in SFT_KEYS) for row in rows)
    assert [row["Question"] for row in rows] == [item["question"] for item in items]
    assert all("\n" in row["Complex_CoT"] and item["answer"] in row["Response"] for row, item in zip(rows, items))
    assert stats["by_outcome"] == {"verified": 3, "verified_with_label": 1}
    assert stats["skipped_input_rows"] == 1
    # calls: per item cot + verify per round, then natural + response (label round: no verify)
    assert teacher.stats()["by_kind"] == {"cot": 1 + 2 + 3 + 4, "verify": 1 + 2 + 3 + 3, "natural": 4, "response": 4}
    assert stats["calls"] == teacher.stats()["total"]


def test_the_originals_reply_parsing_runs_end_to_end_and_redoes_items_made_the_other_way(start_teacher, tmp_path):
    items = make_items(3, rounds=[0, 1, -1])
    teacher = start_teacher(answer_key=items, wrap="mixed")
    args, (main, records, _) = search_args(tmp_path, as_problems(items), "sft", "--efficient_search", "True")
    run(SEARCH, args, teacher)
    strict_rows = read_json(main)
    teacher.reset()
    run(SEARCH, args + ["--reply_parsing", "original"], teacher)
    assert teacher.stats()["by_kind"]["natural"] == 3  # redone: the parsing is part of an item's settings
    assert read_json(main) == strict_rows and len(strict_rows) == 3  # well-formed replies read the same either way
    assert [r["outcome"] for r in read_json(records)] == ["verified", "verified", "verified_with_label"]


def test_efficient_search_rejects_values_that_are_not_booleans(tmp_path):
    result = run(
        SEARCH,
        ["--data_path", write_json(tmp_path / "p.json", as_problems(make_items(1))), "--efficient_search", "maybe"],
        check=False,
    )
    assert result.returncode == 2 and "--efficient_search" in result.stderr and "maybe" in result.stderr


@pytest.mark.parametrize("flag", ["False", "false", "0"])
def test_efficient_search_off_leaves_the_item_unverified_and_out_of_the_sft_file(start_teacher, tmp_path, flag):
    items = make_items(2, rounds=[1, -1])
    teacher = start_teacher(answer_key=items)
    args, (main, records, _) = search_args(tmp_path, as_problems(items), "sft", "--efficient_search", flag)
    run(SEARCH, args, teacher)
    recs = read_json(records)
    assert [r["outcome"] for r in recs] == ["verified", "unverified"]
    assert recs[1]["verify"] == [False, False, False] and "Label_CoT" not in recs[1]["response_type"]
    assert "Complex_CoT" not in recs[1]
    assert [row["Question"] for row in read_json(main)] == [items[0]["question"]]
    assert teacher.stats()["by_kind"]["natural"] == 1


def test_a_new_attempt_restarts_from_the_first_trace_and_keeps_the_failed_one(start_teacher, tmp_path):
    # Needs two fixes in one line of reasoning; with depth 1 each attempt makes only one, so restarting
    # from the first trace (rather than continuing) must leave it wrong after both attempts.
    items = make_items(1, rounds=2)
    teacher = start_teacher(answer_key=items)
    args, (_, records, _) = search_args(tmp_path, as_problems(items), "sft", "--efficient_search", "false")
    args[args.index("--max_search_attempts") + 1] = "2"
    args[args.index("--max_search_depth") + 1] = "1"
    run(SEARCH, args, teacher)
    rec = read_json(records)[0]
    assert rec["outcome"] == "unverified"
    assert len(rec["prior_fail_try"]) == 1 and len(rec["prior_fail_try"][0]["response_type"]) == 2
    assert rec["verify"] == [False, False] and rec["response_type"][0] == "Init_CoT"
    # both lines of reasoning grew from the same first trace (its last Verification replaced), one round each
    assert rec["Long_CoT"][:3] == rec["prior_fail_try"][0]["Long_CoT"][:3]
    assert sum(a["action"] == "Final Conclusion" for a in rec["Long_CoT"]) == 2
    assert [v["verdict"] for v in rec["verifications"]] == [False, False, False]  # all three checks kept


def test_strategy_choice_is_reproducible_with_a_seed_and_never_backtracks_first(start_teacher, tmp_path):
    items = make_items(12, rounds=-1)
    teacher = start_teacher(answer_key=items)

    def strategies(name, seed):
        args, (_, records, _) = search_args(
            tmp_path, as_problems(items), name, "--efficient_search", "0", "--seed", seed
        )
        args[args.index("--max_search_depth") + 1] = "3"
        run(SEARCH, args, teacher)
        return [r["response_type"] for r in read_json(records)]

    first, again, other = strategies("a", 7), strategies("b", 7), strategies("c", 8)
    assert first == again and first != other
    assert all(types[1] != "Re_CoT_Backtracking" and len(types) == 4 for types in first + other)
    assert {t for types in first + other for t in types[2:]} >= {"Re_CoT_Backtracking", "Re_CoT_Correction"}


# ---- language, templates, key, inputs ---------------------------------------------------------


def test_chinese_output_uses_the_chinese_templates(start_teacher, tmp_path):
    items = make_items(2, rounds=[1, -1])
    teacher = start_teacher(answer_key=items)
    main, records, _ = outputs_of(tmp_path, "zh_problems")
    run(
        CONSTRUCT,
        [
            "--data_path",
            write_json(tmp_path / "mcq.json", items),
            "--filter_data",
            "--language",
            "zh",
            "--output_path",
            main,
            "--output_dir",
            tmp_path / "p",
        ]
        + FAST,
        teacher,
    )
    assert len(read_json(main)) == 2
    args, (sft, search_records, _) = search_args(tmp_path, read_json(main), "zh_sft", "--language", "zh")
    run(SEARCH, args, teacher)
    assert len(read_json(sft)) == 2
    queries = [e["query"] for rec in read_json(records) + read_json(search_records) for e in rec["llm_log"]]
    assert len(queries) > 10 and all(re.search(r"[\u4e00-\u9fff]", q) for q in queries)
    assert os.path.isdir(tmp_path / "zh_sft_progress" / "zh_sft_in_CoT_search_zh")


def test_a_users_template_folder_overrides_single_templates(start_teacher, tmp_path):
    items = make_items(1, rounds=0)
    teacher = start_teacher(answer_key=items)
    mine = tmp_path / "my_prompts"
    mine.mkdir()
    (mine / "verify.txt").write_text("MY-VERIFIER: {conclusion} vs {reference_answer}. Reply True or False.")
    args, (_, records, _) = search_args(tmp_path, as_problems(items), "sft", "--prompt_dir", mine)
    run(SEARCH, args, teacher)
    log = read_json(records)[0]["llm_log"]
    assert [e["query"].startswith("MY-VERIFIER") for e in log] == [False, True, False, False]

    (mine / "verify.txt").write_text("no placeholders here, True or False")
    result = run(SEARCH, args, teacher, check=False)
    assert result.returncode != 0 and "verify.txt" in result.stderr and "{conclusion}" in result.stderr


def test_the_key_comes_from_the_environment_or_the_flag_and_never_shows(start_teacher, tmp_path):
    items = make_items(3, rounds=0)
    teacher = start_teacher(answer_key=items, fault_rate=0.5, faults="500,malformed")
    main, records, summary = outputs_of(tmp_path, "problems")
    base = [
        "--data_path",
        write_json(tmp_path / "mcq.json", items),
        "--filter_data",
        "--output_path",
        main,
        "--output_dir",
        tmp_path / "p",
        "--max_retries",
        "0",
        "--parse_attempts",
        "1",
        "--model_name",
        "m",
    ]
    result = run(CONSTRUCT, base, teacher, env_key=None, check=False)
    assert result.returncode != 0 and "OPENAI_API_KEY" in result.stderr

    outputs = []
    for env_key, flag in [(SECRET_KEY, []), (None, ["--api_key", SECRET_KEY])]:
        result = run(CONSTRUCT, base + flag, teacher, env_key=env_key)
        outputs += [result.stdout, result.stderr]
    # an endpoint that refuses connections: every item fails, the earlier output is kept, the failure
    # reasons are in the progress files and the one-line error, still without the key
    kept = open(main, encoding="utf-8").read()
    result = run(
        CONSTRUCT,
        base + ["--api_url", "http://127.0.0.1:9/v1", "--output_dir", tmp_path / "p2"],
        env_key=SECRET_KEY,
        check=False,
    )
    outputs += [result.stdout, result.stderr]
    assert result.returncode == 1 and "every item failed (3)" in result.stderr
    assert "APIConnectionError" in result.stderr
    assert open(main, encoding="utf-8").read() == kept
    folder = tmp_path / "p2" / "mcq"
    progress = [read_json(folder / name) for name in os.listdir(folder) if not name.startswith(".")]
    assert len(progress) == 3
    assert all(entry["record"]["failure_reason"].startswith("filter: APIConnectionError") for entry in progress)
    for folder, _, files in os.walk(tmp_path):
        outputs += [open(os.path.join(folder, f), encoding="utf-8").read() for f in files]
    assert len(outputs) > 8 and not any(SECRET_KEY in text for text in outputs)


BAD_INPUTS = {
    "not_json": ('[{"question": "x", ', "not valid JSON"),
    "wrong_top_level": ('{"question": "x", "options": {"A": "a"}, "answer": "a"}', "expected a JSON list"),
    "missing_options": (
        '[{"question": "q", "options": {"A": "a"}, "answer": "a"}, {"question": "q", "answer": "a"}]',
        "row 1 lacks the field(s) 'options'",
    ),
    "missing_question": ('[{"options": {"A": "a"}, "answer": "a"}]', "row 0 lacks the field(s) 'question'"),
    "missing_answer": ('[{"question": "q", "options": {"A": "a"}}]', "row 0 lacks the field(s) 'answer'"),
    "options_not_a_dict": (
        '[{"question": "q", "options": ["a", "b"], "answer": "a"}]',
        "row 0 has 'options' of type list",
    ),
    "empty_list": ("[]", "the list is empty"),
    "jsonl_bad_line": ('{"question": "q", "options": {"A": "a"}, "answer": "a"}\n{oops\n', "line 2 is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_with_one_clear_error_and_overwrites_nothing(tmp_path, case):
    text, expected = BAD_INPUTS[case]
    path = tmp_path / ("input.jsonl" if case.startswith("jsonl") else "input.json")
    path.write_text(text)
    output = tmp_path / "out.json"
    output.write_text('[{"an earlier": "row"}]')
    # one case as a real process (exit status, stderr), the others in-process (same main, faster)
    result = run(
        CONSTRUCT,
        ["--data_path", path, "--output_path", output, "--output_dir", tmp_path / "p"],
        check=False,
        subprocess_run=case == "not_json",
    )
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(path) in error_lines[0] and expected in error_lines[0]
    assert "Traceback" not in result.stderr
    assert output.read_text() == '[{"an earlier": "row"}]' and not (tmp_path / "p").exists()


def test_search_rejects_input_without_problems_and_offline_hub_ids(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"Open-ended Verifiable Question": "q"},')
    result = run(SEARCH, ["--data_path", broken], check=False)
    assert result.returncode != 0 and f"error: {broken}: not valid JSON" in result.stderr
    result = run(SEARCH, ["--data_path", write_json(tmp_path / "rows.json", [{"Question": "q"}, "text"])], check=False)
    assert result.returncode != 0 and "row 1 is a str, expected an object" in result.stderr
    path = write_json(tmp_path / "mcq.json", make_items(2))
    result = run(SEARCH, ["--data_path", path], check=False)
    assert (
        result.returncode != 0
        and path in result.stderr
        and "construct_verifiable_medical_problems.py" in result.stderr
    )
    result = run(
        SEARCH, ["--data_path", "FreedomIntelligence/medical-o1-verifiable-problem"], check=False, cwd=str(tmp_path)
    )
    assert result.returncode != 0 and "could not load the Hugging Face dataset" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "output_data")


def test_the_seed_commands_work_as_typed_on_the_demo_data(start_teacher, tmp_path):
    demo = os.path.join(REPO_ROOT, "data", "demo_data.json")
    teacher = start_teacher(answer_key=demo)
    # the seed's two commands, plus where the teacher is; run in a scratch folder so outputs land there
    run(
        CONSTRUCT,
        ["--data_path", demo, "--filter_data", "--model_name", "gpt-4o"],
        teacher,
        cwd=tmp_path,
        subprocess_run=True,
    )
    run(
        SEARCH,
        [
            "--data_path",
            demo,
            "--efficient_search",
            "True",
            "--max_search_attempts",
            "1",
            "--max_search_depth",
            "2",
            "--model_name",
            "gpt-4o",
        ],
        teacher,
        cwd=tmp_path,
        subprocess_run=True,
    )
    names = sorted(os.listdir(tmp_path))
    final = [n for n in names if re.fullmatch(r"demo_data_final_\d+\.json", n)]
    sft = [n for n in names if re.fullmatch(r"demo_data_CoT_search_\d+\.json", n)]
    assert len(final) == 1 and len(sft) == 1
    mcq, problems, rows = read_json(demo), read_json(tmp_path / final[0]), read_json(tmp_path / sft[0])
    assert 40 <= len(mcq) <= 60 and 0 < len(mcq) - len(problems) <= 8  # a few are filtered out
    assert len(rows) >= 0.8 * len(problems) and all(set(r) == SFT_KEYS for r in rows)
    # construct's output chains into search as well
    run(SEARCH, ["--data_path", final[0], "--model_name", "gpt-4o"], teacher, cwd=tmp_path)
    assert any(re.fullmatch(rf"demo_data_final_\d+_CoT_search_{len(problems)}\.json", n) for n in os.listdir(tmp_path))


def test_no_more_than_num_process_requests_are_in_flight(start_teacher, tmp_path):
    # The server holds each request 60 ms, so 4 arrivals less than 60 ms apart would mean 4 in flight.
    items = make_items(24)
    teacher = start_teacher(answer_key=items, latency_ms=60)
    main, _, _ = outputs_of(tmp_path, "problems")
    run(
        CONSTRUCT,
        [
            "--data_path",
            write_json(tmp_path / "mcq.json", items),
            "--filter_data",
            "--output_path",
            main,
            "--output_dir",
            tmp_path / "p",
        ]
        + FAST
        + ["--num_process", "3"],
        teacher,
    )
    arrivals = sorted(call["time"] for call in teacher.stats()["calls"])
    assert len(arrivals) == 48
    assert min(later - earlier for earlier, later in zip(arrivals, arrivals[3:])) >= 0.055
    assert len(read_json(main)) == 24
