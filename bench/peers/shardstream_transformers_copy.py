"""Row: shardstream.transformers.from_pretrained(copy=True) on the CPU: every parameter in owned
memory (the CPU default maps: `python: shardstream.transformers.from_pretrained`). Shares
shardstream_transformers.py's driver. See _common.py for the protocol."""
import shardstream_transformers

import _common

_common.main("python: shardstream.transformers copy=True", "shardstream",
             shardstream_transformers.loader(copy=True),
             applicable=shardstream_transformers.applicable, cpu_only=True,
             prepare=shardstream_transformers.prepare)
