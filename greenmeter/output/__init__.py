"""Output (stage 5): the format registry (built-in and plug-in formats), reports and exports, their view
models, prose and charts."""
