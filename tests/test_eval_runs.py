"""Repeated evaluation runs (eval.py --seeds / --n_runs): the runs asked for, each run's own GPQA option
order and server seed, per-run files resumed per run, the spread report by hand, and the one-line refusals.
The server is scripted here: it answers every question with the letter its request's seed names."""

import json
import os
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from transformers import HfArgumentParser

from huatuo_o1.evaluation.client import EvalArguments, check_run_flags, output_stem, settings_of
from huatuo_o1.evaluation.runs import items_for_run, run_arguments, shuffle_options
from huatuo_o1.records import InputError
from tests.scripts import run_script

LETTER_OF_SEED = {1: "A", 2: "B", 3: "C", 4: "D"}
S_ITEMS = [
    {
        "question": "Which vitamin deficiency causes scurvy?",
        "options": {"A": "Vitamin C", "B": "Vitamin D"},
        "answer_idx": "A",
    },
    {
        "question": "Which vitamin deficiency causes rickets?",
        "options": {"A": "Vitamin C", "B": "Vitamin D"},
        "answer_idx": "B",
    },
]
GPQA_ITEMS = [
    {
        "question": f"Gene question {number}?",
        "options": {"A": f"right {number}", "B": f"wrong {number}a", "C": f"wrong {number}b", "D": f"wrong {number}c"},
        "answer_idx": "A",
        "answer": f"right {number}",
    }
    for number in range(6)
]


def parse(*argv):
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(
        ["--model_name", "m", "--eval_file", "f"] + list(argv)
    )
    return args


def test_the_runs_a_command_asks_for():
    assert [(r.seed, r.gpqa_option_seed) for r in run_arguments(parse())] == [(42, None)]  # the default: one run
    assert [(r.seed, r.gpqa_option_seed) for r in run_arguments(parse("--seeds", "5"))] == [(5, None)]
    assert [(r.seed, r.gpqa_option_seed) for r in run_arguments(parse("--seeds", "3", "1", "2"))] == [
        (3, 3),
        (1, 1),
        (2, 2),
    ]
    assert [r.seed for r in run_arguments(parse("--seed", "10", "--n_runs", "3"))] == [10, 11, 12]
    fixed = run_arguments(parse("--n_runs", "2", "--gpqa_option_seed", "7"))
    assert [(r.seed, r.gpqa_option_seed) for r in fixed] == [(42, 7), (43, 7)]
    assert all(r.seeds is None and r.n_runs == 1 for r in fixed)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "0", "--seeds", "1", "2"], "--temperature 0 is greedy: one run by construction"),
        (["--temperature", "0", "--n_runs", "5"], "--temperature 0 is greedy"),
        (["--seeds", "1", "2", "--n_runs", "2"], "give --seeds or --n_runs, not both"),
        (["--seeds", "1", "1"], "repeats a seed"),
        (["--n_runs", "0"], "--n_runs must be 1 or more"),
    ],
)
def test_run_flags_refused_in_one_line(flags, message):
    with pytest.raises(InputError, match=message):
        check_run_flags(parse(*flags))
    check_run_flags(parse("--temperature", "0"))  # greedy, one run: fine


def test_gpqa_options_shuffled_per_seed_keep_the_answer_text():
    item = {**GPQA_ITEMS[0], "source": "GPQA_Genetics", "id": "GPQA_Genetics/0"}
    orders = set()
    for seed in range(1, 9):
        shuffled = shuffle_options(item, seed)
        assert shuffled == shuffle_options(item, seed)  # drawn from the seed and the id: repeatable
        assert list(shuffled["options"]) == ["A", "B", "C", "D"]
        assert sorted(shuffled["options"].values()) == sorted(item["options"].values())
        assert shuffled["options"][shuffled["answer_idx"]] == "right 0" == shuffled["answer"]
        orders.add(tuple(shuffled["options"].values()))
    assert len(orders) > 3
    # Only GPQA's tracks, and only when the run has a GPQA option seed.
    other = {**S_ITEMS[0], "source": "S", "id": "S/0"}
    (run,) = run_arguments(parse("--gpqa_option_seed", "3"))
    assert items_for_run([other, item], run) == [other, shuffle_options(item, 3)]
    (default,) = run_arguments(parse())
    assert items_for_run([other, item], default) == [other, item]


def test_the_default_run_keeps_its_settings_and_name(tmp_path):
    eval_file = tmp_path / "eval.json"
    eval_file.write_text("{}")
    args = parse("--eval_file", str(eval_file), "--model_name", str(tmp_path))
    assert "gpqa_option_seed" not in settings_of(args)  # so the default run's key is the one it always had
    shuffled = parse("--eval_file", str(eval_file), "--model_name", str(tmp_path), "--gpqa_option_seed", "42")
    assert output_stem(shuffled, settings_of(shuffled)) != output_stem(args, settings_of(args))


@pytest.fixture
def letter_server():
    """A completions server answering every prompt "The answer is X.", X the letter of the request's seed;
    yields (base_url, the requests it got)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply({"status": "ok"})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(request)
            text = f"The answer is {LETTER_OF_SEED[request['seed']]}."
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            usage = {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
            self.reply(
                {
                    "id": "x",
                    "object": "text_completion",
                    "created": 0,
                    "model": "m",
                    "choices": [choice],
                    "usage": usage,
                }
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    server.shutdown()
    server.server_close()


def evaluate(tmp_path, base_url, *flags):
    eval_file = tmp_path / "eval.json"
    if not eval_file.exists():
        eval_file.write_text(json.dumps({"S": S_ITEMS, "GPQA_Genetics": GPQA_ITEMS}))
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    argv = ["--model_name", model, "--eval_file", eval_file, "--base_url", base_url, "--use_chat_template", "False"]
    return run_script("evaluation/eval.py", [*argv, "--output_dir", tmp_path / "out", "--max_retries", "0", *flags])


def test_repeated_runs_each_with_its_seed_and_gpqa_order_resumed_per_run_and_their_spread(letter_server, tmp_path):
    base_url, requests = letter_server
    result = evaluate(tmp_path, base_url, "--seeds", "1", "2", "3")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    (index_name,) = [name for name in os.listdir(out) if name.endswith("_runs.json")]
    index = json.loads((out / index_name).read_text())
    assert [(run["seed"], run["gpqa_option_seed"]) for run in index["runs"]] == [(1, 1), (2, 2), (3, 3)]
    assert "seed" not in index["settings"] and index["settings"]["temperature"] == 0.5
    runs = [json.loads((out / run["results"]).read_text()) for run in index["runs"]]

    # Each run: its seed on every request, the S items as the file has them, GPQA's options in its own order.
    assert sorted(request["seed"] for request in requests) == [1] * 8 + [2] * 8 + [3] * 8
    for seed, records in zip((1, 2, 3), runs):
        assert {r["output"] for r in records} == {f"The answer is {LETTER_OF_SEED[seed]}."}
        assert [(r["options"], r["answer_idx"]) for r in records if r["source"] == "S"] == [
            (item["options"], item["answer_idx"]) for item in S_ITEMS
        ]
        for record in (r for r in records if r["source"] == "GPQA_Genetics"):
            assert record["options"][record["answer_idx"]] == record["answer"] == "right " + record["id"][-1]
            assert record["prompt"].endswith("\n".join(f"{k}. {v}" for k, v in record["options"].items()))
    gpqa_orders = [[tuple(r["options"].values()) for r in records if r["source"] != "S"] for records in runs]
    assert gpqa_orders[0] != gpqa_orders[1] != gpqa_orders[2]

    # The spread, by hand. S: seed 1 answers A (right for item 0), seed 2 B (item 1), seed 3 C (neither):
    # 50, 50, 0 -> mean 33.33, sample sd sqrt((16.67^2 * 2 + 33.33^2) / 2) = 28.87, min-max 0-50.
    spread = json.loads((out / index_name.replace("_runs.json", "_runs_report.json")).read_text())
    assert spread["sources"]["S"]["honest_first_match_accuracy"]["runs"] == [50.0, 50.0, 0.0]
    s_view = spread["sources"]["S"]["paper_accuracy"]
    assert (s_view["runs"], s_view["mean"], s_view["sd"], s_view["min"], s_view["max"]) == (
        [50.0, 50.0, 0.0],
        33.33,
        28.87,
        0.0,
        50.0,
    )
    # GPQA: each run's accuracy is the share of its shuffled golds equal to the run's letter.
    gpqa = [
        round(100 * sum(r["answer_idx"] == LETTER_OF_SEED[seed] for r in rs if r["source"] != "S") / 6, 2)
        for seed, rs in zip((1, 2, 3), runs)
    ]
    g_view = spread["sources"]["GPQA_Genetics"]["honest_first_match_accuracy"]
    assert g_view["runs"] == gpqa and g_view["mean"] == round(statistics.mean(gpqa), 2)
    assert g_view["sd"] == round(statistics.stdev(gpqa), 2)
    averages = [(s + g) / 2 for s, g in zip([50.0, 50.0, 0.0], gpqa)]
    assert spread["average_over_sources"]["paper_accuracy"]["runs"] == [round(a, 2) for a in averages]
    assert (
        spread["sources"]["GPQA_Genetics"]["paper_table1"] == 48.8 and spread["sources"]["S"]["paper_table1"] is None
    )
    table = (out / index_name.replace("_runs.json", "_runs_report.md")).read_text()
    assert "| S | 2 | 33.3 | 28.9 | 0.0-50.0 |" in table and "sample standard deviation (n - 1)" in table
    assert (out / index_name.replace("_runs.json", "_runs_report.png")).read_bytes()[:4] == b"\x89PNG"

    # The same command again asks nothing; one more seed asks only its own run.
    asked = len(requests)
    again = evaluate(tmp_path, base_url, "--seeds", "1", "2", "3")
    assert again.returncode == 0 and again.stdout.count("8 items, 8 already answered (resumed), 0 to ask") == 3
    assert len(requests) == asked
    more = evaluate(tmp_path, base_url, "--seeds", "1", "2", "3", "4")
    assert more.returncode == 0 and more.stdout.count("already answered (resumed), 0 to ask") == 3
    assert [request["seed"] for request in requests[asked:]] == [4] * 8
    assert len([name for name in os.listdir(out) if name.endswith("_runs.json")]) == 2  # a set of its own

    # evaluation/report.py rebuilds the same spread from the index.
    before = (out / index_name.replace("_runs.json", "_runs_report.json")).read_text()
    rescored = run_script("evaluation/report.py", [out / index_name])
    assert rescored.returncode == 0, rescored.stderr
    assert json.loads((out / index_name.replace("_runs.json", "_runs_report.json")).read_text()) == json.loads(before)


def test_one_run_writes_only_a_single_runs_files(letter_server, tmp_path):
    base_url, requests = letter_server
    result = evaluate(tmp_path, base_url, "--seed", "2")
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(tmp_path / "out"))
    assert len(names) == 4 and not any("_runs" in name for name in names)
    (results,) = [name for name in names if not name.endswith(("_report.json", ".md", ".png"))]
    records = json.loads((tmp_path / "out" / results).read_text())
    assert [r["options"] for r in records if r["source"] == "GPQA_Genetics"] == [i["options"] for i in GPQA_ITEMS]
    assert {request["seed"] for request in requests} == {2}

    # One run with a GPQA option seed: that order, in a file of its own.
    result = evaluate(tmp_path, base_url, "--seed", "2", "--gpqa_option_seed", "3")
    assert result.returncode == 0, result.stderr
    new_files = [n for n in os.listdir(tmp_path / "out") if n not in names]
    (shuffled,) = [n for n in new_files if not n.endswith(("_report.json", ".md", ".png"))]
    records = json.loads((tmp_path / "out" / shuffled).read_text())
    expected = [shuffle_options({**item, "id": f"GPQA_Genetics/{i}"}, 3) for i, item in enumerate(GPQA_ITEMS)]
    assert [r["options"] for r in records if r["source"] == "GPQA_Genetics"] == [e["options"] for e in expected]
    assert [r["options"] for r in records if r["source"] == "S"] == [item["options"] for item in S_ITEMS]


def test_greedy_with_several_seeds_is_refused_before_anything_is_asked(letter_server, tmp_path):
    base_url, requests = letter_server
    result = evaluate(tmp_path, base_url, "--temperature", "0", "--n_runs", "3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --temperature 0 is greedy")
    assert requests == [] and not (tmp_path / "out").exists()
