"""A chatty implementation and one that dies silently after it: the crash message must quote only
the crashing case's output, not the previous case's."""

import os
import signal

from harness.registry import register
from implementations.naive import naive_attention


@register("hostile_chatty", devices=("cpu",), dtypes=("float32",), description="prints, then answers")
def hostile_chatty(q, k, v, *, causal=False, attn_mask=None, scale=None):
    print("chatty output from the previous case", flush=True)
    return naive_attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale)


@register("hostile_silent_crash", devices=("cpu",), dtypes=("float32",), description="SIGKILLs itself")
def hostile_silent_crash(q, k, v, *, causal=False, attn_mask=None, scale=None):
    os.kill(os.getpid(), signal.SIGKILL)
