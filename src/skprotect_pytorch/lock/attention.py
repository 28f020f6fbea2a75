"""Locker for nn.MultiheadAttention (being written)."""
