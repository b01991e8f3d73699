"""Index workflow names, prompt ids, prompts and scene prompts for the list's search."""
from history import search


def up(migrator, db):
    search.install(db)
