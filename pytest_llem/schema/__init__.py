"""The base every layer reads: settings, limits, errors, result and comparison records,
quality flags, the registries. Pydantic records only; no I/O and no imports from other layers."""
