"""Identities: a label enrolled with one or more reference images, recognised by its prototype.

An identity's prototype is the normalised mean of its references' embeddings, exactly as
``twinstream evaluate`` builds one (``twinstream.calibration.prototype``), so what the door does
live is what was measured offline. Recognition compares a probe with every prototype through a
vector set of its own (one element per label, stored unquantized); each reference also stays an
ordinary element of the index (searchable, with its thumbnail).

The references' own float32 vectors are kept beside the prototype, and every change (a reference
added, moved to another label, or removed) recomputes the prototype in one Lua script: atomic,
also on a Redis Cluster (every key is in the slot of the index name), so two enrolments of one
person at once cannot leave a stale prototype. Re-enrolling the same image changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from index import layout
from index.filters import parse_filter
from index.query import parse_hits
from index.store import VectorIndex
from twinstream.errors import InputError, NotFoundError
from twinstream.fields import check_id, check_label, quote

# KEYS: 1 refs of the identity, 2 identities vset, 3 identities meta, 4 identity-of
# ARGV: 1 label, 2 dim, 3 "add" | "remove", 4 reference id, 5 float32 vector (add)
# Returns the identity's number of references after the change (0: the identity is gone).
_UPDATE = """
local label, dim, op, ref = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if op == 'add' then
  redis.call('HSET', KEYS[1], ref, ARGV[5])
  redis.call('HSET', KEYS[4], ref, label)
else
  redis.call('HDEL', KEYS[1], ref)
  if redis.call('HGET', KEYS[4], ref) == label then redis.call('HDEL', KEYS[4], ref) end
end
local refs = redis.call('HGETALL', KEYS[1])
local n = #refs / 2
if n == 0 then
  redis.call('VREM', KEYS[2], label)
  redis.call('HDEL', KEYS[3], label)
  redis.call('DEL', KEYS[1])
  return 0
end
local sum = {}
for i = 1, dim do sum[i] = 0.0 end
for r = 2, #refs, 2 do
  local blob, pos = refs[r], 1
  for i = 1, dim do
    local x
    x, pos = struct.unpack('<f', blob, pos)
    sum[i] = sum[i] + x
  end
end
local norm = 0.0
for i = 1, dim do sum[i] = sum[i] / n; norm = norm + sum[i] * sum[i] end
norm = math.sqrt(norm)
if norm < 1e-6 then return redis.error_reply('references cancel out') end
local parts = {}
for i = 1, dim do parts[i] = struct.pack('<f', sum[i] / norm) end
local cover = ref
local old = redis.call('HGET', KEYS[3], label)
if old then
  local previous = cjson.decode(old)['cover']
  if previous and redis.call('HEXISTS', KEYS[1], previous) == 1 then cover = previous end
end
if redis.call('HEXISTS', KEYS[1], cover) == 0 then cover = refs[1] end
local meta = cjson.encode({label = label, references = n, cover = cover})
redis.call('VADD', KEYS[2], 'FP32', table.concat(parts), label, 'NOQUANT', 'SETATTR', meta)
redis.call('HSET', KEYS[3], label, meta)
return n
"""


@dataclass(frozen=True)
class Identity:
    label: str
    references: int
    cover: str  # the reference whose thumbnail shows the identity

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "references": self.references, "cover": self.cover}


@dataclass(frozen=True)
class IdentityHit:
    identity: Identity
    score: float  # cosine similarity with the identity's prototype, -1..1


class Identities:
    """The identities of one index version."""

    def __init__(self, index: VectorIndex):
        self.index = index
        name, version = index.info.name, index.info.version
        self.vset = layout.identities_key(name, version)
        self.meta = layout.identities_meta_key(name, version)
        self.owner = layout.identity_of_key(name, version)

    def _refs_key(self, label: str) -> str:
        return layout.identity_refs_key(self.index.info.name, self.index.info.version, label)

    def _run(self, label: str, op: str, ref: str, vector: np.ndarray | None = None) -> int:
        keys = (self._refs_key(label), self.vset, self.meta, self.owner)
        args = [label, self.index.info.dim, op, ref]
        if vector is not None:
            args.append(np.asarray(vector, dtype="<f4").tobytes())
        with self.index.errors_during(f"update identity {quote(label)}"):
            return int(self.index.client.eval(_UPDATE, 4, *keys, *args))

    # --- writes ----------------------------------------------------------------------------------

    def add(self, label: str, ref: str, vector: np.ndarray) -> int:
        """Make ``ref`` (an element of the index) a reference of ``label``; a reference that
        belonged to another label moves. Returns the identity's number of references."""
        label, ref = check_label(label), check_id(ref)
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.index.info.dim or not np.all(np.isfinite(vector)):
            raise InputError(f"reference {quote(ref)} has no usable embedding")
        previous = self.label_of(ref)
        if previous is not None and previous != label:
            self._run(previous, "remove", ref)
        return self._run(label, "add", ref, vector)

    def forget(self, refs: list[str]) -> None:
        """Elements deleted from the index stop being references (their identity's prototype
        is recomputed, or the identity goes when it had no other reference)."""
        if not refs:
            return
        with self.index.errors_during("look up references"):
            owners = self.index.client.hmget(self.owner, refs)
        for ref, owner in zip(refs, owners, strict=True):
            if owner is not None:
                self._run(owner.decode(), "remove", ref)

    def remove(self, label: str) -> list[str]:
        """Remove an identity and its reference elements; returns the references' ids."""
        identity = self.get(label)
        if identity is None:
            raise NotFoundError(f"no identity {quote(label)} in index "
                                f"{self.index.info.name!r}")
        with self.index.errors_during(f"read identity {quote(label)}"):
            refs = [r.decode() for r in self.index.client.hkeys(self._refs_key(identity.label))]
        for ref in refs:
            self._run(identity.label, "remove", ref)
        self.index.delete(refs)
        return refs

    # --- reads -----------------------------------------------------------------------------------

    def count(self) -> int:
        with self.index.errors_during("count identities"):
            return int(self.index.client.hlen(self.meta))

    def get(self, label: str) -> Identity | None:
        with self.index.errors_during("read an identity"):
            raw = self.index.client.hget(self.meta, check_label(label))
        return None if raw is None else _identity(json.loads(raw))

    def references(self, label: str) -> dict[str, np.ndarray]:
        """Reference id -> its embedding, as enrolled."""
        with self.index.errors_during("read an identity's references"):
            raw = self.index.client.hgetall(self._refs_key(check_label(label)))
        return {k.decode(): np.frombuffer(v, dtype="<f4").copy() for k, v in raw.items()}

    def label_of(self, ref: str) -> str | None:
        with self.index.errors_during("look up a reference"):
            raw = self.index.client.hget(self.owner, ref)
        return None if raw is None else raw.decode()

    def list(self) -> list[Identity]:
        with self.index.errors_during("list identities"):
            raw = self.index.client.hgetall(self.meta)
        return sorted((_identity(json.loads(v)) for v in raw.values()), key=lambda i: i.label)

    def prototype(self, label: str) -> np.ndarray | None:
        with self.index.errors_during("read a prototype"):
            raw = self.index.client.execute_command("VEMB", self.vset, check_label(label))
        return None if raw is None else np.array([float(x) for x in raw], dtype=np.float32)

    def search(self, vector: np.ndarray, k: int = 5, filter: str | None = None
               ) -> list[IdentityHit]:
        """The ``k`` identities whose prototypes are nearest to ``vector``, best first."""
        if self.count() == 0:
            return []
        blob = np.asarray(vector, dtype="<f4").tobytes()
        command = ["VSIM", self.vset, "FP32", blob, "WITHSCORES", "WITHATTRIBS", "COUNT", k]
        rendered = parse_filter(filter)
        if rendered:
            command += ["FILTER", rendered]
        with self.index.errors_during("search identities"):
            raw = self.index.client.execute_command(*command)
        return [IdentityHit(_identity(hit.attributes), hit.score) for hit in parse_hits(raw)]


def _identity(data: dict[str, Any]) -> Identity:
    return Identity(str(data.get("label", "")), int(data.get("references", 0)),
                    str(data.get("cover", "")))
