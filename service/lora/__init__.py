"""Adapter runtime: adapter files and manifests on disk, the hot-swappable registry, load/unload."""
