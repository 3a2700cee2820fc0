"""Datasets: preference sets (ranked images per prompt); later prompt sources and the self-generated store."""
