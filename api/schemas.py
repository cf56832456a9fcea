"""Request and response bodies, as pydantic models (they also write the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_VECTOR_VALUES = 8192


class SearchOptions(BaseModel):
    """The form fields of an image search (multipart)."""

    model_config = ConfigDict(extra="ignore")

    k: int = Field(10, description="number of results, 1..TWINSTREAM_API_MAX_K")
    filter: str | None = Field(None, description='attribute filter, e.g. .label == "cat"')


class VectorQuery(BaseModel):
    """A JSON search: by an embedding, or by an item already in the index (more like this)."""

    model_config = ConfigDict(extra="forbid")

    vector: list[float] | None = Field(None, max_length=MAX_VECTOR_VALUES,
                                       description="query embedding (the index's dimension)")
    id: str | None = Field(None, description="id of an indexed item to use as the query")
    k: int = Field(10, description="number of results, 1..TWINSTREAM_API_MAX_K")
    filter: str | None = Field(None, description='attribute filter, e.g. .label == "cat"')

    @model_validator(mode="after")
    def _one_query(self) -> VectorQuery:
        if (self.vector is None) == (self.id is None):
            raise ValueError("give exactly one of 'vector' and 'id'")
        return self


class HitOut(BaseModel):
    id: str
    score: float = Field(description="cosine similarity, -1..1")
    probability: float | None = Field(
        None, description="P(same identity) from the model card's calibration; null for a "
                          "model exported without one")
    attributes: dict[str, Any]
    thumbnail_url: str


class IdentityOut(BaseModel):
    label: str
    references: int = Field(description="reference images enrolled for this identity")
    thumbnail_url: str = Field(description="the thumbnail of one of its references")


class IdentityHitOut(IdentityOut):
    score: float = Field(description="cosine similarity with the identity's prototype "
                                     "(the normalised mean of its references)")
    probability: float | None = Field(None, description="P(same identity), when calibrated")


class IndexRef(BaseModel):
    name: str
    version: str = Field(description="model version the index was built with")
    dim: int


class SearchResponse(BaseModel):
    model_version: str
    index: IndexRef
    k: int
    filter: str | None
    hits: list[HitOut]
    timings_ms: dict[str, float] = Field(
        description="server-side time of each step: decode_embed, index_query")


class ItemResponse(BaseModel):
    id: str
    model_version: str
    attributes: dict[str, Any]
    thumbnail_url: str
    vector: list[float] | None = None


class RecognizeResponse(BaseModel):
    label: str = Field(description='the recognised identity, or "unknown"')
    known: bool
    score: float = Field(description="cosine similarity with the best identity's prototype")
    probability: float | None = Field(None, description="P(same identity) of the best match")
    threshold: float
    threshold_reason: str = Field(description="which threshold was used, and why")
    gallery_size: int = Field(description="identities enrolled when the threshold was chosen")
    warning: str | None = None
    best: IdentityHitOut | None
    hits: list[IdentityHitOut]
    model_version: str
    timings_ms: dict[str, float]


class VerifyResponse(BaseModel):
    score: float
    probability: float | None = Field(None, description="P(same identity), when calibrated")
    threshold: float
    same: bool
    model_version: str


class EnrollResponse(BaseModel):
    id: str = Field(description="the first reference's id")
    ids: list[str] = Field(description="every reference enrolled by this request")
    label: str
    references: int = Field(description="the identity's references after this request")
    model_version: str
    index: str


class IdentitiesResponse(BaseModel):
    index: str
    model_version: str
    identities: list[IdentityOut]


class IdentityResponse(IdentityOut):
    index: str
    model_version: str
    reference_ids: list[str]


class IdentityRemovedResponse(BaseModel):
    label: str
    removed_references: list[str]


class IngestResponse(BaseModel):
    ids: list[str]
    topic: str
    status: str = "queued"


class DeleteResponse(BaseModel):
    id: str
    indexed: bool = Field(description="whether the id was in the live index when deleted")
    topic: str
    status: str = "queued"


class ClusterMemberOut(BaseModel):
    id: str
    label: str | None = Field(None, description="the label the item already carries, if any")
    thumbnail_url: str


class ClusterOut(BaseModel):
    id: str = Field(description="'c' + a hash of the member ids: the same group has the same "
                                "id in every listing")
    size: int
    cohesion: float = Field(description="mean cosine of the neighbour pairs inside the cluster")
    labels: dict[str, int] = Field(description="labels its members already carry, and how "
                                               "many carry each")
    cover: ClusterMemberOut = Field(description="the most central member")
    members: list[ClusterMemberOut] = Field(description="every member, most central first")


class ClustersResponse(BaseModel):
    index: str
    model_version: str
    method: str = Field(description="leiden-cpm (clusters) or connected-components "
                                    "(near-duplicates)")
    resolution: float | None = Field(None, description="Leiden CPM's resolution: the cosine "
                                     "weight a cluster needs per pair of members")
    threshold: float = Field(description="cosine at which two items are neighbours")
    threshold_reason: str
    warning: str | None = None
    items: int = Field(description="items considered (all, or the unlabeled ones)")
    clustered: int = Field(description="items in the clusters listed and beyond")
    edges: int = Field(description="neighbour pairs at or above the threshold")
    total_clusters: int
    clusters: list[ClusterOut] = Field(description="largest first, at most `limit`")
    timings_s: dict[str, float]


class LabelClusterRequest(BaseModel):
    """Name a cluster: its members become the references of one identity."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="the identity's name", max_length=200)
    ids: list[str] | None = Field(
        None, max_length=100_000, description="the members as listed (recommended): checked "
        "against the cluster id; without them the clusters are computed again with the "
        "options below")
    threshold: float | None = Field(None, description="as given to GET /clusters")
    min_size: int = Field(2, description="as given to GET /clusters")
    unlabeled_only: bool = Field(False, description="as given to GET /clusters")
    resolution: float | None = Field(None, description="as given to GET /clusters")


class LabelClusterResponse(BaseModel):
    cluster: str
    label: str
    ids: list[str] = Field(description="the members enrolled as references of the identity")
    references: int = Field(description="the identity's references afterwards")
    skipped: list[str] = Field(description="members deleted or changing meanwhile")
    model_version: str


class ErrorResponse(BaseModel):
    error: str
    message: str
    status: int
    detail: Any = None
