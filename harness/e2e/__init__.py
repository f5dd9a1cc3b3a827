"""`attnbench e2e`: the kernel inside the model. A transformers model built from a model config
(harness/models) with seeded random weights, each attnbench implementation plugged in through
transformers' attention interface, its logits checked against transformers' own attention, and a
prefill and K decode steps measured: the model's time, attention's share of it, the kernel and
model speed-ups and what Amdahl's law predicts.

Modules, in the order data flows: model_build (config -> model), attention_bridge (implementation ->
transformers attention function), model_calls (prompt, prefill, decode from a cache), accuracy
(logits vs transformers' attention), measure (the passes), speedups (share, speed-ups, Amdahl),
run_files (the run folder). transformers is optional (`attnbench[models]`).
"""
