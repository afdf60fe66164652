"""How a branch of a conversation is read. Messages form a tree: each names the message
it follows (``parent_id``), and editing a message adds a sibling beside it. A branch is
read upwards from its latest message, one primary-key lookup a step, in SQL that SQLite
and PostgreSQL share."""

# The messages from one (depth 0) up through those it follows, at most N deep; the
# parameters are (message id, thread id, N), then the query's own.
PATH = (
    "WITH RECURSIVE path(id, parent_id, depth) AS ("
    " SELECT id, parent_id, 0 FROM message WHERE id = %s AND thread_id = %s"
    " UNION ALL SELECT m.id, m.parent_id, path.depth + 1 FROM message m"
    " JOIN path ON m.id = path.parent_id WHERE path.depth < %s) "
)
