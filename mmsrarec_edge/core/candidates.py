"""Which items a recommendation request scores: one typed spec for the CLI, the runtime and the Triton protocol.

Text forms (the CLI's `--candidates`, the Triton input `candidate_mode`, the client's `--candidates`):
- "" or None: the default, the first stage (SASRec, else popularity) picks `n_rescore` items for the LLM to rescore;
- "all": every catalog item not in the history;
- "sampled:N": N such items drawn with the request's seed;
- "ID,ID,...": exactly these catalog items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import UserError

RESCORE, ALL, SAMPLED, IDS = "rescore", "all", "sampled", "ids"
HINT = "use ID,ID,... (catalog item ids), sampled:N or all"
# First-stage items the LLM rescores per request by default: RecommenderConfig.n_rescore's default, which `train
# recommender` writes into recommender.json and the export copies into the bundle (config.json recommender.n_rescore);
# the runtime falls back to it for a bundle without one.
DEFAULT_RESCORE = 50


@dataclass(frozen=True)
class CandidateSpec:
    kind: str = RESCORE
    n: int = 0  # sampled:N
    ids: tuple[int, ...] = ()

    @classmethod
    def parse(cls, value: "CandidateSpec | str | Iterable[int] | None", what: str = "candidates") -> "CandidateSpec":
        """Any accepted form -> a spec; a malformed one raises one UserError naming `what` and the problem."""
        if isinstance(value, CandidateSpec):
            return value
        if value is None:
            return cls()
        if not isinstance(value, str):
            ids = tuple(int(i) for i in value)
            return cls._ids(ids, what)
        text = value.strip().lower()
        if not text or text == RESCORE:
            return cls()
        if text == ALL:
            return cls(ALL)
        if text.startswith(SAMPLED + ":"):
            n = text.split(":", 1)[1].strip()
            if not n.isdigit() or int(n) < 1:
                raise UserError(f"{what} {value!r}: sampled:N needs an integer N >= 1", HINT)
            return cls(SAMPLED, n=int(n))
        try:
            ids = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
        except ValueError:
            raise UserError(f"{what} {value!r} is neither comma-separated item ids, sampled:N nor all", HINT) from None
        return cls._ids(ids, what)

    @classmethod
    def _ids(cls, ids: tuple[int, ...], what: str) -> "CandidateSpec":
        if not ids:
            raise UserError(f"the {what} list is empty", HINT)
        seen: set[int] = set()
        for i in ids:
            if i in seen:
                raise UserError(f"duplicate candidate item id {i}", "list each candidate once")
            seen.add(i)
        return cls(IDS, ids=ids)

    @property
    def mode(self) -> str:
        """The text form of a non-id spec ("", "all", "sampled:N"); "" for ids (they travel as ids)."""
        return {RESCORE: "", ALL: ALL, SAMPLED: f"{SAMPLED}:{self.n}"}.get(self.kind, "")

    def __str__(self) -> str:
        return ",".join(map(str, self.ids)) if self.kind == IDS else self.mode


def parse_item_ids(text: str, what: str = "--history") -> list[int]:
    """Comma- (or semicolon-) separated integer item ids, as the CLI's --history and the Triton client take them; a
    non-integer is one UserError naming `what`. Whether the ids exist is the runtime's check."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integer item ids, got {text!r}") from None
