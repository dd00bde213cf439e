"""Data: the shard format (writer + reader), tokenizer, resumable sampler, cache and batches.

``shards``, ``tokenizer``, ``sampler`` and ``cache`` are torch-free so the packing step and the
control plane can import them; ``batching`` turns samples into tensors.
"""

from __future__ import annotations
