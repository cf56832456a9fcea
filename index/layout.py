"""Where an index lives in Redis: key names, shard keys and which shard an id belongs to.

Keys (``{...}`` is a Redis Cluster hash tag: keys with the same tag share a slot):

    twinstream:indexes                          set: every index name (for ``index list``)
    twinstream:{<name>}:alias                   the live model version of index <name>
    twinstream:{<name>}:versions                set: the model versions that have metadata
    twinstream:{<name>}:<version>:meta          hash: dim, metric, quant, shards, created_at, card
    twinstream:{<name>}:thumbs                  hash: image id -> JPEG (per name: thumbnails
                                                depend on the image, not on the model)
    one shard:  twinstream:{<name>}:<version>:vset
    S shards:   twinstream:{<name>/<version>/<i>}:vset   for i in 0..S-1

Identities (recognition; ``index/identities.py``), per version, all in the slot of ``{<name>}``:

    twinstream:{<name>}:<version>:identities        vector set: label -> prototype (NOQUANT)
    twinstream:{<name>}:<version>:identities-meta   hash: label -> JSON (references, cover id)
    twinstream:{<name>}:<version>:identity-of       hash: reference id -> label
    twinstream:{<name>}:<version>:identity:<digest> hash: reference id -> float32 vector, one
                                                    per identity (digest: of its label)

The alias, the version registry and the metadata share the slot of ``{<name>}`` so that promote and
drop can check and change them in one atomic script, also on a cluster. A one-shard index keeps
its vector set in that slot too; shards of a sharded index each get a tag of their own so a Redis
Cluster spreads them over its masters.
"""

from __future__ import annotations

import hashlib
import re
import zlib

from twinstream.errors import ConfigError

PREFIX = "twinstream"
INDEXES_KEY = f"{PREFIX}:indexes"
MAX_SHARDS = 1024
# Hash tags end at the first '}', and names appear in messages and URLs: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"index name {name!r} is not usable: 1-128 characters of letters, digits and "
            "'_.:-', starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _NAME.match(version):
        raise ConfigError(
            f"model version {version!r} is not usable as an index version: 1-128 characters "
            "of letters, digits and '_.:-' (export the model with 'twinstream export')")
    return version


def check_shards(shards: int) -> int:
    if not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ConfigError(f"shards must be between 1 and {MAX_SHARDS}, got {shards!r}")
    return shards


def _key(name: str, suffix: str) -> str:
    return f"{PREFIX}:{{{name}}}:{suffix}"


def alias_key(name: str) -> str:
    return _key(name, "alias")


def versions_key(name: str) -> str:
    return _key(name, "versions")


def meta_key(name: str, version: str) -> str:
    return _key(name, f"{version}:meta")


def thumbs_key(name: str) -> str:
    return _key(name, "thumbs")


def identities_key(name: str, version: str) -> str:
    return _key(name, f"{version}:identities")


def identities_meta_key(name: str, version: str) -> str:
    return _key(name, f"{version}:identities-meta")


def identity_of_key(name: str, version: str) -> str:
    return _key(name, f"{version}:identity-of")


def identity_refs_key(name: str, version: str, label: str) -> str:
    """The references of one identity; the label is hashed (labels are free text)."""
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:24]
    return _key(name, f"{version}:identity:{digest}")


def identity_refs_pattern(name: str, version: str) -> str:
    """A SCAN pattern for every identity's references of a version (for drop)."""
    return f"{PREFIX}:{{{name}}}:{version}:identity:*"


def shard_keys(name: str, version: str, shards: int) -> list[str]:
    """The vector-set keys of one index version, shard 0 first."""
    if shards == 1:
        return [_key(name, f"{version}:vset")]
    return [f"{PREFIX}:{{{name}/{version}/{i}}}:vset" for i in range(shards)]


def shard_of(image_id: str, shards: int) -> int:
    """The shard an id lives in: a stable hash (CRC-32), the same in every process and language."""
    if shards == 1:
        return 0
    return zlib.crc32(image_id.encode("utf-8")) % shards
