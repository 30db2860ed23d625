"""poisonlens core: data, models, training with gradient snapshots, defenses, attacks, run store."""

__version__ = "0.1.0"
