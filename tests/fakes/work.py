"""An energy counter that float layers charge by the work they do: savings that hold on a busy machine.

Measured energy on a shared VM moves with the other load; a test that needs a variant to be *measurably*
cheaper uses this counter instead, at the backend boundary (the meter and the comparison run unchanged).
Each float ``nn.Linear`` and ``nn.Conv*`` layer of a model given to :meth:`LayerWorkCounter.charge` adds
``J_PER_WEIGHT`` joules per weight per sample when it runs; modules a method replaces (int8 layers) charge
nothing. An idle power of ``IDLE_W`` keeps every window's energy above zero.
"""

from __future__ import annotations

import time

from torch import nn

from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading

J_PER_WEIGHT = 1e-9
IDLE_W = 1e-3


class LayerWorkCounter(Backend):
    """Joules charged by the layers of the models it was given, plus a small idle power."""

    name = "layer-work"

    def __init__(self) -> None:
        self.joules = 0.0

    def probe(self) -> ProbeResult:
        prov = Provenance("measured", "test layer-work counter",
                          f"{J_PER_WEIGHT:g} J per weight per sample of float layers, {IDLE_W:g} W idle")
        return ProbeResult(self.name, True, domains=(Domain("work:dev", "package", True, prov, 0.0),))

    def read(self) -> Reading:
        return Reading(time.monotonic(), {"work:dev": self.joules + IDLE_W * time.monotonic()})

    def charge(self, model: nn.Module) -> nn.Module:
        """Make each float Linear and convolution of ``model`` charge this counter when it runs; returns it.

        The hooks travel with ``copy.deepcopy`` (so variants built from the model charge too, by their own
        weights after pruning); modules a quantizer makes anew do not.
        """
        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            self.joules += J_PER_WEIGHT * module.weight.numel() * args[0].shape[0]  # type: ignore[union-attr]

        for module in model.modules():
            if type(module) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
                module.register_forward_pre_hook(hook)
        return model
