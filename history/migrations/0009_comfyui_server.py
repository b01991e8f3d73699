"""Add job.comfyui_server: the ComfyUI server (its STUDIO_COMFYUI_URL address) that ran the job, so its files
are found in that server's output folder; None for the built-in executor's jobs and older records."""
from peewee import TextField


def up(migrator, db):
    columns = {column.name for column in db.get_columns("job")}
    if "comfyui_server" not in columns:
        migrator.migrate(migrator.add_column("job", "comfyui_server", TextField(null=True)))
