"""People and conversations: browser identities, threads and their members, and the
requests that queue replies."""
