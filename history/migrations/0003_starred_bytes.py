"""Add job.starred and job.bytes (the size of a job's files), and the index the starred filter pages by."""
from peewee import SQL
from peewee import BigIntegerField
from peewee import BooleanField


def up(migrator, db):
    # A store created before the first schema was frozen (from the model of its day) may have these already.
    columns = {column.name for column in db.get_columns("job")}
    steps = []
    if "starred" not in columns:
        # One ALTER TABLE with a default in the column itself: add_column's add_not_null would rebuild the
        # table on SQLite (dropping the search triggers), and bulk writers that name no starred get false.
        steps.append(migrator.alter_add_column("job", "starred", BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])))
    if "bytes" not in columns:
        steps.append(migrator.add_column("job", "bytes", BigIntegerField(null=True)))
    indexes = {index.name for index in db.get_indexes("job")}
    if "job_starred_queued_at_prompt_id" not in indexes:
        steps.append(migrator.add_index("job", ("starred", "queued_at", "prompt_id"), False))
    migrator.migrate(*steps)
