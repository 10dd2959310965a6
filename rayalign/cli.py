"""``rayalign``: one subcommand per working stage.

Errors in user input (spec, config, model sources) print one located line
and exit with status 2; nothing is started before the config validates.
"""

from __future__ import annotations

import argparse
import sys
import time

from rayalign.errors import RayalignError


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


def _cmd_config_validate(args) -> int:
    from rayalign.config import load_config
    from rayalign.spec import load_spec

    cfg = load_config(args.config, args.overrides)
    spec = load_spec(cfg.spec.path)
    print(f"ok: {args.config} (spec {spec.name} {spec.hash}); resource plan fits {cfg.cluster.num_cpus:g} CPUs, {cfg.cluster.num_gpus:g} GPUs")
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


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. --rl.lr=1e-6")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayalign",
        description="Deliberative Alignment on Ray: teach a model a written safety spec.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    spec = sub.add_parser("spec", help="validate or render the safety spec").add_subparsers(dest="action", required=True)
    p = spec.add_parser("validate", help="check a spec directory: ids, categories, style sections")
    p.add_argument("path", nargs="?", default="specs", help="spec directory (default: specs)")
    p.set_defaults(func=_cmd_spec_validate)
    p = spec.add_parser("show", help="render spec(category): all summaries + one category in full")
    p.add_argument("--path", default="specs", help="spec directory (default: specs)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--category", help="category id rendered in full (default: summaries only)")
    group.add_argument("--full", action="store_true", help="render every category in full")
    p.set_defaults(func=_cmd_spec_show)

    config = sub.add_parser("config", help="validate, show or explain configs").add_subparsers(dest="action", required=True)
    p = config.add_parser("validate", help="load a config: keys, types, ranges, paths, resource plan")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config_validate)
    p = config.add_parser("show", help="print the resolved config (file + overrides + defaults)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config_show)
    p = config.add_parser("explain", help="list every config key with its type, default and meaning")
    p.set_defaults(func=_cmd_config_explain)

    model = sub.add_parser("model", help="prepare model weights").add_subparsers(dest="action", required=True)
    p = model.add_parser("prepare", help="resolve a model source to a local directory (converting GGUF once)")
    p.add_argument("source", nargs="?", default="builtin:smollm2-135m-instruct")
    p.set_defaults(func=_cmd_model_prepare)

    p = sub.add_parser("chat", help="answer one chat message with a model on this machine (greedy)")
    p.add_argument("message")
    p.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model source")
    p.add_argument("--system", default="", help="optional system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(func=_cmd_chat)
    return parser


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
    try:
        return args.func(args)
    except RayalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


