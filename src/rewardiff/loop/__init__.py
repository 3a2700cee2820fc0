"""Multi-round training loops (the CCSR self-rewarding rounds)."""
