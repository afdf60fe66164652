"""A job's life: its states, the queue and claims, its stream's writes, its endings and
deadlines; and the async parts that drive them (dispatch, streams, janitor,
cancellation)."""
