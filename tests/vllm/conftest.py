"""Fixtures for the tests against a real vLLM (CPU build), run by scripts/test-vllm in the
virtualenv scripts/install-vllm makes.

Engines run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the "uni" executor), so the
tests see the loaded model and the loader's exceptions directly; the OpenAI-compatible server test
starts vLLM's own processes. Either way shardstream reaches vLLM only through its
`vllm.general_plugins` entry point, as it does for users.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator

# Before vLLM is imported: its settings are read at import time.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # its sockets stay on loopback
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would take a large share
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import tiny_models  # noqa: E402

PROMPT = "the model loads weights from"
MAX_TOKENS = 16


def pytest_configure(config: pytest.Config) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as error:  # not in the vLLM virtualenv: say so instead of 5 failures
        raise pytest.UsageError(
            f"tests/vllm need vLLM ({error}); run them with scripts/test-vllm") from error


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A sharded bf16 Llama with an index and a zeroed `consolidated.safetensors` decoy beside
    the shards (vLLM's default loader skips it because the index does not name it)."""
    folder = tiny_models.build_model(str(tmp_path_factory.mktemp("llama")), "llama", seed=1)
    tiny_models.add_decoy_consolidated(folder)
    return folder


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A sharded bf16 Qwen2 (q/k/v biases, tied embeddings)."""
    return tiny_models.build_model(str(tmp_path_factory.mktemp("qwen2")), "qwen2", seed=2)


def make_llm(model: str, load_format: str, **kwargs):
    from vllm import LLM

    kwargs.setdefault("distributed_executor_backend", "uni")
    return LLM(model=model, load_format=load_format, dtype="bfloat16", enforce_eager=True,
               max_model_len=128, max_num_seqs=2, seed=0, **kwargs)


def shutdown(llm) -> None:
    """Stops an in-process engine and frees what it held, so the next test can start one."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def greedy(llm) -> tuple[list[int], str]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    completion = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0]
    return list(completion.token_ids), completion.text


def _state(model) -> dict[str, "object"]:
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    state.update({f"buffer:{name}": b.detach().clone() for name, b in model.named_buffers()})
    return state


def parameters(llm) -> dict[str, "object"]:
    """Every parameter and buffer of the running model, copied out, by name. On the CPU backend
    the linear layers' weights are repacked after loading and their parameters left empty: see
    loaded_state for what the loader itself put there."""
    (state,) = llm.apply_model(_state)
    return state


def parameters_per_rank(llm) -> list[dict[str, "object"]]:
    """parameters() of each tensor-parallel worker, in rank order."""
    return list(llm.apply_model(_state))


@contextlib.contextmanager
def loaded_state() -> Iterator[dict[str, "object"]]:
    """Collects every parameter and buffer as the loader left them, before vLLM's
    process_weights_after_loading repacks them (the engine runs in this process), for every
    model loaded inside the `with` (in this process: for vLLM's worker processes see
    loaded_state_extension.py)."""
    from vllm.model_executor.model_loader import base_loader

    original = base_loader.process_weights_after_loading
    state: dict[str, object] = {}

    def snapshot(model, *args, **kwargs):
        state.update(_state(model))
        return original(model, *args, **kwargs)

    base_loader.process_weights_after_loading = snapshot
    try:
        yield state
    finally:
        base_loader.process_weights_after_loading = original
