"""Energy sources (stage 1): RAPL and NVML counters, and the CPU and RAM estimates.

``base`` is the contract every source follows (with the metadata each source class carries,
``SourceInfo``), ``registry`` is the one registry of sources (built-ins, ``greenmeter.sources`` entry points,
in-process registrations) and creates them by name, ``select`` picks the sources a meter uses (with said
fallbacks) from their metadata and ``sampler`` polls the ones that must be read between window edges.
Nothing here imports another greenmeter stage.
"""
