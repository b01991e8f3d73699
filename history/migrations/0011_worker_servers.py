"""Add worker.servers: each ComfyUI server as the worker last saw it (url, up, queue_remaining), so a web
process, which follows no server itself, shows each one's state on the queue page."""
from peewee import JSONField


def up(migrator, db):
    columns = {column.name for column in db.get_columns("worker")}
    if "servers" not in columns:
        migrator.migrate(migrator.add_column("worker", "servers", JSONField(null=True)))
