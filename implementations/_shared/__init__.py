"""Helpers shared by several implementations; no implementation lives here and the registry never
imports this package itself (implementations import what they need):

- contract: the call contract of every prefill implementation -- argument checks, scale, causal
  and boolean masks, the grouped-query layout, the masks of one tile;
- decode_contract: the same for the decode paths -- argument checks, the padded cache, the length mask;
- variants: sliding window, soft cap, ALiBi and packed documents (checks, masks, score mods);
- thread_pool: the worker threads that run flash's and flash_decoding's blocks in parallel on the CPU;
- compile_support: what the torch.compile-based implementations share (compiler present, compile time,
  a static compile for a shape whose dynamic-shape compile fails);
- triton_support: whether Triton can run on a device (triton_flash, triton_decode).
"""
