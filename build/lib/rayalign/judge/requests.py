"""Reading judge requests from JSONL, for ``rayalign judge score``.

Each line is either a full ``JudgeRequest`` record (``{"prompt": {...}, "answer": ...}``)
or the short form ``{"prompt": "text", "answer": "...", "reasoning": "...",
"category": "...", "expected": "...", "id": "..."}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rayalign.errors import LocatedError
from rayalign.types import BEHAVIORS, JudgeRequest, Message, Prompt, from_dict


class RequestFileError(LocatedError):
    pass


def read_requests(path: str | Path) -> list[JudgeRequest]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RequestFileError(f"invalid JSON: {e.msg}", file=str(path), line=n) from None
        out.append(_request(row, str(path), n))
    return out


def _request(row: dict, file: str, line: int) -> JudgeRequest:
    if not isinstance(row, dict) or "answer" not in row or "prompt" not in row:
        raise RequestFileError("each line needs prompt and answer", file=file, line=line)
    if isinstance(row["prompt"], dict):
        return from_dict(JudgeRequest, row)
    expected = row.get("expected") or None
    if expected is not None and expected not in BEHAVIORS:
        raise RequestFileError(f"must be one of {', '.join(BEHAVIORS)}", file=file, line=line, field="expected")
    rid = str(row.get("id", line))
    prompt = Prompt(
        id=rid, messages=(Message("user", str(row["prompt"])),), category=row.get("category") or None, expected=expected
    )
    return JudgeRequest(prompt=prompt, answer=str(row["answer"]), reasoning=row.get("reasoning"), request_id=rid)
