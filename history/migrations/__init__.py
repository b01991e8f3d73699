"""Schema steps for playhouse.migrations, applied in numeric order by history.db.migrate().

Each ``NNNN_name.py`` defines ``up(migrator, db)``. The list is append-only: add the next number, never
edit a step that has shipped. A step declares what it creates (0001 freezes the first ``job`` table
column by column) rather than reading today's models, so a field added to ``Job`` later is added by a
step of its own and a fresh database still builds step by step. This folder is a package inside
``history`` so that the wheel carries it.
"""
from pathlib import Path

from peewee import SqliteDatabase

DIRECTORY = Path(__file__).resolve().parent


def is_sqlite(database) -> bool:
    """Whether ``database``, the one a step was handed (a peewee database or the app's proxy), is SQLite."""
    return isinstance(database.obj if hasattr(database, "obj") else database, SqliteDatabase)
