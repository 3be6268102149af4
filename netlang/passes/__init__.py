"""Passes over the graph IR, one per module, each with the same shape: graph in, graph out."""
