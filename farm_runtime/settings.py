"""One spelling of every setting across the services, and the old spellings still read.

Every service reads ``FARM_``-prefixed settings with ``__`` between a group and its field:
the broker is ``FARM_BROKER__URL``, ``FARM_BROKER__CA_FILE`` and ``FARM_BROKER__KEEPALIVE``
for the coordinator, the webapp and a worker alike. A setting that was once spelled
otherwise is still read under its old name, with a warning that says which name to use.
"""

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def moved(values: Mapping[str, Any], renames: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """``values`` (a settings model's fields by name) with each old setting set moved to
    its new place: ``renames`` maps an old field name to (group, field) of the new one. A
    new spelling given as well wins; either way the old one is named in a warning."""
    result = dict(values)
    for old, (group, field) in renames.items():
        value = result.pop(old, None)
        if value is None:
            continue
        new_env = f"FARM_{group.upper()}__{field.upper()}"
        log.warning("FARM_%s is deprecated: use %s instead", old.upper(), new_env)
        nested = dict(result.get(group) or {})
        nested.setdefault(field, value)
        result[group] = nested
    return result
