"""A `tritonclient` client for the `recommend` model (PyTriton server or a model repository's Python-backend model),
over HTTP or gRPC. Also a command-line entry (`python -m mmsrarec_edge.serving.client`) printing the CLI's JSON shape,
which the tests compare with `mmsrarec-edge recommend --json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ..core.candidates import IDS, CandidateSpec, parse_item_ids
from ..core.errors import UserError
from . import protocol


class RecommendClient:
    """One connection to a Triton server. Not shared between threads: make one per thread."""

    def __init__(self, url: str, protocol_name: str = "http", model: str = protocol.MODEL_NAME, timeout_s: float = 60):
        if protocol_name == "http":
            import tritonclient.http as tc

            self._client = tc.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        elif protocol_name == "grpc":
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be http or grpc, got {protocol_name!r}")
        self._tc, self.protocol, self.model = tc, protocol_name, model

    def wait_ready(self, timeout_s: float = 120) -> None:
        end = time.monotonic() + timeout_s
        while True:
            try:
                if self._client.is_server_ready() and self._client.is_model_ready(self.model):
                    return
            except Exception:  # noqa: BLE001 - connection refused while the server starts
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"model {self.model} not ready after {timeout_s:.0f} s")
            time.sleep(0.25)

    def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = {s.name: s for s in protocol.INPUTS}
        inputs = []
        for name, arr in arrays.items():
            inp = self._tc.InferInput(name, list(arr.shape), specs[name].wire_type)
            inp.set_data_from_numpy(arr.astype(object) if arr.dtype.kind == "S" else arr)
            inputs.append(inp)
        outputs = [self._tc.InferRequestedOutput(s.name) for s in protocol.OUTPUTS]
        res = self._client.infer(self.model, inputs, outputs=outputs)
        return {s.name: res.as_numpy(s.name) for s in protocol.OUTPUTS}

    def recommend(self, user: int | None = None, history=None, candidates=None, candidate_mode: str = "",
                  top_k: int = 10) -> list[dict]:
        """Ranked items: [{rank, item_id, title, score, explanation}]."""
        out = self.infer(protocol.request_arrays(user, history, candidates, candidate_mode, top_k))
        return protocol.response_items(out)

    def close(self) -> None:
        self._client.close()


def _request(a) -> tuple[list[int] | None, list[int] | None, str]:
    """(history ids, candidate ids, candidate mode) from the command line, parsed as the CLI parses them."""
    history = parse_item_ids(a.history, "--history") if a.history else None
    spec = CandidateSpec.parse(a.candidates, "--candidates")
    return history, list(spec.ids) if spec.kind == IDS else None, spec.mode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Call the `recommend` model of a Triton server; prints JSON.")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--model", default=protocol.MODEL_NAME)
    p.add_argument("--user", type=int)
    p.add_argument("--history")
    p.add_argument("--candidates", help="ID,ID,... | sampled:N | all (as `mmsrarec-edge recommend --candidates`)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for the model to be ready")
    p.add_argument("--requests", help="JSON file: a list of {user|history, candidates, candidate_mode, top_k}; "
                                      "prints a list of {items} or {error}")
    a = p.parse_args(argv)
    try:
        history, cands, mode = _request(a)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = RecommendClient(a.url, a.protocol, a.model)
    if a.wait:
        client.wait_ready(a.wait)
    if a.requests:
        answers = []
        with open(a.requests, encoding="utf-8") as f:
            for req in json.load(f):
                try:
                    answers.append({"items": client.recommend(**req)})
                except Exception as exc:  # noqa: BLE001 - the server's error message is the answer
                    answers.append({"error": str(exc)})
        json.dump(answers, sys.stdout, indent=2)
        sys.stdout.write("\n")
        client.close()
        return 0
    items = client.recommend(a.user, history, cands, mode, a.top_k)
    json.dump({"items": items}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
