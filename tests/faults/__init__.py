"""Fault injection: counters that misbehave, stores that fail, signals at bad moments, hostile input."""
