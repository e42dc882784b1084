"""A vLLM worker extension (`LLM(worker_extension_cls="loaded_state_extension.LoadedState")`)
that keeps, in each worker, every parameter and buffer as the loader left them, before vLLM's
process_weights_after_loading repacks them (conftest.loaded_state does this in-process).

The CPU platform always spawns its workers, so a hook set in the test process does not reach
them: vLLM imports this module in each worker before the model loads, and importing it sets the
hook there. `llm.collective_rpc("loaded_state")` returns each rank's copy, in rank order.
"""

from __future__ import annotations

from vllm.model_executor.model_loader import base_loader

_LOADED: dict[str, object] = {}
_original = base_loader.process_weights_after_loading


def _snapshot(model, *args, **kwargs):
    _LOADED.clear()
    _LOADED.update({name: p.detach().clone() for name, p in model.named_parameters()})
    _LOADED.update({f"buffer:{name}": b.detach().clone() for name, b in model.named_buffers()})
    return _original(model, *args, **kwargs)


base_loader.process_weights_after_loading = _snapshot


class LoadedState:
    def loaded_state(self) -> dict[str, object]:
        return dict(_LOADED)
