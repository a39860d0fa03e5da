"""Carbon: energy x PUE x grid carbon intensity (``settings``), from offline tables (``tables``)."""
