"""MAML algorithms: BatchedMAML (a whole meta-batch at once, several backends)."""
