"""The job package's hand-written statements, each named once (placeholders: ``%s``,
run by :func:`coordinator.db.sql.execute`). They are on the job path: peewee's query
builder compiled each one in Python, every time, and that was most of the database
thread's work (coordinator/db/sql.py)."""

from coordinator.db import branches
from coordinator.db.views import M_MESSAGE_COLUMNS, MESSAGE_COLUMNS
from coordinator.jobs.states import ACTIVE, JobState, sql_list
from farm_protocol.chat import MessageState

_ACTIVE = sql_list(ACTIVE)
_QUEUED = f"'{JobState.QUEUED}'"
_ASSIGNED = f"'{JobState.ASSIGNED}'"
_RUNNING = f"'{JobState.RUNNING}'"
_REPLY_QUEUED = f"'{MessageState.QUEUED}'"
_REPLY_GENERATING = f"'{MessageState.GENERATING}'"
_REPLY_DONE = f"'{MessageState.DONE}'"
# After ``id = %s``: the job is still this attempt's, held by this worker.
HELD_BY = f" AND attempt = %s AND worker_id = %s AND state IN {_ACTIVE}"
HELD = "id = %s" + HELD_BY

# --- the queue and claims -------------------------------------------------------------

ACTIVE_BY_OWNER = (
    f"SELECT COALESCE(api_key_id, user_id), COUNT(*) FROM job WHERE state IN {_ACTIVE}"
    " GROUP BY COALESCE(api_key_id, user_id)"
)
ACTIVE_BY_WORKER = (
    f"SELECT worker_id, COUNT(*) FROM job WHERE state IN {_ACTIVE} GROUP BY worker_id"
)
# The most each owner may have running: an API key's concurrency, one for a chat user
# (their messages sent while a reply generates are answered in turn).
QUEUED_OLDEST = (
    "SELECT id, model, created_at, COALESCE(api_key_id, user_id), avoid_worker_id,"
    " CASE WHEN api_key_id IS NULL THEN 1"
    " ELSE (SELECT max_concurrent FROM api_key WHERE api_key.id = job.api_key_id) END FROM job"
    f" WHERE state = {_QUEUED} ORDER BY created_at, id LIMIT %s"
)
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
LOCK_WORKERS = "SELECT id FROM worker WHERE id IN {ids} ORDER BY id FOR UPDATE"
# The owners' running jobs, counted again at the claim: a coordinator's round counts
# them without another's claims not yet committed. On PostgreSQL each owner is locked
# first (in order), so two rounds claiming for one owner take turns.
LOCK_OWNERS = (
    "SELECT pg_advisory_xact_lock(hashtext('farm-owner:' || k))"
    " FROM unnest(%s::text[]) AS o(k) ORDER BY k"
)
HELD_BY_OWNERS = (
    f"SELECT COALESCE(api_key_id, user_id), COUNT(*) FROM job WHERE state IN {_ACTIVE}"
    " AND (api_key_id IN {ids} OR (api_key_id IS NULL AND user_id IN {ids}))"
    " GROUP BY COALESCE(api_key_id, user_id)"
)
HELD_BY_WORKERS = (
    "SELECT worker_id, COUNT(*) FROM job WHERE worker_id IN {ids}"
    f" AND state IN {_ACTIVE} GROUP BY worker_id"
)
CLAIM = (
    f"UPDATE job SET state = {_ASSIGNED}, worker_id = %s, attempt = attempt + 1, "
    "assigned_at = %s, accepted_at = NULL, first_token_at = NULL, last_token_at = NULL, "
    f"chunks = 0 WHERE id = %s AND state = {_QUEUED}"
)
CLAIMED = (
    "SELECT j.id, j.attempt, j.model, j.api_key_id, m.thread_id, m.created_at, j.request,"
    " m.id"
    " FROM job j JOIN message m ON m.id = j.message_id WHERE j.id IN {ids}"
)
# The thread's system prompt (its first message, when it is one: a chat's system prompt
# is made with the chat, and found at once by the thread's index however long the thread
# is), then the last N completed turns of the reply's branch (see coordinator.db.branches)
# with their depth (1 for the question).
CONTEXT = (
    branches.path("role", "content", "state") + "SELECT kind, role, content, depth FROM ("
    " SELECT 0 AS kind, role, content, 0 AS depth FROM message"
    " WHERE thread_id = %s AND created_at < %s ORDER BY created_at LIMIT 1) AS first_message"
    " WHERE role = 'system' "
    "UNION ALL "
    "SELECT kind, role, content, depth FROM ("
    " SELECT 1 AS kind, role, content, depth FROM path"
    " WHERE depth > 0 AND role IN ('user', 'assistant')"
    f" AND state = {_REPLY_DONE} ORDER BY depth LIMIT %s) AS history"
)
# The replies of these jobs (found through the job: message.job_id has no index).
REPLIES_OF_JOBS = (
    f"SELECT {M_MESSAGE_COLUMNS} FROM job j JOIN message m ON m.id = j.message_id"
    " WHERE j.id IN {ids} AND m.job_id = j.id"
)
QUEUED_REPLY = f" AND m.state = {_REPLY_QUEUED}"
MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM message WHERE id IN {{ids}}"

# --- the event path -------------------------------------------------------------------

# A job the coordinator stopped (the user, a deadline) still takes the text its worker
# generated before the stop: the worker sends it in a last checkpoint.
_STOPPED = f"('{JobState.CANCELLED}', '{JobState.TIMED_OUT}')"
ACTIVE_JOB = (
    "SELECT j.id, j.attempt, j.worker_id, m.id, m.thread_id, m.content, m.content_seq,"
    f" j.created_at FROM job j JOIN message m ON m.id = j.message_id"
    f" WHERE j.id = %s AND (j.state IN {_ACTIVE}"
    f" OR (j.state IN {_STOPPED} AND j.worker_id IS NOT NULL))"
)
STOPPED_HELD = (
    f"SELECT 1 FROM job WHERE id = %s AND attempt = %s AND worker_id = %s AND state IN {_STOPPED}"
)
RUNNING_JOBS = (
    "SELECT j.id, j.attempt, j.worker_id, m.id, m.thread_id, m.content, m.content_seq,"
    f" j.created_at FROM job j JOIN message m ON m.id = j.message_id WHERE j.state = {_RUNNING}"
)
ACCEPT = f"UPDATE job SET state = {_RUNNING}, accepted_at = %s WHERE {HELD} AND state = {_ASSIGNED}"
HELD_AMONG = "SELECT id, attempt, state FROM job WHERE id IN {ids} AND worker_id = %s" + (
    f" AND state IN {_ACTIVE}"
)
# ``chunks`` only grows: checkpoints handled by several coordinators land in any order.
TEXT_LANDED = (
    f"UPDATE job SET state = {_RUNNING},"
    " chunks = CASE WHEN chunks < %s THEN %s ELSE chunks END, last_token_at = %s,"
    " first_token_at = COALESCE(first_token_at, %s),"
    f" accepted_at = COALESCE(accepted_at, %s) WHERE {HELD}"
)
REPLY_STARTED = (
    f"UPDATE message SET state = {_REPLY_GENERATING}, updated_at = %s"
    f" WHERE id = %s AND state = {_REPLY_QUEUED}"
)
# Appends only where the stored text ends (the chunk before the append's first).
TEXT_CONTINUES = (
    "UPDATE message SET content = content || %s, content_seq = %s, updated_at = %s"
    " WHERE id = %s AND content_seq = %s"
)
STORED_UP_TO = "SELECT content_seq FROM message WHERE id = %s"
STORED_TEXT = "SELECT content_seq, content FROM message WHERE id = %s"
# With what the model reported: which worker served it (its name then), and how long it
# generated (from its first token, or its acceptance, to now).
REPLY_USAGE = (
    "UPDATE message SET prompt_tokens = %s, completion_tokens = %s, finish_reason = %s,"
    " tool_calls = %s,"
    " served_by = (SELECT w.name FROM job j JOIN worker w ON w.id = j.worker_id WHERE j.id = %s),"
    " generation_s = %s - (SELECT COALESCE(first_token_at, accepted_at, assigned_at)"
    " FROM job WHERE id = %s)"
    " WHERE id = %s"
)
# Running jobs quiet since a moment: the last of their progress may have been lost.
QUIET_JOBS = (
    "SELECT j.id, m.thread_id, j.attempt, j.worker_id, m.content_seq FROM job j"
    " JOIN message m ON m.id = j.message_id"
    f" WHERE j.state = {_RUNNING} AND COALESCE(j.last_token_at, j.accepted_at) < %s"
)

# --- endings --------------------------------------------------------------------------

END = "UPDATE job SET state = %s, finished_at = %s, error = %s WHERE id = %s"  # + a Where's
ONLY_ASSIGNED = f" AND state = {_ASSIGNED}"
JOB_FOR_ENDING = "SELECT state, attempt, worker_id, message_id, chunks FROM job WHERE id = %s"
ENDED_JOB = "SELECT message_id, worker_id FROM job WHERE id = %s"
REPLY_ENDED = "UPDATE message SET state = %s, error = %s, updated_at = %s WHERE id = %s"
REQUEUE = (
    f"UPDATE job SET state = {_QUEUED}, worker_id = NULL, avoid_worker_id = %s, error = %s,"
    " chunks = 0 WHERE id = %s"
)  # + a Where's condition
REPLY_REQUEUED = (
    f"UPDATE message SET state = {_REPLY_QUEUED}, content = '', content_seq = -1, updated_at = %s"
    " WHERE id = %s"
)
NO_TEXT_YET = " AND chunks = 0"

# --- the workers' health --------------------------------------------------------------

CREDIT = (
    "UPDATE worker SET failures = 0, jobs_succeeded = jobs_succeeded + 1,"
    " chars_generated = chars_generated + %s WHERE id = %s"
)
FIRST_FAILURE_HERE = (
    "INSERT INTO reply_failure (message_id, worker_id, created_at) VALUES (%s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
COUNT_FAILED = "UPDATE worker SET jobs_failed = jobs_failed + 1 WHERE id = %s"
FAILED_IN_A_ROW = "UPDATE worker SET failures = failures + 1 WHERE id = %s AND state = 'online'"
QUARANTINE = (
    "UPDATE worker SET failures = 0, quarantined_until = %s WHERE id = %s AND failures >= %s"
)

# --- deadlines ------------------------------------------------------------------------

LOST_WORKERS_JOBS = (
    "SELECT j.id, j.attempt, j.worker_id FROM job j JOIN worker w ON w.id = j.worker_id"
    f" WHERE j.state IN {_ACTIVE} AND (w.last_seen IS NULL OR w.last_seen < %s"
    " OR (w.state = 'offline' AND j.chunks = 0) OR w.revoked_at IS NOT NULL)"
)
UNACCEPTED = (
    f"SELECT id, attempt, worker_id FROM job WHERE state = {_ASSIGNED} AND assigned_at < %s"
)
NO_FIRST_TOKEN = (
    "SELECT id, attempt, worker_id FROM job"
    f" WHERE state = {_RUNNING} AND first_token_at IS NULL AND accepted_at < %s"
)
STALLED = f"SELECT id, attempt, worker_id FROM job WHERE state = {_RUNNING} AND last_token_at < %s"
TOO_LONG = f"SELECT id, attempt, worker_id FROM job WHERE state IN {_ACTIVE} AND assigned_at < %s"
# Queued since before the cutoff, and waiting for the farm all that time, not for its own
# owner: a job behind its owner's job that a worker holds, or held until after the cutoff
# (a chat user's messages sent while a reply generates; an API key's backlog), is not late.
QUEUED_TOO_LONG = (
    f"SELECT id FROM job j WHERE state = {_QUEUED} AND created_at < %s AND NOT EXISTS ("
    " SELECT 1 FROM job o WHERE o.id <> j.id"
    " AND (o.api_key_id = j.api_key_id"
    "  OR (j.api_key_id IS NULL AND o.api_key_id IS NULL AND o.user_id = j.user_id))"
    f" AND (o.state IN {_ACTIVE} OR o.finished_at >= %s))"
)

# How long each model's jobs held a slot, over those that succeeded lately (their
# created_at bound keeps the read within the (state, created_at) index).
SERVICE_TIMES = (
    "SELECT model, AVG(finished_at - assigned_at) FROM job"
    f" WHERE state = '{JobState.SUCCEEDED}' AND created_at >= %s AND finished_at >= %s"
    " GROUP BY model"
)
# The models of the workers still there: heartbeating, not revoked, not leaving.
PRESENT_WORKERS_MODELS = (
    "SELECT models FROM worker WHERE revoked_at IS NULL AND state <> 'draining' AND last_seen >= %s"
)
QUEUED_MODELS = f"SELECT DISTINCT model FROM job WHERE state = {_QUEUED}"
QUEUED_OF_MODEL = f"SELECT id FROM job WHERE state = {_QUEUED} AND model = %s"
