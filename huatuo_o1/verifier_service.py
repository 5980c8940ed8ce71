"""The verifier over HTTP: the app serve_verifier.py runs and the client RL_stage2.py --reward_url asks, one format:

    GET  /health -> {"status": "ok", "model": "<path>", "dtype": "float32", "batch_size": 8}
    POST /score     {"responses": [...], "references": [...]}
                    (optional: "correct", "incorrect", "malformed", "threshold"; the paper's 1.0, 0.1, 0.0, 0.4)
                 -> {"rewards": [...], "well_formed": [...], "p_correct": [...], "dtype": "float32"}

The server scores the pairs of a request exactly as VerifierReward does in a training process (the same template,
layout gate, batches of its --batch_size through the model, threshold and values): rewards in the verifier's dtype,
which JSON numbers hold exactly (float32 and bf16 values are doubles without rounding), so the client rebuilds the
very tensor. One request goes through the model at a time; the pairs of a request go in batches.

The client retries with exponential backoff through requests and urllib3's Retry (a connection refused or dropped, no
answer within the timeout, HTTP 5xx; /score is a pure function, safe to repeat), and after the last try raises one
InputError naming the URL: a run never trains on a reward nobody computed.
"""

import threading

import torch

from huatuo_o1.records import InputError
from huatuo_o1.verifier import PAPER_REWARD, RewardOutput, RewardValues, VerifierReward

BACKOFF_FACTOR_S = 0.5  # urllib3: no wait before the first retry, then 1 s, 2 s, 4 s, ...
RETRIED_STATUSES = (500, 502, 503, 504)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def create_app(reward: VerifierReward, model_name: str):
    """The FastAPI app serving `reward` (a VerifierReward on a loaded verifier)."""
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    class ScoreRequest(BaseModel):
        responses: list[str]
        references: list[str]
        correct: float = PAPER_REWARD.correct
        incorrect: float = PAPER_REWARD.incorrect
        malformed: float = PAPER_REWARD.malformed
        threshold: float = PAPER_REWARD.threshold

    app = FastAPI(title="HuatuoGPT-o1 verifier", description="The 2-label medical verifier as the RL reward.")
    one_at_a_time = threading.Lock()  # requests are answered on worker threads; the model takes one batch at a time
    dtype = dtype_name(next(reward.model.parameters()).dtype)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, "dtype": dtype, "batch_size": reward.batch_size}

    @app.post("/score")
    def score(request: ScoreRequest) -> dict:
        if len(request.responses) != len(request.references):
            raise HTTPException(
                422, f"{len(request.responses)} responses but {len(request.references)} references: one each"
            )
        values = RewardValues(request.correct, request.incorrect, request.malformed, request.threshold)
        with one_at_a_time:
            output = reward(request.responses, request.references, values)
        return {
            "rewards": output.rewards.tolist(),
            "well_formed": output.well_formed.tolist(),
            "p_correct": output.p_correct.tolist(),
            "dtype": dtype_name(output.rewards.dtype),
        }

    return app


class ServedVerifier:
    """VerifierReward's interface, (responses, references) -> RewardOutput, answered by a verifier server."""

    model = None  # no model in this process: nothing to place on a device

    def __init__(self, url: str, values: RewardValues = PAPER_REWARD, timeout: float = 300.0, retries: int = 3):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.url, self.values, self.timeout, self.tries = url.rstrip("/"), values, timeout, retries + 1
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=BACKOFF_FACTOR_S,
            status_forcelist=RETRIED_STATUSES,
            allowed_methods=None,  # every method: POST /score too
        )
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retry))

    def request(self, method: str, path: str, **kwargs) -> dict:
        """The server's JSON answer; InputError, in one line naming the URL, once every try failed."""
        import requests

        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise InputError(
                f"--reward_url {self.url}: no answer to {path} after {self.tries} tries ({self.why(error)}); is "
                "serve_verifier.py running there? The run stops rather than train on rewards nobody computed"
            ) from None
        if response.status_code >= 400:
            raise InputError(
                f"--reward_url {self.url}: {path} answered HTTP {response.status_code} ({response.text[:300]})"
            )
        try:
            return response.json()
        except ValueError:
            raise InputError(f"--reward_url {self.url}: {path} answered no JSON; is it serve_verifier.py?") from None

    def why(self, error: Exception) -> str:
        """What went wrong on the last try, in a few words."""
        import requests
        from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

        reason = error.args[0] if error.args else error
        reason = reason.reason if isinstance(reason, MaxRetryError) else reason
        if isinstance(error, requests.ReadTimeout) or isinstance(reason, ReadTimeoutError):
            return f"no answer within --reward_timeout {self.timeout:g} s"
        if isinstance(error, requests.exceptions.RetryError):
            return f"server errors ({', '.join(map(str, RETRIED_STATUSES))})"
        if isinstance(reason, NewConnectionError):
            return "connection refused"
        if isinstance(reason, ProtocolError):
            return "connection dropped"
        return " ".join(str(reason).split())[:200]

    def health(self) -> dict:
        return self.request("GET", "/health")

    def __call__(self, responses: list[str], references: list[str]) -> RewardOutput:
        values = self.values
        answer = self.request(
            "POST",
            "/score",
            json={"responses": list(responses), "references": list(references), "correct": values.correct,
                  "incorrect": values.incorrect, "malformed": values.malformed, "threshold": values.threshold},
        )  # fmt: skip
        lengths = {len(answer.get(key) or []) for key in ("rewards", "well_formed", "p_correct")}
        if lengths != {len(responses)} or answer.get("dtype") not in DTYPES:
            raise InputError(
                f"--reward_url {self.url}: /score answered {sorted(lengths)} values of dtype {answer.get('dtype')!r} "
                f"for {len(responses)} responses; is it serve_verifier.py?"
            )
        return RewardOutput(
            rewards=torch.tensor(answer["rewards"], dtype=DTYPES[answer["dtype"]]),
            well_formed=torch.tensor(answer["well_formed"], dtype=torch.bool),
            p_correct=torch.tensor(answer["p_correct"], dtype=torch.float32),
        )
