"""Lockers for nn.LSTM and nn.GRU (being written)."""
