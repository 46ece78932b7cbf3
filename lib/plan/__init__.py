"""Placing isolated experts on a heterogeneous GPU pool, and simulating that plan against a synchronous monolith."""
