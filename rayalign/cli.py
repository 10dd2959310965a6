"""``rayalign``: one subcommand per working stage.

Errors in user input (spec, config, model sources) print one located line
and exit with status 2; nothing is started before the config validates.
"""

from __future__ import annotations

import argparse
import sys
import time

from rayalign.errors import RayalignError
from rayalign.judge.commands import add_judge_commands


def _cmd_spec_validate(args) -> int:
    from rayalign.spec import load_spec

    spec = load_spec(args.path)
    rules = sum(len(c.rules) for c in spec.categories)
    print(
        f"ok: {spec.name} {spec.version} ({spec.hash}): {len(spec.categories)} categories, "
        f"{rules} rules, {len(spec.rule_ids())} citable ids"
    )
    return 0


def _cmd_spec_show(args) -> int:
    from rayalign.spec import load_spec, render_for, render_full

    spec = load_spec(args.path)
    sys.stdout.write(render_full(spec) if args.full else render_for(spec, args.category))
    return 0


def _cmd_spec_diff(args) -> int:
    from rayalign.specdiff import diff_sources, format_diff

    diff = diff_sources(args.old, args.new)
    sys.stdout.write(format_diff(diff, args.old, args.new))
    return 1 if diff.changed else 0  # as git diff --exit-code; errors exit 2 in main


def _cmd_spec_coverage(args) -> int:
    from rayalign.coverage import write_coverage
    from rayalign.spec import load_spec

    print(write_coverage(args.run_dir, load_spec(args.path)))
    return 0


def _cmd_config_validate(args) -> int:
    from rayalign.config import load_config
    from rayalign.spec import load_spec

    cfg = load_config(args.config, args.overrides)
    spec = load_spec(cfg.spec.path)
    print(
        f"ok: {args.config} (spec {spec.name} {spec.hash}); resource plan fits {cfg.cluster.num_cpus:g} CPUs, {cfg.cluster.num_gpus:g} GPUs"
    )
    return 0


def _cmd_config_show(args) -> int:
    import yaml

    from rayalign.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


def _cmd_config_explain(args) -> int:
    from rayalign.config import explain

    print("\n".join(explain()))
    return 0


def _cmd_model_prepare(args) -> int:
    from rayalign.models import resolve_model

    start = time.perf_counter()
    path = resolve_model(args.source)
    print(f"{args.source} -> {path} ({time.perf_counter() - start:.1f}s)")
    return 0


def _cmd_chat(args) -> int:
    import torch

    from rayalign.models import chat_prompt, load_model

    model, tokenizer = load_model(args.model, threads=args.threads)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}
    ]
    inputs = tokenizer(chat_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    print(tokenizer.decode(new, skip_special_tokens=True).strip())
    print(f"[{len(new)} tokens in {time.perf_counter() - start:.1f}s]", file=sys.stderr)
    return 0


def _cmd_generate(args) -> int:
    from rayalign.config import load_config
    from rayalign.pipeline import generate_stage

    print(generate_stage(load_config(args.config, args.overrides), full=args.full).block())
    return 0


def _cmd_sft(args) -> int:
    from rayalign.config import load_config
    from rayalign.pipeline import sft_stage

    print(sft_stage(load_config(args.config, args.overrides), data=args.data, restart=args.restart).block())
    return 0


def _cmd_rl(args) -> int:
    from rayalign.config import load_config
    from rayalign.pipeline import rl_stage

    print(rl_stage(load_config(args.config, args.overrides), restart=args.restart).block())
    return 0


def _cmd_eval(args) -> int:
    from rayalign.config import load_config
    from rayalign.pipeline import eval_stage, eval_targets

    overrides = [*args.overrides, *(["--eval.judge=false"] if args.judge == "none" else [])]
    cfg = load_config(args.config, overrides)
    targets = eval_targets(cfg, args.checkpoints, args.spec_in_context)
    summary = eval_stage(
        cfg, targets, benchmarks=args.benchmark, limit=args.limit, out=args.out, enforce_format=args.enforce_format
    )
    print(summary.block())
    return 0


def _cmd_probe(args) -> int:
    from rayalign.config import load_config
    from rayalign.eval.probe import report_head, run_probe, write_probe
    from rayalign.runs import RunLayout

    cfg = load_config(args.config, args.overrides)
    result = run_probe(cfg, model=args.model, benchmarks=args.benchmark, limit=args.limit)
    out = write_probe(result, args.out or RunLayout.of(cfg).root / "probe")
    print("\n".join(report_head(result)))
    print(f"table: {out / 'probe.md'}")
    return 0


def _cmd_run(args) -> int:
    from rayalign.pipeline import STAGES, parse_stages, run_pipeline

    start = time.perf_counter()
    stages = parse_stages(args.stages) if args.stages else STAGES
    done = run_pipeline(args.config, args.overrides, stages, force=args.force)
    ran = ", ".join(f"{s.stage} {s.seconds:.0f}s" if s.seconds else f"{s.stage} (skipped)" for s in done)
    print(f"[run] {len(done)} stages done in {time.perf_counter() - start:.0f}s: {ran}")
    return 0


def _cmd_cluster_check(args) -> int:
    from rayalign.clusterfile import capacity, check_config_fits, validate_cluster_file
    from rayalign.config import load_config

    validate_cluster_file(args.file)
    cap = check_config_fits(load_config(args.config), args.file) if args.config else capacity(args.file)
    resources = ", ".join(f"{k}: {v:g}" for k, v in sorted(cap.resources.items())) or "none"
    print(f"ok: {args.file} offers at most {cap.cpus:g} CPUs, {cap.gpus:g} GPUs, custom resources: {resources}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. --rl.lr=1e-6")
    _add_verbose(p)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not undo `rayalign -v <command>`.
    help = "Ray, vLLM, Serve and DeepSpeed output on the console too (default: <run_dir>/logs/)"
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayalign",
        description="Deliberative Alignment on Ray: teach a model a written safety spec.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="worker output on the console (any command)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_spec, _add_config, _add_model, _add_stages, _add_run, _add_eval):
        add(sub)
    add_judge_commands(sub, _add_config_args)
    _add_tools(sub)
    return parser


def _add_spec(sub) -> None:
    """``rayalign spec validate|show|diff|coverage``."""
    spec = sub.add_parser("spec", help="validate, render, diff the safety spec; rule coverage of a run").add_subparsers(
        dest="action", required=True
    )
    p = spec.add_parser("validate", help="check a spec directory: ids, categories, style sections")
    p.add_argument("path", nargs="?", default="builtin:default", help="spec directory (default: the packaged spec)")
    p.set_defaults(func=_cmd_spec_validate)
    p = spec.add_parser("show", help="render spec(category): all summaries + one category in full")
    p.add_argument("--path", default="builtin:default", help="spec directory (default: the packaged spec)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--category", help="category id rendered in full (default: summaries only)")
    group.add_argument("--full", action="store_true", help="render every category in full")
    p.set_defaults(func=_cmd_spec_show)
    p = spec.add_parser("diff", help="rules added/removed/changed, spec(category) changed; exit 0 same, 1 changed")
    p.add_argument("old", help="spec directory or git revision REV:PATH, e.g. HEAD~1:specs")
    p.add_argument(
        "new", nargs="?", default="builtin:default", help="spec directory or REV:PATH (default: the packaged spec)"
    )
    p.set_defaults(func=_cmd_spec_diff)
    p = spec.add_parser("coverage", help="rule citations in a run's SFT data, verdicts, eval failures; heat map")
    p.add_argument("run_dir", help="a run directory (tracking.run_dir)")
    p.add_argument("--path", default="builtin:default", help="spec directory (default: the packaged spec)")
    p.set_defaults(func=_cmd_spec_coverage)


def _add_config(sub) -> None:
    """``rayalign config validate|show|explain``."""
    config = sub.add_parser("config", help="validate, show or explain configs").add_subparsers(
        dest="action", required=True
    )
    p = config.add_parser("validate", help="load a config: keys, types, ranges, paths, resource plan")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config_validate)
    p = config.add_parser("show", help="print the resolved config (file + overrides + defaults)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config_show)
    p = config.add_parser("explain", help="list every config key with its type, default and meaning")
    p.set_defaults(func=_cmd_config_explain)


def _add_model(sub) -> None:
    """``rayalign model prepare``."""
    model = sub.add_parser("model", help="prepare model weights").add_subparsers(dest="action", required=True)
    p = model.add_parser("prepare", help="resolve a model source to a local directory (converting GGUF once)")
    p.add_argument("source", nargs="?", default="builtin:smollm2-135m-instruct")
    p.set_defaults(func=_cmd_model_prepare)


def _add_stages(sub) -> None:
    """``rayalign generate``, ``sft`` and ``rl``: the training stages."""
    p = sub.add_parser("generate", help="stage 1: spec-conditioned samples, judge filtering, SFT data (resumable)")
    _add_config_args(p)
    p.add_argument("--full", action="store_true", help="regenerate every prompt, not only stale ones")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "sft", help="stage 1 training: fine-tune on the filtered data (Ray Train, DeepSpeed or DDP; resumes)"
    )
    _add_config_args(p)
    p.add_argument("--data", help="SFT JSONL (default: <run_dir>/stage1/sft.jsonl)")
    p.add_argument("--restart", action="store_true", help="ignore earlier checkpoints and start over")
    p.set_defaults(func=_cmd_sft)

    p = sub.add_parser(
        "rl", help="stage 2: RL against the judge reward (samplers, Serve judge, Ray Train learners; resumes)"
    )
    _add_config_args(p)
    p.add_argument("--restart", action="store_true", help="ignore earlier checkpoints and start over")
    p.set_defaults(func=_cmd_rl)


def _add_run(sub) -> None:
    """``rayalign run``: the pipeline."""
    help = "generate, sft, rl, eval in order, each resuming; finished stages skipped; --rl:judge.k=1 scopes to rl"
    p = sub.add_parser("run", help=help, description=help)
    _add_config_args(p)
    p.add_argument("--stages", help="comma-separated subset of generate,sft,rl,eval (default: all)")
    p.add_argument("--force", action="store_true", help="run finished stages again (each still resumes)")
    p.set_defaults(func=_cmd_run)


def _add_eval(sub) -> None:
    """``rayalign eval``."""
    p = sub.add_parser(
        "eval", help="answer benchmarks with several checkpoints; judge, score, report with CIs and plots"
    )
    _add_config_args(p)
    p.add_argument(
        "--checkpoints",
        help="name=source,... e.g. base=builtin:smollm2-135m-instruct,sft=runs/x/sft/model; "
        "name+spec adds that target with spec(category) in its prompt (default: eval.targets)",
    )
    p.add_argument(
        "--spec-in-context",
        metavar="NAMES",
        help="comma-separated targets to also evaluate with spec(category) in the prompt (the no-training baseline; "
        "default: eval.spec_in_context without --checkpoints, none with)",
    )
    p.add_argument("--benchmark", action="append", default=[], help="name:path, repeatable (default: eval.benchmarks)")
    p.add_argument("--limit", type=int, help="at most N prompts per benchmark, round-robin (default: eval.limit)")
    judge = "none: string-match scoring only, no judge started (a quick look); config (default): the config's judge"
    p.add_argument("--judge", choices=("config", "none"), default="config", help=judge)
    p.add_argument("--out", help="output directory (default: <tracking.run_dir>/eval)")
    p.add_argument("--enforce-format", action="store_true", help="constrain decoding to the <think> format")
    p.set_defaults(func=_cmd_eval)

    help = "fit a linear probe on the model's features of the training prompts; read it on the eval's (minutes)"
    p = sub.add_parser("probe", help=help, description=help)
    _add_config_args(p)
    p.add_argument("--model", help="model source (default: model.policy)")
    p.add_argument("--benchmark", action="append", default=[], help="name:path, repeatable (default: eval.benchmarks)")
    p.add_argument("--limit", type=int, help="at most N prompts per benchmark, round-robin (default: eval.limit)")
    p.add_argument("--out", help="output directory (default: <tracking.run_dir>/probe)")
    p.set_defaults(func=_cmd_probe)


def _add_tools(sub) -> None:
    """``rayalign cluster check`` and ``rayalign chat``."""
    cluster = sub.add_parser("cluster", help="check cluster files offline").add_subparsers(dest="action", required=True)
    p = cluster.add_parser(
        "check", help="validate a launcher YAML or KubeRay manifest; with --config, check the config fits it"
    )
    p.add_argument("file")
    p.add_argument("--config", help="a rayalign config whose resource plan must fit the cluster")
    p.set_defaults(func=_cmd_cluster_check)

    p = sub.add_parser("chat", help="answer one chat message with a model on this machine (greedy)")
    p.add_argument("message")
    p.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model source")
    p.add_argument("--system", default="", help="optional system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(func=_cmd_chat)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Dotted overrides look like options to argparse: split them off first.
    overrides = [a for a in argv if a.startswith("--") and "." in a.split("=", 1)[0]]
    rest = [a for a in argv if a not in overrides]
    args = build_parser().parse_args(rest)
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
    elif overrides:
        build_parser().error(f"unexpected options: {' '.join(overrides)}")
    console = None
    try:
        from rayalign.cluster import console_for

        _resolve_builtin_specs(args)
        # Quiet unless -v: worker output goes to <run_dir>/logs (rayalign.cluster).
        console = console_for(getattr(args, "config", None), getattr(args, "overrides", None), args.verbose)
        return args.func(args)
    except RayalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:
        if console is not None and console.failure_hint():
            print(console.failure_hint(), file=sys.stderr)
        raise


def _resolve_builtin_specs(args) -> None:
    """``builtin:default`` as a spec command's directory: the spec inside the package (rayalign.config.spec_dir)."""
    from rayalign.config import spec_dir

    for name in ("path", "old", "new") if args.command == "spec" else ():
        if str(getattr(args, name, "")).startswith("builtin:"):
            setattr(args, name, str(spec_dir(getattr(args, name))))


if __name__ == "__main__":
    sys.exit(main())
