"""Add job.source (where a prompt another client queued came from), the job_graph table (each job's
API-format graph and, where ComfyUI's page embedded one, its UI workflow: prompt.json and workflow.json),
and job_deleted (the ids of deleted jobs, so ComfyUI's history never brings one back)."""
from peewee import CharField
from peewee import DateTimeField
from peewee import JSONField
from peewee import Model
from peewee import TextField


def up(migrator, db):
    class JobGraph(Model):
        prompt_id = CharField(primary_key=True, max_length=64)
        graph = JSONField(null=True)
        ui_workflow = JSONField(null=True)

        class Meta:
            database = db
            table_name = "job_graph"

    class JobDeleted(Model):
        prompt_id = CharField(primary_key=True, max_length=64)
        deleted_at = DateTimeField()

        class Meta:
            database = db
            table_name = "job_deleted"

    columns = {column.name for column in db.get_columns("job")}
    if "source" not in columns:
        migrator.migrate(migrator.add_column("job", "source", TextField(null=True)))
    # Kept beside the job, not in it: graphs run to tens of kilobytes and the list never reads them.
    db.create_tables([JobGraph, JobDeleted], safe=True)
