"""Distilling a DDM into one dense model: the routed mixture of experts as the teacher of a single student."""
