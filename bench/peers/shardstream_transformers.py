"""Row: shardstream.transformers.from_pretrained(dtype="auto"), beside the peer `transformers
from_pretrained` (transformers_from_pretrained.py), for checkpoints in a folder with a config.json:
the same model, built by transformers on the meta device, with the weights read by
shardstream.fill (on the CPU, mapped views made resident by shardstream's populate, which the
harness then touches page by page; shardstream_transformers_copy.py: owned tensors). On a GPU
with `device=DEVICE` (no accelerate needed). Bytes: the model's parameters and persistent
buffers (state_dict, tied weights once). The stage times of the weight-loading step go to
stderr. See _common.py for the protocol."""
import json
import os
import sys

import _common


def model_dir(checkpoint):
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))


def applicable(checkpoint):
    if not os.path.isfile(os.path.join(model_dir(checkpoint), "config.json")):
        return "no config.json next to the checkpoint"
    try:
        import shardstream.transformers  # noqa: F401
    except ImportError as e:
        return f"shardstream.transformers not importable ({e})"
    return None


def prepare(checkpoint):
    """Outside the clock: the imports transformers makes lazily (as for the transformers peer)."""
    import shardstream.transformers  # noqa: F401
    _common.import_transformers_for(model_dir(checkpoint))


def loader(**options):
    """The driver's load function, passing `options` (e.g. copy=True) to from_pretrained."""
    def load(checkpoint, files, device):
        import shardstream.transformers as sst
        model, info = sst.from_pretrained(model_dir(checkpoint), device=device,
                                          output_loading_info=True, **options)
        report = info["shardstream"]
        if report["loader"] != "shardstream":
            raise RuntimeError(f"shardstream did not load the weights: {report['reason']}")
        print(json.dumps({"shardstream": report}), file=sys.stderr)
        return list(model.state_dict().values())
    return load


if __name__ == "__main__":
    _common.main("python: shardstream.transformers.from_pretrained", "shardstream", loader(),
                 applicable=applicable, prepare=prepare)
