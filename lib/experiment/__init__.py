"""The experiment driver: one path from a config to trained models and scored videos, shared by the headline
benchmark, the ablation, the compute probes and the regime study (their scripts under ``benchmarks/`` only choose
configs and print).

It calls the pipeline's own lib functions in the pipeline's order, so it measures the product: ``prepare`` (ingest
with roles, the learned codec, encode, embed; a finished one is reused), ``variants`` (the clusters under test),
``models`` (experts, router, monolith; reused by spec hash) and ``scoring`` (the evaluation network, sampling with
a cache, features and distances). Everything lives under one work folder, keyed by what made it, and is published
by rename, so experiments sharing a work folder reuse each other's stages and never see a half-written one.
"""
