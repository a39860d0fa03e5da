"""The run store (stage 4): every run, window, power sample and comparison greenmeter measured, in SQLite."""
