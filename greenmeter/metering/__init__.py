"""Metering (stage 2): the Meter and its windows, ``measure``/``track``, ``greenmeter run`` and distributed jobs.

Imports run one way: this stage uses ``sources``, ``carbon`` and ``records``; the store only where a
meter is asked to record into one.
"""
