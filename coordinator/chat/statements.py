"""The chat package's hand-written statements (see coordinator/db/sql.py): those on the
path of every message sent."""

from coordinator.db import branches
from coordinator.db.views import M_MESSAGE_COLUMNS
from coordinator.jobs.states import LIVE, JobState, sql_list
from farm_protocol.chat import MessageState

_LIVE = sql_list(LIVE)

# a browser session's user (every chat request asks), and a note that it was seen
SESSION_USER = (
    'SELECT s.last_seen, u.id, u.name FROM browser_session s JOIN "user" u ON u.id = s.user_id'
    " WHERE s.token_hash = %s"
)
SESSION_SEEN = "UPDATE browser_session SET last_seen = %s WHERE token_hash = %s"
MEMBERS = (
    'SELECT u.id, u.name FROM thread_member m JOIN "user" u ON u.id = m.user_id'
    " WHERE m.thread_id = %s ORDER BY m.joined_at, u.id"
)
IS_MEMBER = "SELECT 1 FROM thread_member WHERE thread_id = %s AND user_id = %s"
LOCK_THREAD = "SELECT description, leaf_id FROM thread WHERE id = %s"  # + sql.row_lock
LOCK_USER = 'SELECT name FROM "user" WHERE id = %s'  # + sql.row_lock
# (this owner's live jobs, the jobs queued farm-wide, those queued for one model); the
# owner column is filled in
OWNER_AND_QUEUE = (
    "SELECT (SELECT COUNT(*) FROM job WHERE {owner} = %s AND state IN " + _LIVE + "),"
    f" (SELECT COUNT(*) FROM job WHERE state = '{JobState.QUEUED}'),"
    f" (SELECT COUNT(*) FROM job WHERE state = '{JobState.QUEUED}' AND model = %s)"
)
MEMBERS_AND_ME = (
    "SELECT COUNT(*), COUNT(CASE WHEN user_id = %s THEN 1 END) FROM thread_member"
    " WHERE thread_id = %s"
)
ADD_MEMBER = "INSERT INTO thread_member (thread_id, user_id, joined_at) VALUES (%s, %s, %s)"
NEW_THREAD = (
    "INSERT INTO thread (id, title, description, created_by_id, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
THREAD_ACTIVE = "UPDATE thread SET updated_at = %s WHERE id = %s"
THREAD_GREW = "UPDATE thread SET updated_at = %s, leaf_id = %s WHERE id = %s"
THREAD_NAMED = (
    "UPDATE thread SET updated_at = %s, leaf_id = %s, description = %s, title = %s WHERE id = %s"
)
# Every column of a message row, for inserting some (content_seq -1, no error yet).
INSERT_MESSAGES = (
    "INSERT INTO message (id, thread_id, user_id, parent_id, role, author, content,"
    " content_seq, state, model, job_id, error, created_at, updated_at) VALUES "
)
MESSAGE_VALUES = "(%s, %s, %s, %s, %s, %s, %s, -1, %s, %s, %s, NULL, %s, %s)"
NEW_JOB = (
    "INSERT INTO job (id, message_id, user_id, model, state, attempt, chunks, api_key_id,"
    f" request, created_at) VALUES (%s, %s, %s, %s, '{JobState.QUEUED}', 0, 0, %s, %s, %s)"
)
REPLY_REQUEUED = (
    f"UPDATE message SET job_id = %s, state = '{MessageState.QUEUED}', content = '',"
    " content_seq = -1, prompt_tokens = NULL, completion_tokens = NULL, finish_reason = NULL,"
    " tool_calls = NULL, served_by = NULL, generation_s = NULL, error = NULL, updated_at = %s"
    " WHERE id = %s"
)
HOLDERS = "SELECT id, worker_id, attempt FROM job WHERE id IN {ids} AND state IN " + sql_list(
    (JobState.ASSIGNED, JobState.RUNNING)
)

# --- rate-limit buckets -----------------------------------------------------------------

BUCKET_NEW = (
    "INSERT INTO rate_bucket (action, who, tokens, at) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (action, who) DO NOTHING"
)
BUCKET = "SELECT tokens, at FROM rate_bucket WHERE action = %s AND who = %s"
BUCKET_SET = "UPDATE rate_bucket SET tokens = %s, at = %s WHERE action = %s AND who = %s"
BUCKETS_IDLE = "DELETE FROM rate_bucket WHERE at < %s"

# --- branches ---------------------------------------------------------------------------

# A branch's messages, newest first (see coordinator.db.branches)
PATH_UP = (
    branches.PATH + f"SELECT {M_MESSAGE_COLUMNS} FROM path JOIN message m ON m.id = path.id"
    " ORDER BY path.depth"
)
# The newest message under (and including) one: the end of the branch it starts (a
# message is always newer than the one it follows).
NEWEST_BELOW = (
    "WITH RECURSIVE below(id) AS (SELECT id FROM message WHERE id = %s AND thread_id = %s"
    " UNION ALL SELECT m.id FROM message m JOIN below ON m.parent_id = below.id)"
    " SELECT m.id FROM below JOIN message m ON m.id = below.id"
    " ORDER BY m.created_at DESC, m.id DESC LIMIT 1"
)
# The user messages that follow these (each message's versions are its siblings), and
# the thread's first ones (no parent), oldest first.
VERSIONS = (
    "SELECT parent_id, id FROM message WHERE role = 'user'"
    " AND (parent_id IN {ids} OR parent_id IS NULL) AND thread_id = %s ORDER BY created_at, id"
)
SET_LEAF = "UPDATE thread SET leaf_id = %s WHERE id = %s"
