"""tune: measure a bundle set on one device per board class and record the choice (docs/tune.md)."""
