"""`attnbench e2e` at the command line: user mistakes are one line and exit 2 (transformers missing
included); a run writes its folder, the table and --json."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from harness.cli.main import main

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="attnbench e2e needs transformers "
                                                                      "(pip install 'attnbench[models]')")


def _tiny_config(tmp_path, **extra):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97,
           "max_position_embeddings": 128, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_without_transformers_one_line_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    err = _error_line(capsys, ["e2e", "--model", "smollm2-135m", "--impl", "naive"])
    assert "pip install 'attnbench[models]'" in err


@needs_transformers
@pytest.mark.parametrize("argv, pattern", [
    (["--model", "smolm2-135m", "--impl", "naive"], r"unknown model 'smolm2-135m'; did you mean smollm2-135m"),
    (["--model", "no/such/config.json", "--impl", "naive"], r"no/such/config.json: no such file"),
    (["--model", "smollm2-135m", "--impl", "naive", "nosuch"], r"unknown implementation 'nosuch'; known: .*naive"),
    (["--model", "smollm2-135m", "--impl", "naive", "--layers", "0"], r"--layers 0 is not allowed; allowed: 1 to 30"),
    (["--model", "smollm2-135m", "--impl", "naive", "--layers", "31"], r"--layers 31 .* 1 to 30"),
    (["--model", "smollm2-135m", "--impl", "naive", "--context", "0"], r"--context 0 is not allowed"),
    (["--model", "smollm2-135m", "--impl", "naive", "--context", "8190", "--decode-steps", "8"],
     r"beyond smollm2-135m's maximum context 8192"),
    (["--model", "smollm2-135m", "--impl", "naive", "--decode-steps", "-1"], r"--decode-steps -1 is not allowed"),
    (["--model", "smollm2-135m", "--impl", "naive", "naive"], r"--impl naive given twice"),
    (["--model", "smollm2-135m", "--impl", "naive", "--threads", "0"], r"--threads 0 is not allowed"),
    (["--model", "smollm2-135m", "--impl", "naive", "--batch", "0"], r"--batch 0 is not allowed"),
    (["--model", "smollm2-135m", "--impl", "naive", "--device", "tpu"], r"--device 'tpu' is not allowed"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, pattern):
    import re

    err = _error_line(capsys, ["e2e", *argv])
    assert re.search(pattern, err), err


@needs_transformers
def test_a_config_transformers_cannot_build(capsys, tmp_path):
    err = _error_line(capsys, ["e2e", "--model", _tiny_config(tmp_path, model_type="no-such-arch"),
                               "--impl", "naive", "--context", "16"])
    assert "model_type 'no-such-arch' is not known to transformers" in err


@needs_transformers
def test_a_run_writes_its_folder_the_table_and_json(capsys, tmp_path):
    out_json = tmp_path / "summary.json"
    rc = main(["e2e", "--model", _tiny_config(tmp_path), "--impl", "naive", "sdpa", "--context", "24",
               "--decode-steps", "2", "--rounds", "2", "--threads", "1",
               "--out", str(tmp_path / "results"), "--run-id", "tiny", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Amdahl x" in captured.out and "prefill (per prefill" in captured.out
    assert "decode (per decode token" in captured.out
    run_dir = tmp_path / "results" / "tiny"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["kind"] == "e2e" and info["layers"] == 2 and info["settings"]["impls"] == ["naive", "sdpa"]
    records = [json.loads(line) for line in (run_dir / "e2e.jsonl").read_text().splitlines()]
    assert [r["record"] for r in records] == ["logits", "logits", "phase", "phase", "phase", "phase"]
    summary = json.loads(out_json.read_text())
    assert summary == json.loads((run_dir / "e2e.json").read_text())
    assert summary["baseline"] == "naive"
    sdpa = summary["phases"]["prefill"][1]
    assert sdpa["impl"] == "sdpa" and sdpa["amdahl_speedup"] > 0 and 0 < sdpa["baseline_share"] < 1
    # the same run id again: refused before anything is built
    err = _error_line(capsys, ["e2e", "--model", _tiny_config(tmp_path), "--impl", "naive", "--context", "24",
                               "--out", str(tmp_path / "results"), "--run-id", "tiny"])
    assert "already holds a run" in err


@needs_transformers
def test_bad_run_id_is_refused_before_building(capsys, tmp_path):
    err = _error_line(capsys, ["e2e", "--model", _tiny_config(tmp_path), "--impl", "naive", "--context", "24",
                               "--out", str(tmp_path), "--run-id", "../up"])
    assert "run id '../up' is not allowed" in err
    assert not any(tmp_path.glob("*/run.json"))


@needs_transformers
def test_json_to_stdout_is_the_only_stdout(capsys, tmp_path):
    rc = main(["e2e", "--model", _tiny_config(tmp_path), "--impl", "sdpa", "--context", "16", "--decode-steps", "0",
               "--rounds", "2", "--threads", "1", "--out", str(tmp_path), "--json", "-"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out)  # nothing but the JSON
    assert list(summary["phases"]) == ["prefill"]  # no decode steps: no decode phase
