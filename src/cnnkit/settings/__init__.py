"""The settings: `TrainConfig` and its checks, presets, and the automatic recipe fitted to the data."""
