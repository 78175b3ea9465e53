"""Use cases: one function per command. Each opens a unit of work, authorizes against the
store, sets the store's tenant (row-level security), loads, applies the domain rule,
saves, emits events (outbox, same commit), and, after the commit, invalidates the public
cache."""
