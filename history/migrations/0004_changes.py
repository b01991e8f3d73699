"""Signal every write to the job table to each process (PostgreSQL NOTIFY; SQLite has data_version)."""
from history import changes


def up(migrator, db):
    changes.install(db)
