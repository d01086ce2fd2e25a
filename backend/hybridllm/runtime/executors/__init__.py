"""One executor per policy, each with `build(parts) -> executor`; the factory imports them by name."""
