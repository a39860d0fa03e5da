"""Energy sources (stage 1): RAPL and NVML counters, and the CPU and RAM estimates.

``base`` is the contract every source follows, ``registry`` creates sources by name, ``select`` picks the
sources a meter uses (with said fallbacks) and ``sampler`` polls the ones that must be read between window
edges. Nothing here imports another greenmeter stage.
"""
