"""The `papo` command line: one entry point, one subcommand per job.

papo demo            generate + score on the embedded model (the warm start) and the synthetic data, offline
papo tiny-model      build a tiny random-weight VLM of a real architecture
papo synthetic-data  build the synthetic perception dataset (official schema)
papo check-data      validate a dataset in the official schema and report bad rows
papo push            push an adapter, eval predictions or the comparison Space to the Hub (papo.hub)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields as dataclass_fields
from pathlib import Path

from papo import __version__

DEFAULT_OUTPUT = Path("outputs")


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from papo.tiny import save_tiny_vlm

    output = args.output_dir or DEFAULT_OUTPUT / f"tiny-{args.arch}"
    path = save_tiny_vlm(output, args.arch, seed=args.seed, overwrite=args.overwrite)
    print(f"Tiny {args.arch} model and processor saved to {path}")
    return 0


def _cmd_synthetic_data(args: argparse.Namespace) -> int:
    from papo.data.synthetic import save_synthetic_dataset

    output = args.output_dir or DEFAULT_OUTPUT / "synthetic"
    dataset = save_synthetic_dataset(
        output,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        image_size=args.image_size,
        tasks=args.tasks,
    )
    sizes = ", ".join(f"{split}: {len(ds)}" for split, ds in dataset.items())
    print(f"Synthetic perception dataset ({sizes}) saved to {output}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    """Validate a training set, or an eval set in any layout `papo eval --data` accepts (same loader)."""
    from papo.data.loading import load_training_dataset, prepare_papo_dataset
    from papo.evaluation.data import is_sharegpt_source, load_eval_sets, papo_eval_root

    if is_sharegpt_source(args.source) or papo_eval_root(args.source) is not None:
        checked = []
        for eval_set in load_eval_sets(args.source, args.split, args.image_dir):
            rows = eval_set.dataset
            if args.max_samples is not None:
                rows = rows.select(range(min(args.max_samples, len(rows))))
            dataset, report = prepare_papo_dataset(rows, skip_invalid=args.skip_invalid, show_progress=False)
            checked.append((eval_set.name, dataset, report))
    else:
        dataset, report = load_training_dataset(
            args.source, args.split, skip_invalid=args.skip_invalid, max_samples=args.max_samples
        )
        checked = [(f"{args.source} [{args.split}]", dataset, report)]
    for name, _rows, report in checked:
        print(f"{name}: {report}")
        for line in report.first_errors:
            print(f"  {line}")
    print(json.dumps(checked[0][1][0]["prompt"], indent=1)[:2000])
    return 0


def _cmd_train(argv: list[str]) -> int:
    from papo.train import parse_train_args, train

    script_args, training_args, model_args = parse_train_args(argv)
    trainer = train(script_args, training_args, model_args)
    if trainer is None:  # --resume on a finished run: said so, changed nothing
        return 0
    from papo.console import run_summary

    print(run_summary(trainer.args.output_dir))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from papo.embedded import embedded_dataset, embedded_model
    from papo.evaluation.run import EvalConfig, run_eval

    config = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclass_fields(EvalConfig)})
    model = args.model or str(embedded_model(args.embedded_dir))
    sources = args.data or [str(embedded_dataset(args.embedded_dir, seed=args.seed))]
    result = run_eval(
        model,
        sources,
        args.output_dir,
        config,
        adapter=args.adapter,
        label=args.label,
        split=args.split,
        image_dir=args.image_dir,
        compare=args.compare,
        dtype=args.dtype,
        device=args.device,
        vision_dtype=args.vision_dtype,
        benchmarks=args.benchmarks.split(",") if args.benchmarks else None,
        cache_dir=args.cache_dir,
        seed_runs=args.seed_runs,
    )
    print(Path(result["paths"]["markdown"]).read_text() if "markdown" in result["paths"] else "")
    for name, path in result["paths"].items():
        print(f"{name}: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Build the embedded defaults if absent, then generate and score answers on the synthetic test split.

    The Qwen2.5-VL default is the warm start (`papo.warm_start`), which answers in the official format and
    solves some items; `--arch qwen3_vl` uses a tiny random model whose reward is ~0. Either way this shows
    the whole pipeline (model, processor, data, prompt format, batched generation, the official reward)
    working offline.
    """
    from statistics import mean

    from papo.data.loading import load_training_dataset
    from papo.embedded import embedded_dataset, embedded_model
    from papo.generation import generate
    from papo.modeling import load_vlm
    from papo.rewards import papo_score

    root = Path(args.output_dir)
    model_dir = embedded_model(root, args.arch, seed=args.seed)
    data_dir = embedded_dataset(root, seed=args.seed)

    dataset, report = load_training_dataset(data_dir, "test", max_samples=args.num_samples)
    print(f"Loaded {report} from {data_dir} [test]")
    if args.arch == "qwen2_5_vl":  # embedded_model gives the warm start (shipped, or trained once)
        kind = "the embedded warm start: a ~2.4M-parameter Qwen2.5-VL trained to read handwritten digits"
    else:
        kind = f"a tiny random-weight {args.arch} model: it has learnt nothing, so its reward is ~0"
    print(f"Model: {model_dir} ({kind})")
    model, processor = load_vlm(model_dir)
    completions = generate(
        model,
        processor,
        dataset["prompt"],
        dataset["images"],
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    scores = [papo_score(c, a) for c, a in zip(completions, dataset["answer"], strict=True)]
    samples = root / "demo_samples.jsonl"
    with open(samples, "w") as f:
        for row, completion, score in zip(dataset, completions, scores, strict=True):
            record = {"id": row["id"], "task": row["task"], "answer": row["answer"], "completion": completion}
            f.write(json.dumps({**record, **score}) + "\n")
    print(
        f"{len(scores)} answers: reward {mean(s['overall'] for s in scores):.3f}, "
        f"accuracy {mean(s['accuracy'] for s in scores):.3f}, format {mean(s['format'] for s in scores):.3f}"
    )
    print(f"Samples written to {samples}")
    return 0


def _parse_bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_dataclass_options(parser: argparse.ArgumentParser, config_class) -> None:
    """``--<field>`` for every field of a config dataclass (type, default, help, choices from the class):
    one definition of each setting, as `papo train` gets from TRL's parser."""
    import typing

    hints = typing.get_type_hints(config_class)
    for f in dataclass_fields(config_class):
        kind = hints[f.name]
        optional = type(None) in typing.get_args(kind)
        if optional:
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        convert = _parse_bool if kind is bool else kind
        names = [f"--{f.name}", *([f.metadata["alias"]] if "alias" in f.metadata else [])]
        help_text = f.metadata.get("help", "")
        parser.add_argument(
            *names,
            dest=f.name,
            type=convert,
            default=f.default,
            choices=f.metadata.get("choices"),
            metavar="{true,false}" if kind is bool else None,
            help=f"{help_text} (default: {f.default})".strip(),
        )


def build_push_parser() -> argparse.ArgumentParser:
    """`papo push adapter|eval|space`: the options of the three pushes (papo.hub)."""
    parser = argparse.ArgumentParser(
        prog="papo push",
        description="Push a PAPO adapter, eval predictions or the comparison Space to the Hugging Face Hub. "
        "The token comes from "
        "HF_TOKEN or `hf auth login` (never from the command line).",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    adapter = sub.add_parser("adapter", help="push a LoRA/QLoRA adapter directory as a model repo")
    adapter.add_argument("adapter_dir", help="the adapter folder written by `papo train` (its output_dir)")
    adapter.add_argument("--repo-id", required=True, help="e.g. your-name/papo-g-qwen2.5vl-3b-lora")
    adapter.add_argument("--base-model", default=None, help="Hub id of the base model")
    adapter.add_argument("--eval-results", default=None, help="results.json of `papo eval` for the card")
    adapter.add_argument("--dataset", action="append", default=None, help="training dataset id (repeatable)")
    adapter.add_argument("--license", default="mit")
    evals = sub.add_parser("eval", help="push a `papo eval` output directory as a dataset repo")
    evals.add_argument("eval_dir", help="the output_dir of `papo eval`")
    evals.add_argument("--repo-id", required=True, help="e.g. your-name/papo-eval-predictions")
    evals.add_argument("--model", default=None)
    evals.add_argument("--adapter", default=None)
    evals.add_argument("--license", default="mit")
    space = sub.add_parser(
        "space",
        help="deploy the comparison Space (baseline vs base + adapter, per-token perception KL) as a Gradio Space",
    )
    space.add_argument("--repo-id", required=True, help="the Space, e.g. your-name/papo-demo")
    space.add_argument("--base-model", default=None, help="Hub id of the base model (default: the adapter's)")
    space.add_argument(
        "--adapter",
        default=None,
        help="Hub id of the PAPO adapter (papo push adapter); none: the embedded demo pair",
    )
    space.add_argument(
        "--eval-dataset",
        default=None,
        help="the adapter's eval predictions (papo push eval): the examples are its questions where the models "
        "differ most",
    )
    space.add_argument(
        "--baseline-eval-dataset",
        default=None,
        help="the base model's eval predictions: with --eval-dataset, 'differ most' = per-question accuracy",
    )
    space.add_argument(
        "--hardware",
        default=None,
        help="request this hardware, e.g. zero-a10g, t4-small (omitted: left as it is)",
    )
    space.add_argument(
        "--load-in-4bit", action="store_true", help="set PAPO_LOAD_IN_4BIT (QLoRA-style NF4 base)"
    )
    space.add_argument(
        "--dtype", default=None, help="set PAPO_DTYPE: bfloat16, float16, float32 (default auto)"
    )
    space.add_argument("--device", default=None, help="set PAPO_DEVICE (default: cuda if available)")
    for p in (adapter, evals, space):
        p.add_argument("--private", action="store_true", help="create the repo private")
        p.add_argument("--dry-run", default=None, metavar="DIR", help="only build the repo folder in DIR")
        p.add_argument("--commit-message", default=None)
        p.add_argument("--retries", type=int, default=3)
        p.add_argument("--retry-base-delay", type=float, default=2.0)
    return parser


def _cmd_push(argv: list[str]) -> int:
    """`papo push ...`: build the repo folder (--dry-run DIR) or push it; exit code 1 on a refused push."""
    from papo.hub import HubPushError, push_adapter, push_eval, push_space

    args = build_push_parser().parse_args(argv)
    common = dict(private=args.private, dry_run_dir=args.dry_run, retries=args.retries)
    common["retry_base_delay"] = args.retry_base_delay
    if args.commit_message:
        common["commit_message"] = args.commit_message
    try:
        if args.what == "adapter":
            result = push_adapter(
                args.adapter_dir,
                args.repo_id,
                base_model=args.base_model,
                eval_results=args.eval_results,
                datasets=args.dataset,
                license=args.license,
                **common,
            )
        elif args.what == "space":
            pushed = push_space(
                args.repo_id,
                base_model=args.base_model,
                adapter=args.adapter,
                eval_dataset=args.eval_dataset,
                baseline_eval_dataset=args.baseline_eval_dataset,
                hardware=args.hardware,
                load_in_4bit=args.load_in_4bit,
                dtype=args.dtype,
                device=args.device,
                **common,
            )
            result = pushed.get("folder") or pushed["url"]
            settings = [f"{k}={v}" for k, v in pushed["variables"].items()]
            if pushed["hardware"]:
                settings.append(f"hardware {pushed['hardware']}")
            verb = "to set" if args.dry_run else "set"
            print(f"Space settings {verb}: {', '.join(settings) or 'none (the embedded demo pair)'}")
        else:
            result = push_eval(
                args.eval_dir,
                args.repo_id,
                model=args.model,
                adapter=args.adapter,
                license=args.license,
                **common,
            )
    except (HubPushError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Built {result}" if args.dry_run else f"Pushed: {result}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papo",
        description="PAPO (Perception-Aware Policy Optimization) for vision-language models on TRL.",
    )
    parser.add_argument("--version", action="version", version=f"papo-hub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "train",
        help="train with PAPO on TRL (default: the demo preset); `papo train --help` lists every option",
        add_help=False,
    )
    sub.add_parser(
        "push",
        help="push an adapter, eval predictions or the comparison Space to the Hub in one commit: `papo push "
        "adapter DIR --repo-id ID`, `papo push eval DIR --repo-id ID`, `papo push space --repo-id ID --adapter "
        "ADAPTER_ID` (--dry-run DIR writes the repo folder only)",
        add_help=False,
    )
    ev = sub.add_parser("eval", help="evaluate a model (+ PEFT adapter) with the paper's avg@k protocol")
    ev.add_argument("--model", default=None, help="Hub id or path; default: the embedded warm-started model")
    ev.add_argument("--adapter", default=None, help="PEFT adapter (Hub id or path), e.g. outputs/demo-train")
    ev.add_argument(
        "--data",
        action="append",
        default=None,
        help="eval set (repeatable): PAPO-Galaxy/PAPO_eval (Hub id, via the HF cache) or a folder downloaded "
        "from it (every split); a prepared ShareGPT JSON (file or folder); a training-schema Hub id/dir/"
        "parquet; default: the synthetic test split",
    )
    ev.add_argument(
        "--benchmarks",
        default=None,
        help="PAPO_eval splits to evaluate, comma-separated Table 1 or split names, e.g. Counting,LogicVista "
        "(default: every split)",
    )
    ev.add_argument("--split", default="test")
    ev.add_argument(
        "--image_dir",
        default=None,
        help="folder a ShareGPT JSON's image paths start from (default: next to the JSON, then its images/)",
    )
    ev.add_argument(
        "--cache_dir",
        default=None,
        help="where PAPO_eval's image zips are extracted (default: $PAPO_CACHE or $HF_HOME/papo)",
    )
    ev.add_argument("--output_dir", default=str(DEFAULT_OUTPUT / "eval"))
    ev.add_argument("--label", default=None, help="name of this run in tables (default: adapter/model name)")
    ev.add_argument("--compare", default=None, help="results.json of a baseline run: adds Δ%%rel and a plot")
    ev.add_argument(
        "--seed_runs",
        action="append",
        default=None,
        help="results.json of this model evaluated with another --seed (repeatable): adds the seed spread",
    )
    from papo.evaluation.run import EvalConfig

    add_dataclass_options(ev, EvalConfig)
    # Short forms kept from earlier releases (and the README): they set the same fields.
    ev.add_argument(
        "--no_perception_kl", dest="perception_kl", action="store_false", help="= --perception_kl false"
    )
    ev.add_argument(
        "--fail_on_invalid", dest="skip_invalid", action="store_false", help="= --skip_invalid false"
    )
    ev.add_argument("--dtype", default="auto")
    ev.add_argument(
        "--vision_dtype",
        default=None,
        choices=["auto", "float32"],
        help="float32: vision tower in fp32, outside fp16 autocast (T4 + fp16); default: the model's dtype",
    )
    ev.add_argument("--device", default=None)
    ev.add_argument("--embedded_dir", default=str(DEFAULT_OUTPUT))
    ev.set_defaults(func=_cmd_eval)

    demo = sub.add_parser("demo", help="end-to-end offline demo on the embedded model and synthetic data")
    demo.add_argument("--output_dir", default=str(DEFAULT_OUTPUT / "demo"))
    demo.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    demo.add_argument("--num_samples", type=int, default=16)
    demo.add_argument("--max_new_tokens", type=int, default=32)
    demo.add_argument("--batch_size", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    tiny = sub.add_parser("tiny-model", help="build a tiny random-weight VLM of a real architecture")
    tiny.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl", "gemma3", "smolvlm"])
    tiny.add_argument("--output_dir", default=None, help="default: outputs/tiny-<arch>")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--overwrite", action="store_true")
    tiny.set_defaults(func=_cmd_tiny_model)

    synth = sub.add_parser("synthetic-data", help="build the synthetic perception dataset")
    synth.add_argument("--output_dir", default=None, help="default: outputs/synthetic")
    synth.add_argument("--num_train", type=int, default=1000)
    synth.add_argument("--num_test", type=int, default=200)
    synth.add_argument(
        "--image_size", type=int, default=64, help="side of the drawn tasks' images (digits are 28 px each)"
    )
    synth.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="task names and/or task sets: digits (default: real handwritten digits, test split from held-out "
        "scans), drawn (shapes, bars, dots, numbers), or single tasks such as digit_sum count_shapes",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synthetic_data)

    check = sub.add_parser(
        "check-data", help="validate a dataset in the official schema, or an eval set as `papo eval` reads it"
    )
    check.add_argument(
        "source",
        help="Hub id, local directory, .parquet/.json(l) file, or an eval set (PAPO_eval snapshot, ShareGPT JSON)",
    )
    check.add_argument("--split", default="train")
    check.add_argument(
        "--image_dir", default=None, help="for a ShareGPT JSON: the folder its image paths start from"
    )
    check.add_argument(
        "--skip_invalid", action="store_true", help="skip and count bad rows instead of failing"
    )
    check.add_argument("--max_samples", type=int, default=None)
    check.set_defaults(func=_cmd_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["push"]:
        return _cmd_push(argv[1:])
    if argv[:1] == ["train"] and {"-h", "--help", "--help-all"} & set(argv[1:]):
        from papo.train import parse_train_args, train_help

        if "--help-all" not in argv[1:]:
            print(train_help())
            return 0
        parse_train_args(["--help"])  # TRL's full argparse help; exits
    if argv[:1] and argv[0] not in ("-h", "--help"):
        from papo.console import quiet_known_noise

        quiet_known_noise()
    if argv[:1] == ["train"]:
        # `papo train` takes TRL's own arguments (PAPOConfig/GRPOConfig, ModelConfig): TrlParser parses them.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from papo.guards import NonFiniteLossError
        from papo.train import TrainingOutOfMemory

        try:
            return _cmd_train(argv[1:])
        except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError) as err:
            print(f"papo train: error: {err}", file=sys.stderr)
            return 2
        except TrainingOutOfMemory as err:
            print(f"papo train: {err}", file=sys.stderr)
            return 3
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # Our errors name the field and the fix; a traceback would only bury that line.
        print(f"papo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
        if "out of memory" not in str(err).lower():
            raise
        print(
            f"papo {args.command}: out of memory: lower --batch_size, --max_new_tokens or --samples "
            f"(or --max_pixels via the model's processor). ({err})",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
