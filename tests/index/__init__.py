"""Tests of `index/`: FAISS indexes, publish, MUVERA."""
