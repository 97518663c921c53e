"""The `recommend` model's tensors on Triton, shared by the PyTriton server, the Python-backend model of a Triton model
repository and the client, so all three agree on names, types and the meaning of padding. Numpy only (no Triton,
no torch).

One request row (Triton adds the batch axis; the dynamic batcher merges rows of requests with equal shapes):

  inputs   user            INT64 [1]    a known user id, or -1 for none
           history         INT64 [-1]   item ids oldest first; -1 entries are padding (all -1 or empty: none)
           candidates      INT64 [-1]   explicit candidate ids; -1 padding; none: `candidate_mode` decides
           candidate_mode  BYTES [1]    "" (ids when given, else the first stage + LLM rescoring), "all",
                                        "sampled:N" (core.candidates.CandidateSpec, as the CLI's --candidates)
           top_k           INT64 [1]
  outputs  item_ids        INT64 [-1]   ranked; rows of a batch are padded with -1 to the longest
           scores          FP64  [-1]   the runtime's p(yes)/(p(yes)+p(no)); FP64 so answers equal the CLI's exactly
           titles          BYTES [-1]
           explanations    BYTES [-1]   each a JSON list of keywords

Exactly one of user / history per row, as on the CLI. Ids are non-negative (the catalog's and the datasets' are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..core.candidates import IDS, RESCORE, CandidateSpec
from ..core.errors import UserError

MODEL_NAME = "recommend"
NO_ID = -1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type  # numpy dtype; np.bytes_ for Triton BYTES
    shape: tuple[int, ...]  # without the batch axis; -1 is variable

    @property
    def triton_type(self) -> str:
        return {np.int64: "TYPE_INT64", np.float64: "TYPE_FP64", np.float32: "TYPE_FP32",
                np.bytes_: "TYPE_STRING"}[self.dtype]

    @property
    def wire_type(self) -> str:
        """The datatype name on the KServe v2 wire (tritonclient's InferInput)."""
        return {np.int64: "INT64", np.float64: "FP64", np.float32: "FP32", np.bytes_: "BYTES"}[self.dtype]


INPUTS = (TensorSpec("user", np.int64, (1,)), TensorSpec("history", np.int64, (-1,)),
          TensorSpec("candidates", np.int64, (-1,)), TensorSpec("candidate_mode", np.bytes_, (1,)),
          TensorSpec("top_k", np.int64, (1,)))
OUTPUTS = (TensorSpec("item_ids", np.int64, (-1,)), TensorSpec("scores", np.float64, (-1,)),
           TensorSpec("titles", np.bytes_, (-1,)), TensorSpec("explanations", np.bytes_, (-1,)))


def _ids(values) -> list[int]:
    return [int(v) for v in np.asarray(values, np.int64).reshape(-1) if v != NO_ID]


def _text(value) -> str:
    v = np.asarray(value).reshape(-1)
    if v.size == 0:
        return ""
    v = v[0]
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def decode_row(user, history, candidates, candidate_mode, top_k) -> dict:
    """One row's tensors -> keyword arguments of runtime.recommender.Recommender.recommend. `candidate_mode` takes
    what the CLI's --candidates takes (core.candidates.CandidateSpec: "", "all", "sampled:N" or ids, with the same
    error text); ids in the `candidates` tensor go with an empty mode."""
    users, hist, cands = _ids(user), _ids(history), _ids(candidates)
    if bool(users) == bool(hist):
        raise UserError("pass exactly one of user (>= 0) or history (item ids)")
    mode = _text(candidate_mode)
    spec = CandidateSpec.parse("" if mode.strip().lower() == IDS else mode, "candidate_mode")
    if cands:
        if spec.kind != RESCORE:
            raise UserError(f"candidate_mode {mode!r} takes no candidate ids", 'send ids with candidate_mode ""')
        spec = CandidateSpec.parse(cands, "candidates")
    k = _ids(top_k)
    return {"user": users[0] if users else None, "history": hist or None, "candidates": spec,
            "top_k": k[0] if k else 10}


def decode_batch(inputs: dict[str, np.ndarray]) -> list[dict]:
    """A request's batched tensors [B, ...] -> one keyword dict per row. Missing optional inputs take defaults."""
    b = len(inputs["user"]) if "user" in inputs else len(inputs["history"])
    empty = np.full((b, 1), NO_ID, np.int64)
    get = {s.name: inputs.get(s.name) for s in INPUTS}
    return [decode_row(empty[r] if get["user"] is None else get["user"][r],
                       empty[r] if get["history"] is None else get["history"][r],
                       empty[r] if get["candidates"] is None else get["candidates"][r],
                       b"" if get["candidate_mode"] is None else get["candidate_mode"][r],
                       np.array([10]) if get["top_k"] is None else get["top_k"][r]) for r in range(b)]


def encode_batch(results: list) -> dict[str, np.ndarray]:
    """Recommendation objects (runtime.recommender) -> the output tensors [B, K], padded to the longest row."""
    width = max((len(r.items) for r in results), default=0)
    ids = np.full((len(results), width), NO_ID, np.int64)
    scores = np.zeros((len(results), width), np.float64)
    titles = np.full((len(results), width), b"", dtype=object)
    expl = np.full((len(results), width), b"[]", dtype=object)
    for r, rec in enumerate(results):
        for j, it in enumerate(rec.items):
            ids[r, j], scores[r, j] = it.item_id, it.score
            titles[r, j] = it.title.encode("utf-8")
            expl[r, j] = json.dumps(it.explanation).encode("utf-8")
    return {"item_ids": ids, "scores": scores, "titles": titles.astype(np.bytes_),
            "explanations": expl.astype(np.bytes_)}


def request_arrays(user: int | None = None, history=None, candidates=None, candidate_mode: str = "",
                   top_k: int = 10) -> dict[str, np.ndarray]:
    """One row as batch-1 arrays (the client's side of decode_row)."""
    hist = [int(i) for i in history] if history else [NO_ID]
    cands = [int(i) for i in candidates] if candidates else [NO_ID]
    return {"user": np.array([[NO_ID if user is None else int(user)]], np.int64),
            "history": np.array([hist], np.int64), "candidates": np.array([cands], np.int64),
            "candidate_mode": np.array([[candidate_mode.encode("utf-8")]], dtype=np.bytes_),
            "top_k": np.array([[int(top_k)]], np.int64)}


def response_items(outputs: dict[str, np.ndarray], row: int = 0) -> list[dict]:
    """One row of output tensors -> [{rank, item_id, title, score, explanation}], padding dropped."""
    ids = np.asarray(outputs["item_ids"])[row]
    out = []
    for j, iid in enumerate(ids):
        if iid == NO_ID:
            break
        title = outputs["titles"][row][j]
        expl = outputs["explanations"][row][j]
        out.append({"rank": j + 1, "item_id": int(iid), "score": float(outputs["scores"][row][j]),
                    "title": title.decode("utf-8") if isinstance(title, bytes) else str(title),
                    "explanation": json.loads(expl.decode("utf-8") if isinstance(expl, bytes) else expl)})
    return out
