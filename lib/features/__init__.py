"""Video features from fixed extractors, shared by data filtering, clustering and evaluation."""
