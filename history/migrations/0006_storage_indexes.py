"""Index what the storage figures sum (status, workflow, bytes; status, day, bytes), so they read indexes, not the table."""


def up(migrator, db):
    indexes = {index.name for index in db.get_indexes("job")}
    steps = [
        migrator.add_index("job", columns, False)
        for columns in (("status", "workflow_id", "bytes"), ("status", "queued_at", "bytes"))
        if "job_" + "_".join(columns) not in indexes
    ]
    migrator.migrate(*steps)
