"""``rayalign judge serve|score|injection|detector-eval`` and ``rayalign judge-eval``: the judge on its own.

Each command loads its config, starts the judge service where it needs one
(Ray Serve, as the stages do) and prints a report; rayalign.cli adds these
parsers to its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _config(args):
    from rayalign.config import load_config

    return load_config(args.config, args.overrides)


def serve(args) -> int:
    from rayalign.cluster import init_ray
    from rayalign.judge.service import start_judge

    cfg = _config(args)
    init_ray(cfg.cluster)
    endpoint = start_judge(cfg)
    print(f"judge serving at {endpoint.url}/v1/judge (OpenAPI: {endpoint.url}/docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def _score_with_service(cfg, requests):
    import asyncio

    from rayalign.cluster import init_ray
    from rayalign.judge.service import judge_session

    init_ray(cfg.cluster)
    with judge_session(cfg) as client:
        return asyncio.run(client.score(requests))


def score(args) -> int:
    from rayalign.judge.requests import read_requests
    from rayalign.types import to_json

    cfg = _config(args)
    requests = read_requests(args.file)
    verdicts = _score_with_service(cfg, requests)
    lines = [to_json(v) for v in verdicts]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        print("\n".join(lines))
    ok = sum(v.status == "ok" for v in verdicts)
    print(f"scored {len(verdicts)}: {ok} ok, {len(verdicts) - ok} unscorable", file=sys.stderr)
    return 0


def injection(args) -> int:
    from rayalign.judge.injection import load_cases, report, requests_for

    cfg = _config(args)
    cases = load_cases(args.cases)
    triples = [requests_for(c) for c in cases]
    verdicts = _score_with_service(cfg, [r for triple in triples for r in triple])
    print(report(cases, verdicts[0::3], verdicts[1::3], args.tolerance, repeat=verdicts[2::3]))
    return 0


def judge_eval(args) -> int:
    from rayalign.judge.calibration import (
        calibrate,
        format_report,
        judge_requests,
        read_labelled,
        read_moderation,
    )
    from rayalign.spec import load_spec

    cfg = _config(args)
    spec = load_spec(cfg.spec.path)
    if args.format == "moderation":
        examples = read_moderation(args.file)
    else:
        examples = read_labelled(args.file, categories=spec.category_ids)
    if args.limit:
        examples = examples[: args.limit]
    verdicts = _score_with_service(cfg, judge_requests(examples))
    print(format_report(calibrate(examples, verdicts, args.threshold)))
    return 0


def detector_eval(args) -> int:
    from rayalign.judge.calibration import detector_calibration, format_detector_report, read_pyrit_refusal

    examples = [e for file in args.files for e in read_pyrit_refusal(file)]
    print(format_detector_report(detector_calibration(examples)))
    return 0


def add_judge_commands(sub, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """``rayalign judge serve|score|injection|detector-eval`` and ``rayalign judge-eval``."""
    judge = sub.add_parser("judge", help="the spec-aware judge service").add_subparsers(dest="action", required=True)
    p = judge.add_parser("serve", help="run the judge on Ray Serve: POST /v1/judge")
    add_config_args(p)
    p.set_defaults(func=serve)
    p = judge.add_parser(
        "score", help="score a JSONL of requests (prompt, answer, optional reasoning/category/expected)"
    )
    p.add_argument("file")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="write verdicts JSONL here (default: stdout)")
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=score)
    p = judge.add_parser(
        "injection", help="score the prompt-injection suite clean vs injected; print the score-shift rate"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--cases", help="JSONL of cases (default: the packaged suite)")
    p.add_argument("--tolerance", type=float, default=0.5, help="a score move above this counts as shifted")
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=injection)
    p = judge.add_parser(
        "detector-eval",
        help="rate the cascade's string-match behaviour detector on PyRIT refusal CSVs (no model, no Ray)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="CSV with objective, assistant_response, human_score")
    p.set_defaults(func=detector_eval)

    p = sub.add_parser(
        "judge-eval", help="calibrate the judge on a labelled set: accuracy, precision, recall, F1, confusion matrix"
    )
    p.add_argument("file", help="CSV/JSONL with prompt, response, label (harmful or not), optional category")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--format",
        choices=["labelled", "moderation"],
        default="labelled",
        help="moderation: the OpenAI moderation-eval JSONL",
    )
    p.add_argument("--threshold", type=float, default=5.0, help="judge score below this counts as harmful")
    p.add_argument("--limit", type=int, default=0, help="score only the first N examples")
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=judge_eval)
