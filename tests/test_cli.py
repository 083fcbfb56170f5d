"""The `papo` command line: subcommands, the demo job end to end, and errors without tracebacks."""

import json
import subprocess
import sys

import datasets
import pytest

from papo.cli import build_parser, main


def test_help_lists_subcommands():
    text = build_parser().format_help()
    for command in ("train", "eval", "push", "demo", "tiny-model", "synthetic-data", "check-data"):
        assert command in text
    result = subprocess.run([sys.executable, "-m", "papo.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "check-data" in result.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: papo" in capsys.readouterr().out


def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    code = main(["demo", "--output_dir", str(tmp_path), "--num_samples", "4", "--max_new_tokens", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "4 answers: reward" in out and "(the embedded warm start:" in out
    from papo.embedded import WARM_START_ASSET

    assert f"Model: {WARM_START_ASSET}" in out
    records = [json.loads(line) for line in open(tmp_path / "demo_samples.jsonl")]
    assert len(records) == 4
    assert {"id", "task", "answer", "completion", "overall", "accuracy", "format"} <= set(records[0])
    assert not (tmp_path / "tiny-qwen2_5_vl").exists(), "the shipped warm start is used, nothing built"
    assert datasets.load_from_disk(str(tmp_path / "synthetic"))["test"].num_rows == 200


def test_tiny_model_and_synthetic_data_commands(tmp_path, capsys):
    assert main(["tiny-model", "--arch", "qwen3_vl", "--output_dir", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    args = ["synthetic-data", "--output_dir", str(tmp_path / "d"), "--num_train", "10", "--num_test", "5"]
    assert main(args) == 0
    assert "train: 10, test: 5" in capsys.readouterr().out


def test_check_data_reports_the_bad_row_without_traceback(tmp_path, capsys):
    main(["synthetic-data", "--output_dir", str(tmp_path / "d"), "--num_train", "6", "--num_test", "2"])
    train = datasets.load_from_disk(str(tmp_path / "d"))["train"]
    broken = train.map(lambda row, i: {"answer": "" if i == 3 else row["answer"]}, with_indices=True)
    broken.to_parquet(str(tmp_path / "broken.parquet"))
    capsys.readouterr()
    assert main(["check-data", str(tmp_path / "broken.parquet")]) == 2
    err = capsys.readouterr().err
    assert "row 3" in err and "field 'answer'" in err and "Traceback" not in err
    assert main(["check-data", str(tmp_path / "broken.parquet"), "--skip_invalid"]) == 0
    assert "5/6 rows kept, 1 skipped (answer: 1)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["tiny-model", "--arch", "llava"], ["synthetic-data", "--num_train", "x"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_train_demo_preset_writes_a_loadable_adapter(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "run"
    argv = ["train", "--output_dir", str(out), "--embedded_dir", str(tmp_path / "emb"), "--max_steps", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    # one compact line per step (not TRL's 32-key dict), then the run summary
    assert "step 1/2 | reward " in text and "perception_kl" in text and "'grad_norm'" not in text
    assert "Run summary" in printed.out and f"metrics.jsonl in {out}" in printed.out
    assert "gradient_checkpointing` is deprecated" not in text and "Setting accelerator to CPU" not in text
    logs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert any("perception_kl" in log for log in logs)
    resolved = (out / "papo_config.yaml").read_text()
    assert "perception_kl_coef: 0.02" in resolved and "max_steps: 2" in resolved
    from papo.embedded import WARM_START_ASSET

    assert f"model_name_or_path: {WARM_START_ASSET}" in resolved
    base = AutoModelForImageTextToText.from_pretrained(WARM_START_ASSET)
    model = PeftModel.from_pretrained(base, out)
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_train_help_puts_presets_and_papo_options_first(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: papo train [--config")
    assert "papo-g-qwen2.5vl-3b-lora" in text and "--perception_kl_coef (default: 0.02)" in text
    assert "--resume (default: None)" in text and "papo train --help-all" in text
    assert len(text.splitlines()) < 250  # TRL's ~1,400 lines stay behind --help-all
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help-all"])
    assert exit_.value.code == 0 and "--gradient_accumulation_steps" in capsys.readouterr().out


def test_train_config_accepts_the_equals_form(tmp_path):
    from papo.train import CONFIG_DIR, parse_train_args, resolve_config_argument

    assert resolve_config_argument(["--config=demo", "--max_steps", "3"]) == [
        "--config",
        str(CONFIG_DIR / "demo.yaml"),
        "--max_steps",
        "3",
    ]
    _, training_args, _ = parse_train_args(["--config=demo", "--output_dir", str(tmp_path)])
    assert training_args.perception_kl_coef == 0.02 and training_args.output_dir == str(tmp_path)


def test_train_unknown_preset_lists_presets(capsys):
    assert main(["train", "--config", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "no such preset" in err and "papo-g-qwen2.5vl-3b-lora" in err and "demo" in err


def test_train_presets_parse(tmp_path):
    from papo.train import available_presets, parse_train_args

    for preset in available_presets():
        script_args, training_args, model_args = parse_train_args(
            ["--config", preset, "--output_dir", str(tmp_path), "--bf16", "false"]  # this CPU has no bf16
        )
        if preset.startswith(("vppo", "pgpo", "noisyrollout")):  # their papers' recipes, not PAPO's
            assert training_args.disable_dropout and model_args.lora_dropout == 0.0, preset
            continue  # checked setting by setting in tests/test_followup_presets.py
        papo = preset.startswith(("papo", "demo"))
        assert training_args.perception_loss == papo, preset
        assert training_args.dynamic_sampling == ("dapo" in preset or "papo-d" in preset), preset
        assert training_args.loss_type == "bnpo" and training_args.reward_weights == [0.9, 0.1]
        # official: no dropout anywhere; 3 optimizer updates per generation batch in every full run
        assert training_args.disable_dropout and model_args.lora_dropout == 0.0, preset
        assert training_args.use_bias_correction_kl is False and training_args.delta == 3.0, preset
        updates = training_args.steps_per_generation // training_args.gradient_accumulation_steps
        assert updates == (1 if preset == "demo" else 3), preset
        assert training_args.steps_per_generation % training_args.gradient_accumulation_steps == 0
        dapo = preset.startswith(("dapo", "papo-d"))
        assert training_args.beta == (0.0 if dapo or "nref" in preset else 0.01), preset
        assert training_args.epsilon_high == (0.28 if dapo else 0.3), preset


def test_hand_written_yaml_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    import torch

    from papo.train import parse_train_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only first run meets
    plain = tmp_path / "plain.yaml"
    plain.write_text("max_steps: 3\nperception_kl_coef: 0.05\n")
    _, training_args, _ = parse_train_args(["--config", str(plain), "--output_dir", str(tmp_path)])
    assert training_args.bf16 is False and training_args.perception_kl_coef == 0.05  # no bf16/gpu error

    typo = tmp_path / "typo.yaml"
    typo.write_text("perception_kl_cof: 0.1\n")
    assert main(["train", "--config", str(typo)]) == 2
    assert "unknown key 'perception_kl_cof' (did you mean 'perception_kl_coef'" in capsys.readouterr().err
    assert main(["train", "--perception_kl_cof", "0.1", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s): --perception_kl_cof (did you mean 'perception_kl_coef'" in err
    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text("bf16: true\n")
    assert main(["train", "--config", str(bf16), "--output_dir", str(tmp_path)]) == 2
    assert "no CUDA GPU: set `bf16: false`" in capsys.readouterr().err
    # the command line overrides the YAML, in both directions
    parse_train_args(["--config", str(bf16), "--bf16", "false", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="no CUDA GPU"):
        parse_train_args(["--config", str(plain), "--bf16", "true", "--output_dir", str(tmp_path)])


def test_eval_options_are_generated_from_eval_config():
    from dataclasses import fields

    from papo.evaluation.run import EvalConfig

    parser = build_parser()
    defaults = parser.parse_args(["eval"])
    assert all(getattr(defaults, f.name) == f.default for f in fields(EvalConfig))  # one set of defaults
    args = parser.parse_args(
        ["eval", "--mask_grid", "model", "--kl_estimator", "k3", "--mask_patch_size", "16", "--samples", "2"]
    )
    assert (args.mask_grid, args.kl_estimator, args.mask_patch_size, args.samples_per_question) == (
        "model",
        "k3",
        16,
        2,
    )
    short = parser.parse_args(["eval", "--no_perception_kl", "--fail_on_invalid"])
    assert short.perception_kl is False and short.skip_invalid is False
    assert parser.parse_args(["eval", "--perception_kl", "false"]).perception_kl is False
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--mask_grid", "pixels"])
