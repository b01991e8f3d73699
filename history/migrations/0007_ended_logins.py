"""Add ended_login: the ids of session logins ended by a logout, until they would have run out anyway,
so a session cookie copied before the logout is refused by every process."""
from peewee import CharField
from peewee import DateTimeField
from peewee import Model


def up(migrator, db):
    class EndedLogin(Model):
        login_id = CharField(primary_key=True, max_length=64)
        until = DateTimeField(index=True)

        class Meta:
            database = db
            table_name = "ended_login"

    db.create_tables([EndedLogin], safe=True)
