"""The PostgreSQL store, for many workers on many hosts writing one database (docs/scaling-out.md).

`DATABASE_URL=postgresql://...` selects it. Importing this package does not import the driver
(psycopg): `db.postgres.store` does, so a worker on the SQLite default never loads it.
"""
