"""How close the data stages come to the ideal request throughput against a slow endpoint.

Starts the stand-in teacher with a fixed latency per reply, runs construct_verifiable_medical_problems.py
(one call per item without --filter_data) with W workers, and compares its measured items per second
(from the run summary: the processing phase only, not start-up) with the ideal W / latency.
Prints the ratio; the goal is >= 0.85 for 16 workers and 100 ms. For context it also measures a bare
openai client sending the same number of requests from W threads (no parsing, no progress files): the
stand-in server runs on the same CPU cores, so on a busy 2-core machine both fall short of the ideal.

Usage:
    python bench/api_throughput.py [--workers 16] [--latency_ms 100] [--items 960] [--repeats 3]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from huatuo_o1 import cli
from huatuo_o1.records import read_json
from huatuo_o1.serving import free_port, start_server, stop_pid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bare_client_rate(base_url, workers, items):
    """Requests per second of a plain openai client in `workers` threads sending the same prompts."""
    from openai import OpenAI

    from huatuo_o1.construct import PROMPTS, question_with_options
    from huatuo_o1.teacher_prompts import load_prompts, render

    template = load_prompts(PROMPTS)["reformat"]
    prompts = iter(
        [render(template, question_with_options=question_with_options(item), answer=item["answer"]) for item in items]
    )
    client = OpenAI(base_url=base_url, api_key="bench-key")
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                prompt = next(prompts, None)
            if prompt is None:
                return
            client.chat.completions.create(model="bench", messages=[{"role": "user", "content": prompt}])

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(items) / (time.time() - started)


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency_ms", type=float, default=100.0)
    parser.add_argument("--items", type=int, default=960)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs; the median is reported (a shared machine is noisy)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        items = [
            {
                "question": f"Item {i}: a patient presents with finding number {i} and needs a diagnosis. What is it?",
                "options": {"A": f"Condition {i}", "B": "Something else"},
                "answer_idx": "A",
                "answer": f"Condition {i}",
            }
            for i in range(args.items)
        ]
        data_path = os.path.join(scratch, "bench.json")
        with open(data_path, "w") as f:
            json.dump(items, f)
        port = free_port()
        teacher = start_server(
            [
                sys.executable,
                os.path.join(REPO_ROOT, "tests", "standin_teacher.py"),
                "--port",
                str(port),
                "--answer_key",
                data_path,
                "--latency_ms",
                str(args.latency_ms),
            ],
            f"http://127.0.0.1:{port}/health",
        )
        ideal = args.workers / (args.latency_ms / 1000)
        ratios, bare_ratios = [], []
        try:
            for repeat in range(args.repeats):
                output = os.path.join(scratch, f"out{repeat}.json")
                subprocess.run(
                    [
                        sys.executable,
                        os.path.join(REPO_ROOT, "construct_verifiable_medical_problems.py"),
                        "--data_path",
                        data_path,
                        "--api_url",
                        f"http://127.0.0.1:{port}/v1",
                        "--model_name",
                        "bench",
                        "--num_process",
                        str(args.workers),
                        "--output_path",
                        output,
                        "--output_dir",
                        os.path.join(scratch, f"p{repeat}"),
                    ],
                    check=True,
                    env=dict(os.environ, OPENAI_API_KEY="bench-key"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                summary = read_json(os.path.join(scratch, f"out{repeat}_summary.json"))
                assert summary["by_outcome"] == {"verifiable": args.items}, summary["by_outcome"]
                measured = summary["this_run"]["items_per_s"]
                bare = bare_client_rate(f"http://127.0.0.1:{port}/v1", args.workers, items)
                ratios.append(measured / ideal)
                bare_ratios.append(bare / ideal)
                print(
                    f"run {repeat + 1}: {measured:.1f} items/s ({summary['calls']} API calls); "
                    f"bare openai client, same threads and prompts: {bare:.1f} requests/s",
                    flush=True,
                )
        finally:
            stop_pid(teacher.pid)

    print(
        f"items: {args.items}, workers: {args.workers}, server latency: {args.latency_ms:.0f} ms, "
        f"ideal {ideal:.1f} items/s (workers / latency), median of {args.repeats} runs"
    )
    print(f"bare openai client: {statistics.median(bare_ratios):.3f} of ideal (the ceiling on this machine now)")
    print(f"throughput ratio: {statistics.median(ratios):.3f} (goal >= 0.85)")


if __name__ == "__main__":
    main()
