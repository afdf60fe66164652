"""The workers package's hand-written statements (see coordinator/db/sql.py)."""

# Workers that may get a job now: online, heartbeating, not revoked, not quarantined.
AVAILABLE = (
    "SELECT id, models, loaded_models, capacity FROM worker WHERE state = 'online'"
    " AND revoked_at IS NULL AND last_seen >= %s"
    " AND (quarantined_until IS NULL OR quarantined_until <= %s)"
)
LIVE_KEY_HASH = "SELECT key_hash FROM worker WHERE id = %s AND revoked_at IS NULL"
# a sign of life, from the worker's current session only
HEARTBEAT = (
    "UPDATE worker SET last_seen = %s WHERE id = %s AND revoked_at IS NULL AND session_id = %s"
)
# what the online workers serve (``presence.is_online`` in SQL), for the model picker
FLEET = (
    "SELECT models, loaded_models, simulated FROM worker WHERE state = 'online'"
    " AND revoked_at IS NULL AND last_seen >= %s"
)
UPGRADE_KEY_HASH = (
    "UPDATE worker SET key_hash = %s WHERE id = %s AND revoked_at IS NULL AND key_hash LIKE %s"
)
