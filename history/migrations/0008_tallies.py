"""Keep counts and bytes by day, status and workflow (job_tally) in step with the job table, filled from the rows stored."""
from history import tallies


def up(migrator, db):
    tallies.install(db)
