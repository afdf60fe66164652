"""How a branch of a conversation is read. Messages form a tree: each names the message
it follows (``parent_id``), and editing a message adds a sibling beside it. A branch is
read upwards from its latest message, one primary-key lookup a step, in SQL that SQLite
and PostgreSQL share."""


def path(*carried: str) -> str:
    """The messages from one (depth 0) up through those it follows, at most N deep, as
    ``path(id, parent_id, depth, *carried)``; the parameters are (message id, thread id,
    N), then the query's own. A query that filters on a column carries it here instead
    of joining ``message`` again: PostgreSQL would drive that join from the filter's
    index (all the thread's finished messages) instead of the few steps of the path."""
    names = "".join(f", {c}" for c in carried)
    of_m = "".join(f", m.{c}" for c in carried)
    return (
        f"WITH RECURSIVE path(id, parent_id, depth{names}) AS ("
        f" SELECT id, parent_id, 0{names} FROM message WHERE id = %s AND thread_id = %s"
        f" UNION ALL SELECT m.id, m.parent_id, path.depth + 1{of_m} FROM message m"
        " JOIN path ON m.id = path.parent_id WHERE path.depth < %s) "
    )


PATH = path()
