"""Training algorithms; each exposes small pure loss functions + a train() entry point."""
