"""Add job.owner (the worker process that holds a queued or running job), the worker table (each process
that runs jobs, with its heartbeat) and job_waiting (queued jobs no worker holds yet, claimed in order)."""
from peewee import CharField
from peewee import DateTimeField
from peewee import IntegerField
from peewee import Model
from peewee import TextField


def up(migrator, db):
    class Worker(Model):
        worker_id = CharField(primary_key=True, max_length=128)
        role = CharField(max_length=16)
        host = TextField()
        pid = IntegerField()
        started = DateTimeField()
        heartbeat_at = DateTimeField(index=True)

        class Meta:
            database = db
            table_name = "worker"

    class WaitingJob(Model):
        prompt_id = CharField(primary_key=True, max_length=64)
        queued_at = DateTimeField(index=True)

        class Meta:
            database = db
            table_name = "job_waiting"

    columns = {column.name for column in db.get_columns("job")}
    if "owner" not in columns:
        # Jobs active before this step keep no owner: the first process that starts after it settles them,
        # as every start-up settled every active job before.
        migrator.migrate(
            migrator.add_column("job", "owner", CharField(max_length=128, null=True)),
            migrator.add_index("job", ("owner",), False),
        )
    db.create_tables([Worker, WaitingJob], safe=True)
