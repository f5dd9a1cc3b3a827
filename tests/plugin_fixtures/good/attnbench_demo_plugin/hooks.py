"""A callable entry point: registers only when attnbench calls it."""

from harness.registry import register


def install():
    from attnbench_demo_plugin import demo_attention

    register("demo_plugin_hook_attention", devices=("cpu",), dtypes=("float32",),
             description="Demo plugin registered through a hook")(demo_attention)
