"""Output (stage 5): reports (HTML, Markdown, CSV, JSON) and exports, their view models, prose and charts."""
