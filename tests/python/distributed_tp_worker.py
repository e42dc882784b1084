"""One rank of test_distributed.py's tensor-parallel case (run under torchrun): loads a tiny model
with transformers' own TP loader and with shardstream.transformers.from_pretrained (both
tp_plan="auto", gloo on the CPU), and writes to OUT/rank<R>.json which parameters differ in this
rank's local shard (dtype, shape or bytes), whether the logits agree, and shardstream's report.

    python -m torch.distributed.run --nproc_per_node 2 distributed_tp_worker.py MODEL_DIR OUT
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

import shardstream.transformers as sst


def local(t: torch.Tensor) -> torch.Tensor:
    t = t._local_tensor if hasattr(t, "_local_tensor") else t
    return t.detach().contiguous()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = local(a), local(b)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def main() -> None:
    folder, out = sys.argv[1], sys.argv[2]
    theirs = AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto")
    # Buffered reads: with O_DIRECT the counts would include alignment around each run.
    ours, info = sst.from_pretrained(folder, tp_plan="auto", output_loading_info=True,
                                     direct="off")
    rank = dist.get_rank()
    a, b = theirs.state_dict(), ours.state_dict()
    diff = [n for n in a if n not in b or not same(a[n], b[n])] + [n for n in b if n not in a]
    ids = torch.tensor([[1, 17, 42, 99, 3, 150, 7]])
    with torch.no_grad():
        same_logits = torch.equal(theirs(ids).logits, ours(ids).logits)
    report = info["shardstream"]
    result = {"diff": diff, "tensors": len(b),
              "sharded": sum(1 for t in b.values() if hasattr(t, "_local_tensor")),
              "loader": report["loader"], "reason": report["reason"],
              "distributed": report.get("distributed"), "same_logits": same_logits}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
