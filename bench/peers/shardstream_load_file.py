"""Row `python: shardstream.load_file`: the shardstream Python package's load_file (installed by
scripts/install-python), owned tensors like `shardstream load`. See _common.py for the protocol."""
import _common


def load(checkpoint, files, device):
    import shardstream
    return list(shardstream.load_file(checkpoint, device=device).values())


_common.main("python: shardstream.load_file", "shardstream", load)
