"""Table definitions for experiments/reproduce.py, one module per paper."""
