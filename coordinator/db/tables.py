"""The peewee schema. Queries live in the ``*_store`` modules; this file only declares.

Changing it means bumping ``SCHEMA_VERSION`` and adding the upgrade to
:data:`coordinator.db.database.MIGRATIONS`; ``tests/store/test_migrations.py`` upgrades a database
created by every earlier version and checks it ends up identical to a fresh one."""

import time
import uuid

import peewee as pw

database_proxy = pw.DatabaseProxy()

SCHEMA_VERSION = 11


def now() -> float:
    return time.time()


def new_id() -> str:
    """A new row id (users, threads, messages, jobs)."""
    return uuid.uuid4().hex


class _Base(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class SchemaInfo(_Base):
    version = pw.IntegerField()


class User(_Base):
    id = pw.CharField(primary_key=True, max_length=32)
    name = pw.CharField(max_length=64)
    created_at = pw.DoubleField(default=now)


class BrowserSession(_Base):
    # sha256 of the cookie value: a database leak does not leak live sessions.
    token_hash = pw.CharField(primary_key=True, max_length=64)
    user = pw.ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    created_at = pw.DoubleField(default=now)
    last_seen = pw.DoubleField(default=now)


class Thread(_Base):
    id = pw.CharField(primary_key=True, max_length=32)
    title = pw.CharField(max_length=200, default="New chat")
    description = pw.TextField(default="")
    created_by = pw.ForeignKeyField(User, backref="threads_created", on_delete="CASCADE")
    created_at = pw.DoubleField(default=now)
    updated_at = pw.DoubleField(default=now, index=True)
    # The latest message of the branch the thread shows (messages form a tree: editing a
    # message starts a branch beside it); None while it has none.
    leaf_id = pw.CharField(max_length=32, null=True)


class ThreadMember(_Base):
    thread = pw.ForeignKeyField(Thread, backref="members", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    thread_id: str  # peewee's column accessor, declared for the type checker
    joined_at = pw.DoubleField(default=now)

    class Meta:
        indexes = ((("thread", "user"), True),)


class Worker(_Base):
    id = pw.CharField(primary_key=True, max_length=64)
    name = pw.CharField(max_length=200)
    key_hash = pw.CharField(max_length=300)
    # With FARM_KEY_SECRET the key is derived from this (see coordinator.keys.hashing); else "".
    key_nonce = pw.CharField(max_length=64, default="")
    created_at = pw.DoubleField(default=now)
    revoked_at = pw.DoubleField(null=True)
    # Presence, from the worker's retained status and heartbeats.
    session_id = pw.CharField(max_length=64, default="")
    state = pw.CharField(max_length=16, default="offline")
    last_seen = pw.DoubleField(null=True)
    models = pw.TextField(default="[]")  # JSON list of normalised names
    loaded_models = pw.TextField(default="[]")
    capacity = pw.IntegerField(default=1)
    simulated = pw.BooleanField(default=False)
    version = pw.CharField(max_length=64, default="")
    # Health: consecutive failed jobs; at the threshold the worker is quarantined (gets no
    # new jobs) until ``quarantined_until``. Totals are for the admin API and the farm page.
    failures = pw.IntegerField(default=0)
    quarantined_until = pw.DoubleField(null=True)
    jobs_succeeded = pw.IntegerField(default=0)
    jobs_failed = pw.IntegerField(default=0)
    chars_generated = pw.BigIntegerField(default=0)


class ApiKey(_Base):
    """A key for programmatic clients (the OpenAI-compatible API). Its conversations
    belong to ``user_id``; at most ``max_concurrent`` of its jobs are active at once."""

    id = pw.CharField(primary_key=True, max_length=32)
    name = pw.CharField(max_length=200)
    key_hash = pw.CharField(max_length=300)
    user_id = pw.CharField(max_length=32)
    max_concurrent = pw.IntegerField(default=4)
    created_at = pw.DoubleField(default=now)
    revoked_at = pw.DoubleField(null=True)
    last_used_at = pw.DoubleField(null=True)


class Message(_Base):
    id = pw.CharField(primary_key=True, max_length=32)
    thread = pw.ForeignKeyField(Thread, backref="messages", on_delete="CASCADE")
    thread_id: str  # peewee's column accessor, declared for the type checker
    user = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    user_id: str | None  # peewee's column accessor, declared for the type checker
    role = pw.CharField(max_length=16)
    # The message this one follows in its branch (None for a thread's first): a message
    # edited gets a sibling, a version with the same parent.
    parent_id = pw.CharField(max_length=32, null=True, index=True)
    author = pw.CharField(max_length=200)
    content = pw.TextField(default="")
    content_seq = pw.IntegerField(default=-1)
    state = pw.CharField(max_length=16, index=True)
    model = pw.CharField(max_length=200, null=True)
    job_id = pw.CharField(max_length=32, null=True)
    error = pw.TextField(null=True)
    created_at = pw.DoubleField(default=now)
    updated_at = pw.DoubleField(default=now)
    # A reply's tokens as its model counted them, why it ended ("stop", "length",
    # "tool_calls"), and the tool calls it made (JSON), once it succeeded.
    prompt_tokens = pw.IntegerField(null=True)
    completion_tokens = pw.IntegerField(null=True)
    finish_reason = pw.CharField(max_length=32, null=True)
    tool_calls = pw.TextField(null=True)
    # and which worker served it (its name then), and how long it generated
    served_by = pw.CharField(max_length=200, null=True)
    generation_s = pw.DoubleField(null=True)

    class Meta:
        indexes = ((("thread", "created_at"), False),)


class Job(_Base):
    """One LLM request. ``attempt`` is the fencing token: every write from a worker names
    the attempt it belongs to, and only the current attempt's writes land."""

    id = pw.CharField(primary_key=True, max_length=32)
    message = pw.ForeignKeyField(Message, on_delete="CASCADE")
    message_id: str  # peewee's column accessor, declared for the type checker
    # Indexed with the state (Meta): "this user's / key's active jobs" is asked on every
    # request, and must not read through all their past jobs.
    user = pw.ForeignKeyField(User, null=True, on_delete="SET NULL", index=False)
    user_id: str | None  # peewee's column accessor, declared for the type checker
    model = pw.CharField(max_length=200)
    state = pw.CharField(max_length=16)
    attempt = pw.IntegerField(default=0)
    worker_id = pw.CharField(max_length=64, null=True, index=True)
    chunks = pw.IntegerField(default=0)  # chunks applied for the current attempt
    # The programmatic client that asked (None for the chat UI).
    api_key_id = pw.CharField(max_length=32, null=True)
    # The worker the previous attempt failed on: a retry goes elsewhere when it can.
    avoid_worker_id = pw.CharField(max_length=64, null=True)
    error = pw.TextField(null=True)
    # An API request's generation settings and exact context (JSON: JobRequest)
    request = pw.TextField(null=True)
    created_at = pw.DoubleField(default=now)
    assigned_at = pw.DoubleField(null=True)
    accepted_at = pw.DoubleField(null=True)
    first_token_at = pw.DoubleField(null=True)
    last_token_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True)

    class Meta:
        indexes = (
            (("state", "created_at"), False),
            (("user", "state"), False),
            (("api_key_id", "state"), False),
        )


class ReplyFailure(_Base):
    """A reply that failed on a worker, which counted once against that worker's health:
    however many of its attempts fail there, and however often its user retries it."""

    message = pw.ForeignKeyField(Message, on_delete="CASCADE", index=False)
    worker_id = pw.CharField(max_length=64)
    created_at = pw.DoubleField(default=now)

    class Meta:
        primary_key = pw.CompositeKey("message", "worker_id")


class RateBucket(_Base):
    """A token bucket of the rate limits (coordinator/chat/rate_limits.py), in the
    database so that every coordinator spends from the same one."""

    action = pw.CharField(max_length=16)
    who = pw.CharField(max_length=128)
    tokens = pw.DoubleField()
    at = pw.DoubleField(index=True)  # when ``tokens`` was counted

    class Meta:
        primary_key = pw.CompositeKey("action", "who")


class Enrolment(_Base):
    """A one-time token a new worker's owner exchanges for its key (``fleet-worker join``):
    only its hash is stored, it expires, and it is spent by its first use."""

    token_hash = pw.CharField(primary_key=True, max_length=64)
    worker = pw.ForeignKeyField(Worker, on_delete="CASCADE")
    worker_id: str  # peewee's column accessor, declared for the type checker
    created_at = pw.DoubleField(default=now)
    expires_at = pw.DoubleField()
    used_at = pw.DoubleField(null=True)


ALL_TABLES: list[type[pw.Model]] = [
    SchemaInfo,
    User,
    BrowserSession,
    Thread,
    ThreadMember,
    Worker,
    ApiKey,
    Message,
    Job,
    ReplyFailure,
    RateBucket,
    Enrolment,
]
