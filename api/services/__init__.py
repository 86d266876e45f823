"""The work behind the routes. Each function takes what it needs (sessionmakers, a settings
section, the store), opens its own transaction with `sessionmaker.begin()` (committed when
the block ends, rolled back when it raises) and returns rows or plain data, which the route
serialises. Rows stay readable after the block: the session factory does not expire them
on commit (shared/db.py)."""
