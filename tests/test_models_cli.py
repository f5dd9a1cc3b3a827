"""`attnbench models` and `attnbench run --model`: the listing fits 100 columns, a user's config
shows its geometry, the generated scenarios carry the model's forms under the workloads' axis names
(checked as TOML data: some axes belong to workloads merged separately), a model run writes a
scenario.toml that runs again, the report answers per model, and every bad input is one line, exit 2."""

from __future__ import annotations

import json
import sys

import pytest

from harness.cli.main import main
from harness.models.configs import catalogue_names, resolve_config
from harness.models.geometry import geometry_of
from harness.models.plan import plan_scenario

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _ok(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _fails(capsys, *argv) -> str:
    """The command exits 2 with exactly one line on stderr; that line."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnbench: error: "), err
    return err


def _too_wide(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if max(len(ln), len(ln.encode())) > 100]


@pytest.mark.parametrize("name", ["deepseek-v3", "gemma-3-27b", "gpt-oss-120b"])
def test_model_detail_fits_100_columns(capsys, name):
    out = _ok(capsys, "models", "--model", name)
    assert not _too_wide(out) and f"model        {name}" in out


def test_models_lists_every_entry_within_100_columns(capsys):
    out = _ok(capsys, "models")
    assert not _too_wide(out)
    starts = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    for name in catalogue_names():
        assert name in starts
    assert "https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json" in out
    assert "MLA: kv_lora_rank 512" in out


def test_models_json_has_geometry_and_source(capsys):
    data = json.loads(_ok(capsys, "models", "--json"))
    by = {m["name"]: m for m in data["models"]}
    assert set(by) == set(catalogue_names())
    g = by["gemma-2-27b"]["geometry"]
    assert g["layer_types"] == [{"kind": "global", "layers": 23, "window": 0},
                                {"kind": "sliding", "layers": 23, "window": 4096}]
    assert g["softcap"] == 50.0 and g["sources"]["scale"] == "query_pre_attn_scalar^-0.5"


def test_models_model_path_shows_a_user_config(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "mistral", "num_attention_heads": 12, "num_key_value_heads": 4,
                               "num_hidden_layers": 6, "hidden_size": 768, "sliding_window": 256,
                               "max_position_embeddings": 2048}))
    out = _ok(capsys, "models", "--model", str(cfg))
    assert "sliding      6 layers, window 256 (sliding_window)" in out
    assert "head_dim     64  (hidden_size / num_attention_heads)" in out
    assert not _too_wide(out)


@pytest.mark.parametrize("argv, expect", [
    (["models", "--model", "lama-3.1-8b"], "did you mean llama-3.1-8b"),
    (["run", "--model", "gemma2-9b"], "did you mean gemma-2-9b"),
    (["run", "--model", "phi-3-mini", "--context", "5000"], "--context '5000' is not allowed; allowed: a positive "
                                                             "integer <= 4096"),
    (["run", "--model", "llama-3.1-8b", "--context", "abc"], "--context 'abc' is not allowed"),
    (["run", "--model", "llama-3.1-8b", "--context", "-5"], "--context '-5' is not allowed"),
    (["run", "--model", "llama-3.1-8b", "--batch", "0"], "--batch '0' is not allowed"),
    (["run", "--model", "llama-3.1-8b", "--batch", "2.5"], "--batch '2.5' is not allowed"),
    (["run", "--model", "llama-3.1-8b", "--workload", "inference"], "--workload 'inference' is not allowed; "
                                                                    "allowed: prefill, decode, training, serving"),
    (["run", "--context", "1024"], "--context needs --model"),
    (["run", "smoke", "--model", "llama-3.1-8b"], "not both"),
    (["run", "--model", "deepseek-v3", "--workload", "serving"], "MLA"),
    (["run", "--model", "llama-3.1-8b", "--impl", "nope"], "nope"),
    (["run", "--model", "smollm2-135m", "--workload", "serving", "--context", "8000"], "at most 7680"),
])
def test_bad_model_input_is_one_line(capsys, argv, expect):
    assert expect in _fails(capsys, *argv)


def test_non_attention_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 768, "patch_size": 32}))
    err = _fails(capsys, "run", "--model", str(cfg))
    assert f"{cfg}: num_attention_heads: missing" in err
    cfg.write_text(json.dumps({"num_attention_heads": 12, "num_key_value_heads": 5, "num_hidden_layers": 2,
                               "hidden_size": 768}))
    assert "num_key_value_heads: 5 does not divide num_attention_heads 12" in _fails(capsys, "models", "--model",
                                                                                      str(cfg))


# ---------------------------------------------------------------- generated scenarios (as TOML data)


def _plan(name, step, **kw):
    model = resolve_config(name)
    plan = plan_scenario(model, geometry_of(model), step, implementations={w: ["naive"] for w in
                         ("prefill", "decode", "mla_decode", "serving")}, **kw)
    return tomllib.loads(plan.text)


def _grids(data):
    return {g["name"]: g for g in data["grid"]}


def test_gpt_oss_prefill_has_sinks_and_the_window_per_layer_type():
    data = _plan("gpt-oss-20b", "prefill", context=256)
    g = _grids(data)
    assert data["model"]["layers"] == {"global": 12, "sliding": 12}
    assert g["sliding"]["window"] == 128 and "window" not in g["global"]
    assert g["global"]["sinks"] is True and g["sliding"]["sinks"] is True
    assert (g["global"]["heads_q"], g["global"]["heads_kv"], g["global"]["head_dim"]) == (64, 8, 64)
    assert "scale" not in g["global"]  # 1/sqrt(64) is the default


def test_gemma_prefill_carries_softcap_and_scale():
    g = _grids(_plan("gemma-2-27b", "training", context=8192))
    assert g["global"]["softcap"] == 50.0 and g["global"]["scale"] == pytest.approx(144 ** -0.5)
    assert g["global"]["pass"] == "forward_backward" and g["sliding"]["window"] == 4096


def test_a_window_no_shorter_than_the_context_folds_into_the_global_grid():
    """At context <= window a sliding layer sees every key: one grid counted for all layers."""
    short = _plan("gemma-2-27b", "prefill", context=4096)
    assert list(_grids(short)) == ["global"] and "window" not in _grids(short)["global"]
    assert short["model"]["layers"] == {"global": 46}
    long = _plan("gemma-2-27b", "prefill", context=4097)
    assert _grids(long)["sliding"]["window"] == 4096 and long["model"]["layers"] == {"global": 23, "sliding": 23}
    assert "scale" not in _grids(_plan("gemma-2-9b", "prefill", context=128))["global"]  # 256 = head_dim


def test_mla_prefill_and_decode():
    g = _grids(_plan("deepseek-v3", "prefill", context=128))["global"]
    assert (g["heads_q"], g["heads_kv"], g["head_dim"], g["head_dim_v"]) == (128, 128, 192, 128)
    assert g["scale"] == pytest.approx(192 ** -0.5 * (1 + 0.1 * __import__("math").log(40)) ** 2)
    d = _plan("deepseek-v3", "decode", context=1000, batch=2)
    m = _grids(d)["global"]
    assert m["workload"] == "mla_decode" and "head_dim" not in m and "heads_kv" not in m  # derived there
    assert (m["kv_lora_rank"], m["qk_rope_head_dim"], m["kv_lens"], m["seq_len_q"], m["batch"]) == (512, 64, 1000, 1, 2)
    assert m["scale"] == pytest.approx(g["scale"])
    assert d["model"]["tokens"] == 2


def test_decode_sliding_layers_hold_a_ring_buffer_of_window_tokens():
    data = _plan("gemma-3-27b", "decode", context=8192, batch=4)
    g = _grids(data)
    assert g["global"]["kv_lens"] == 8192 and g["sliding"]["kv_lens"] == 1024
    assert g["global"]["workload"] == "decode" and g["global"]["scale"] == pytest.approx(168 ** -0.5)
    # window >= context: the two layer types measure the same; one grid counts both
    same = _plan("gemma-2-9b", "decode", context=2048)
    assert set(_grids(same)) == {"global"} and same["model"]["layers"] == {"global": 42}


def test_serving_batch_spec():
    data = _plan("gpt-oss-20b", "serving", context=1024, batch=4)
    g = _grids(data)
    assert g["global"]["batch_spec"] == "1x512p@1024+4x1d@1024"
    assert g["sliding"]["batch_spec"] == "1x512p@128+4x1d@128"
    assert data["model"]["tokens"] == 516 and "batch" not in g["global"] and "scale" not in g["global"]
    gemma = _grids(_plan("gemma-2-27b", "serving", context=1024))
    assert gemma["global"]["scale"] == pytest.approx(144 ** -0.5)


# ---------------------------------------------------------------- a real run and its re-run


def test_run_model_writes_a_scenario_that_runs_again(tmp_path, capsys):
    from harness.scenario.load import load_scenario

    out = tmp_path / "results"
    args = ["run", "--model", "smollm2-135m", "--context", "48", "--batch", "1", "--impl", "naive",
            "--impl", "sdpa", "--out", str(out), "--run-id", "first", "--report-out", str(tmp_path / "rep")]
    _ok(capsys, *args)
    toml = out / "first" / "scenario.toml"
    scenario = load_scenario(toml)
    assert scenario.model.name == "smollm2-135m" and dict(scenario.model.layers) == {"global": 30}
    case = scenario.cases()[0]
    assert (case.heads_q, case.heads_kv, case.head_dim, case.seq_len_q, case.causal) == (9, 3, 64, 48, True)
    info = json.loads((out / "first" / "run.json").read_text())
    assert info["scenario"]["path"] == str(toml) and info["scenario"]["model"]["layers"] == {"global": 30}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Model: smollm2-135m, attention per prefill step" in md
    assert "(global: " in md and "| global | 30 |" in md
    assert (tmp_path / "rep" / "00-model-step.png").stat().st_size > 1000
    _ok(capsys, "run", str(toml), "--out", str(out), "--run-id", "again", "--no-report")
    assert (out / "again" / "results.jsonl").read_text().count("\n") == 2


def test_dry_run_prints_the_toml(capsys):
    text = _ok(capsys, "run", "--model", "mistral-7b-v0.1", "--workload", "decode", "--dry-run")
    data = tomllib.loads(text)
    assert data["model"]["context"] == 4096 and data["model"]["batch"] == 8
    assert _grids(data)["sliding"]["kv_lens"] == 4096


@pytest.mark.parametrize("table, expect", [
    ('step = "prefill"\n[model.layers]\nnope = 3', "model.layers.nope: 3 is not allowed; allowed: a grid name"),
    ('step = "prefill"\n[model.layers]\nself = 0', "model.layers.self: 0 is not allowed"),
    ('step = "infer"\n[model.layers]\nself = 2', "model.step: 'infer' is not allowed"),
    ('step = "prefill"\ncontext = 0\n[model.layers]\nself = 2', "model.context: 0 is not allowed"),
    ('step = "prefill"\nlayer = 2', "model.layer: unknown key; did you mean 'layers'?"),
    ('step = "prefill"', "model.layers: missing"),
])
def test_model_table_errors(tmp_path, table, expect):
    from harness.scenario.load import ScenarioError, load_scenario

    f = tmp_path / "s.toml"
    f.write_text('implementations = ["naive"]\n[model]\nname = "m"\n' + table +
                 '\n[[grid]]\nname = "self"\nheads_q = 2\nhead_dim = 8\nseq_len = 16\n')
    with pytest.raises(ScenarioError) as err:
        load_scenario(f)
    assert expect in str(err.value), str(err.value)


def test_two_layer_types_sum_into_the_step_time(tmp_path, capsys):
    """A user's config with global and sliding layers: two grids, and the report's step time is each
    type's best time × its layer count, summed (checked against the recorded medians)."""
    from harness.results.store import read_measurements

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "mine", "num_attention_heads": 4, "num_key_value_heads": 2,
                               "num_hidden_layers": 5, "hidden_size": 64, "sliding_window": 8,
                               "layer_types": ["sliding_attention"] * 3 + ["full_attention"] * 2,
                               "max_position_embeddings": 64}))
    out = tmp_path / "results"
    _ok(capsys, "run", "--model", str(cfg), "--context", "32", "--impl", "naive", "--impl", "sdpa",
        "--out", str(out), "--run-id", "r", "--report-out", str(tmp_path / "rep"))
    records = read_measurements(out / "r")
    best = {g: min(m.median_s for m in records if m.case.grid == g and m.status == "ok") for g in ("global", "sliding")}
    assert {m.case.params.window for m in records if m.case.grid == "sliding"} == {8}
    md = (tmp_path / "rep" / "report.md").read_text()
    from harness.results.units import fmt_time_s

    assert f"): {fmt_time_s(best['global'] * 2 + best['sliding'] * 3)}; per token:" in md
    assert "| global | 2 |" in md and "| sliding | 3 |" in md


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b-v0.1", "smollm2-1.7b", "phi-3-mini"])
@pytest.mark.parametrize("step", ["prefill", "training", "decode"])
def test_generated_scenarios_validate(name, step):
    """Models that need no form of the newer workloads: the written TOML loads as it is."""
    from harness.scenario.load import load_scenario_bytes

    model = resolve_config(name)
    plan = plan_scenario(model, geometry_of(model), step)
    scenario = load_scenario_bytes(plan.text.encode(), "x.toml")
    assert dict(scenario.model.layers) == {t.kind: t.layers for t in geometry_of(model).layer_types}
    assert all(c.heads_q == model.config["num_attention_heads"] for c in scenario.cases())


def test_impl_without_a_path_for_the_step_is_one_line(capsys):
    err = _fails(capsys, "run", "--model", "llama-3.1-8b", "--workload", "decode", "--impl", "flash")
    assert "--impl flash: none runs workload 'decode'" in err


def test_default_context_never_exceeds_a_short_model(tmp_path):
    from harness.models.configs import resolve_config as rc

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_attention_heads": 4, "num_hidden_layers": 2, "hidden_size": 64,
                               "max_position_embeddings": 600}))
    model = rc(str(cfg))
    for step, ctx in (("prefill", 600), ("decode", 600), ("serving", 88)):
        data = tomllib.loads(plan_scenario(model, geometry_of(model), step,
                                           implementations={w: ["naive"] for w in ("prefill", "decode", "serving")}).text)
        assert data["model"]["context"] == ctx, step
