"""Create the job table and the indexes the history list pages by (the first schema, frozen)."""
from peewee import CharField
from peewee import DateTimeField
from peewee import FloatField
from peewee import JSONField
from peewee import Model
from peewee import TextField


def up(migrator, db):
    class Job(Model):
        prompt_id = CharField(primary_key=True, max_length=64)
        workflow_id = CharField(max_length=128)
        workflow_name = TextField(default="")
        status = CharField(max_length=16, default="queued")
        queued_at = DateTimeField()
        started_at = DateTimeField(null=True)
        finished_at = DateTimeField(null=True)
        duration = FloatField(null=True)
        params = JSONField(default=dict)
        seeds = JSONField(default=dict)
        input_image = TextField(null=True)
        output = JSONField(null=True)
        outputs = JSONField(default=list)
        output_dir = CharField(max_length=128, null=True, index=True)
        error = TextField(null=True)
        retry_of = CharField(max_length=64, null=True, index=True)

        class Meta:
            database = db
            table_name = "job"
            indexes = (
                (("queued_at", "prompt_id"), False),
                (("status", "queued_at", "prompt_id"), False),
                (("workflow_id", "queued_at", "prompt_id"), False),
            )

    db.create_tables([Job])
