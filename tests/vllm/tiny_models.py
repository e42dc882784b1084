"""Tiny Llama- and Qwen2-shaped checkpoints with a tokenizer, built offline for the vLLM tests.

Each folder is what a hub repo holds: `config.json`, bf16 safetensors shards with a
`model.safetensors.index.json`, and a byte-level BPE tokenizer trained here on a synthetic corpus
(`tokenizer.json`, `tokenizer_config.json`). Head sizes are 64, one the CPU attention backend
accepts. Weights are seeded, so a folder built twice holds the same bytes.

    python tests/vllm/tiny_models.py DIR [--arch llama|qwen2]
"""

from __future__ import annotations

import argparse
import json
import os
import random

VOCAB_SIZE = 512  # the tokenizer trains up to this; the models' embeddings have exactly this many
HEAD_DIM = 64


def build_tokenizer(folder: str, seed: int = 0) -> None:
    """Trains a byte-level BPE of VOCAB_SIZE tokens on a seeded synthetic corpus and saves it as a
    transformers fast tokenizer in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = ["the", "model", "loads", "weights", "from", "disk", "into", "memory", "fast",
             "shard", "stream", "tensor", "tokens", "every", "byte", "once", "and", "then",
             "serve", "requests", "quickly", "a", "of", "to", "in", "is", "it", "on"]
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + "."
              for _ in range(2000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)


def _config(arch: str, hidden: int, layers: int):
    import transformers

    common = dict(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=hidden // HEAD_DIM,
        num_key_value_heads=max(1, hidden // HEAD_DIM // 2), head_dim=HEAD_DIM,
        max_position_embeddings=512, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
        dtype="bfloat16",
    )
    if arch == "llama":
        return transformers.LlamaConfig(tie_word_embeddings=False, **common)
    if arch == "qwen2":
        # Tied embeddings: the checkpoint has no lm_head.weight, vLLM's Qwen2 ties it itself.
        return transformers.Qwen2Config(tie_word_embeddings=True, **common)
    raise ValueError(f"unknown arch {arch!r} (llama, qwen2)")


def build_model(folder: str, arch: str = "llama", *, hidden: int = 128, layers: int = 2,
                shard_kb: int = 200, seed: int = 0) -> str:
    """Writes a seeded random `arch` model (bf16, sharded at `shard_kb`) with a tokenizer into
    `folder` and returns it."""
    import torch
    import transformers

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    config = _config(arch, hidden, layers)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[arch]
    model = cls(config).to(torch.bfloat16)
    # Biases (Qwen2's q/k/v) and norms start at 0 and 1: make every tensor distinct, so a weight
    # loaded into the wrong place changes the output.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder, max_shard_size=f"{shard_kb}KB")
    build_tokenizer(folder, seed)
    return folder


def add_decoy_consolidated(folder: str) -> None:
    """Adds `consolidated.safetensors` beside the shards, as Mistral's repos hold a consolidated
    copy: every weight zeroed, plus one the model does not have, so a loader that reads it besides
    the indexed shards fails whatever order it reads the files in."""
    import torch
    from safetensors.torch import load_file, save_file

    with open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    zeros: dict[str, torch.Tensor] = {}
    for shard in shards:
        for name, tensor in load_file(os.path.join(folder, shard)).items():
            zeros[name] = torch.zeros_like(tensor)
    zeros["decoy.weight"] = torch.zeros(4, dtype=torch.bfloat16)
    save_file(zeros, os.path.join(folder, "consolidated.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    args = parser.parse_args()
    build_model(args.folder, args.arch)
    print(args.folder)


if __name__ == "__main__":
    main()
