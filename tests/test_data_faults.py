"""The data stages under faults (30% of calls failing in mixed ways) and after a SIGKILL, counted at the server.

(Ctrl-C and two runs on one progress folder: tests/test_cli_errors.py.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.data_helpers import (
    CONSTRUCT,
    FAST,
    REPO_ROOT,
    SEARCH,
    SECRET_KEY,
    make_items,
    outputs_of,
    read_json,
    run,
    write_json,
)

FAULTY = FAST + ["--num_process", "16", "--timeout", "0.5", "--max_retries", "2", "--parse_attempts", "3"]


def check_complete(records, inputs, allowed):
    """Every input item appears once, in order, with an allowed outcome; failures carry a reason."""
    assert [r["question"] for r in records] == [item["question"] for item in inputs]
    assert {r["outcome"] for r in records} <= allowed | {"failed"}
    for r in records:
        assert (r["outcome"] == "failed") == bool(r.get("failure_reason"))


def assert_calls_match(client_count, server):
    """Every HTTP attempt, retries included, is counted. An attempt that timed out on the client before
    the server read it (possible on a loaded machine) is counted by the client only, hence the small margin."""
    assert server["total"] <= client_count <= server["total"] + max(3, server["total"] // 100)


@pytest.mark.e2e  # both data stages over 200 items: 20 s, a fifth of what test-fast may take
def test_thirty_percent_mixed_faults_on_200_items_lose_and_duplicate_nothing(start_teacher, tmp_path):
    items = make_items(200)
    for item in items[::25]:
        item["standin_filter"] = "Too Simple"
    teacher = start_teacher(
        answer_key=items, fault_rate=0.3, faults="429,500,timeout,malformed", timeout_sleep_s=1.0, wrap="mixed", seed=3
    )
    problems_path, problem_records, problem_summary = outputs_of(tmp_path, "problems")
    construct_args = [
        "--data_path",
        write_json(tmp_path / "mcq.json", items),
        "--filter_data",
        "--output_path",
        problems_path,
        "--output_dir",
        tmp_path / "p",
    ] + FAULTY
    run(CONSTRUCT, construct_args, teacher)

    records, summary, server = read_json(problem_records), read_json(problem_summary), teacher.stats()
    check_complete(records, items, {"verifiable", "filtered"})
    assert set(server["by_outcome"]) == {"ok", "429", "500", "timeout", "malformed"}
    assert 0.2 < 1 - server["by_outcome"]["ok"] / server["total"] < 0.4
    assert_calls_match(summary["calls"], server)
    problems = read_json(problems_path)
    assert len(problems) == summary["by_outcome"]["verifiable"] > 150
    assert len({p["question"] for p in problems}) == len(problems)
    assert len([name for name in os.listdir(tmp_path / "p" / "mcq") if not name.startswith(".")]) == 200
    failed_first = {r["question"] for r in records if r["outcome"] == "failed"}

    teacher.reset()
    sft_path, sft_records, sft_summary = outputs_of(tmp_path, "sft")
    search_args = ["--data_path", problems_path, "--output_path", sft_path, "--output_dir", tmp_path / "s"] + FAULTY
    run(SEARCH, search_args, teacher)
    records, summary, server = read_json(sft_records), read_json(sft_summary), teacher.stats()
    check_complete(records, problems, {"verified", "verified_with_label", "unverified"})
    assert_calls_match(summary["calls"], server)
    assert server["total"] > 4 * len(problems)
    for r in records:  # a failure after the first trace still shows the search so far
        if r["outcome"] == "failed" and r["verifications"]:
            assert len(r["verify"]) >= len(r["verifications"]) > 0 and r["Long_CoT"]
    rows = read_json(sft_path)
    assert len(rows) == sum(r["outcome"].startswith("verified") for r in records)
    assert len({row["Question"] for row in rows}) == len(rows)

    # Faults off: a rerun retries exactly the failed items and leaves the finished ones alone.
    failed_search = {r["question"] for r in records if r["outcome"] == "failed"}
    assert failed_first | failed_search, (
        "with 30% faults and 2 retries some items are expected to fail (p(none) < 1e-5)"
    )
    print(f"failed: construct {len(failed_first)}, search {len(failed_search)}; reasons {summary['failed_by_step']}")
    teacher.configure(fault_rate=0.0)
    teacher.reset()
    run(CONSTRUCT, construct_args, teacher)
    assert {c["question"] for c in teacher.stats()["calls"]} == failed_first
    assert "failed" not in read_json(problem_summary)["by_outcome"]
    # construct's output now holds the problems that failed before: new items for search, the rest stay finished
    new_problems = {p["question"] for p in read_json(problems_path)} - {p["question"] for p in problems}
    assert len(new_problems) == len(
        failed_first - {r["question"] for r in read_json(problem_records) if r["outcome"] == "filtered"}
    )
    teacher.reset()
    run(SEARCH, search_args, teacher)
    assert {c["question"] for c in teacher.stats()["calls"]} - {None} == failed_search | new_problems
    assert "failed" not in read_json(sft_summary)["by_outcome"]


def test_a_run_killed_midway_resumes_without_repeating_finished_items(start_teacher, tmp_path):
    items = make_items(40)
    problems = [
        dict(item, **{"Open-ended Verifiable Question": item["question"], "Ground-True Answer": item["answer"]})
        for item in items
    ]
    teacher = start_teacher(answer_key=items, latency_ms=20)
    sft_path, sft_records, sft_summary = outputs_of(tmp_path, "sft")
    args = (
        [
            "--data_path",
            write_json(tmp_path / "problems.json", problems),
            "--output_path",
            sft_path,
            "--output_dir",
            tmp_path / "s",
        ]
        + FAST[:-2]
        + ["--num_process", "4"]
    )
    store = tmp_path / "s" / "problems_CoT_search"

    env = dict(os.environ, OPENAI_API_KEY=SECRET_KEY)
    process = subprocess.Popen(
        [sys.executable, SEARCH, "--api_url", teacher.base_url, *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def finished_files():
        return [name for name in os.listdir(store) if not name.startswith(".")] if store.is_dir() else []

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(finished_files()) < 10:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)  # let requests the killed run had already sent reach the server before counting anew

    finished = {name: (store / name).read_bytes() for name in finished_files()}
    assert 10 <= len(finished) < 40, "the kill should land midway"
    finished_questions = {read_json(store / name)["record"]["question"] for name in finished}
    calls_before = teacher.stats()["total"]
    teacher.reset()

    run(SEARCH, args, teacher)
    rerun_questions = {c["question"] for c in teacher.stats()["calls"]} - {None}
    assert not rerun_questions & finished_questions  # zero calls for items finished before the kill
    assert rerun_questions == {item["question"] for item in items} - finished_questions
    assert all((store / name).read_bytes() == content for name, content in finished.items())
    records, summary = read_json(sft_records), read_json(sft_summary)
    check_complete(records, problems, {"verified", "verified_with_label"})
    assert summary["this_run"]["items_resumed"] == len(finished)
    assert summary["this_run"]["calls"] == teacher.stats()["total"] and calls_before > 0
    rows = read_json(sft_path)
    assert len(rows) == 40 and len({row["Question"] for row in rows}) == 40
