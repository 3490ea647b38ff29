"""Alembic environment: runs on the connection handed in by corpus.catalog.migrate, or on
`sqlalchemy.url` when invoked from the alembic command line."""

import sqlalchemy as sa
from alembic import context

from corpus.catalog import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
