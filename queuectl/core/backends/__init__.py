"""Storage backends: memory (tests), JSON files (the default), Redis (optional extra)."""
