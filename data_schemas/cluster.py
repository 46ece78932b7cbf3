"""Tables of the clustering stage: which cluster (expert) each clip belongs to, and what each cluster holds."""

import pandera.pandas as pa
from pandera.typing import Series

from data_schemas.ingest import ROLES


class ClusterAssignment(pa.DataFrameModel):
    """The cluster of every clip. ``cluster_id`` picks the expert that trains on the clip and is the router's
    target; ``fine_cluster`` is the first-stage centroid the clip was assigned through (two-stage clustering).
    Centroids are fitted on the ``train`` clips; held-out clips are assigned to them (lib.cluster.kmeans)."""

    clip_id: Series[str] = pa.Field(unique=True)
    cluster_id: Series[int] = pa.Field(ge=0)
    distance: Series[float] = pa.Field(ge=0)  # cosine distance (1 - cos) to the cluster centroid
    fine_cluster: Series[int] = pa.Field(ge=0)
    role: Series[str] = pa.Field(isin=list(ROLES))  # the clip's role from the ClipIndex: only "train" trains

    class Config:
        strict = True


class ClusterSummary(pa.DataFrameModel):
    """One row per cluster for reports: its size and the captions of its most typical clips."""

    cluster_id: Series[int] = pa.Field(ge=0, unique=True)
    size: Series[int] = pa.Field(ge=0)
    fraction: Series[float] = pa.Field(ge=0, le=1)
    example_captions: Series[str]  # up to 5 captions joined by " | ", closest to the centroid first

    class Config:
        strict = True


class ClusterAMI(pa.DataFrameModel):
    """Adjusted mutual information of the clusters with each known attribute of the clips (the built-in data's
    generating attributes), highest first: which attributes the experts' split follows, content (scene family,
    shape, motion) or colour (background). 0 is chance, 1 means the clusters are that attribute."""

    attribute: Series[str] = pa.Field(unique=True)
    ami: Series[float] = pa.Field(ge=-1, le=1)  # AMI can dip slightly below 0 for splits worse than chance

    class Config:
        strict = True
