"""Preset files (TOML), read by `boltzkit.core.presets`."""
